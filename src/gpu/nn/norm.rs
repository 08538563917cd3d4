//! Group norm (with an optional SiLU) and layer norm (`norm.wgsl`).

use super::{word, GpuError, GpuTensor, Nn};

impl Nn {
    /// GroupNorm over NCHW (B, C, spatial...) with per-channel affine; then SiLU if `silu`.
    pub fn group_norm(
        &self,
        x: &GpuTensor,
        groups: usize,
        gamma: &GpuTensor,
        beta: &GpuTensor,
        eps: f32,
        silu: bool,
    ) -> Result<GpuTensor, GpuError> {
        let (batch, channels) = match x.shape() {
            [b, c, ..] => (*b, *c),
            shape => {
                return Err(GpuError::BadInput(format!(
                    "group norm input must be (B, C, ...), got {shape:?}"
                )))
            }
        };
        if groups == 0 || channels % groups != 0 {
            return Err(GpuError::BadInput(format!(
                "group norm: {channels} channels do not split into {groups} groups"
            )));
        }
        for (what, t) in [("gamma", gamma), ("beta", beta)] {
            if t.len() != channels {
                return Err(GpuError::BadInput(format!(
                    "group norm {what} has {} values, the input {channels} channels",
                    t.len()
                )));
            }
        }
        let spatial: usize = x.shape()[2..].iter().product();
        let cpg = channels / groups;
        let y = self.output(x.shape(), "group norm output")?;
        if spatial == 0 {
            return Ok(y);
        }
        let sets = batch * groups;
        let params = [
            word(cpg * spatial, "group size")?,
            word(sets, "groups")?,
            word(cpg, "channels per group")?,
            word(spatial, "spatial size")?,
            word(channels, "channels")?,
            eps.to_bits(),
            u32::from(silu),
            0,
        ];
        self.dispatch(
            &self.kernels.group_norm,
            &params,
            &[x, gamma, beta],
            &y,
            sets as u64,
        )?;
        Ok(y)
    }

    /// LayerNorm over the last dim, affine.
    pub fn layer_norm(
        &self,
        x: &GpuTensor,
        gamma: &GpuTensor,
        beta: &GpuTensor,
        eps: f32,
    ) -> Result<GpuTensor, GpuError> {
        let Some(&dim) = x.shape().last() else {
            return Err(GpuError::BadInput("layer norm input is a scalar".into()));
        };
        for (what, t) in [("gamma", gamma), ("beta", beta)] {
            if t.len() != dim {
                return Err(GpuError::BadInput(format!(
                    "layer norm {what} has {} values, the input's last dim is {dim}",
                    t.len()
                )));
            }
        }
        let y = self.output(x.shape(), "layer norm output")?;
        if dim == 0 {
            return Ok(y);
        }
        let rows = x.len() / dim;
        let params = [
            word(dim, "layer norm width")?,
            word(rows, "layer norm rows")?,
            1,
            1,
            1,
            eps.to_bits(),
            0,
            0,
        ];
        self.dispatch(
            &self.kernels.layer_norm,
            &params,
            &[x, gamma, beta],
            &y,
            rows as u64,
        )?;
        Ok(y)
    }
}
