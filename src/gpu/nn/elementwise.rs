//! The elementwise kernels (`elementwise.wgsl`): activations, add, scale, GEGLU, channel
//! concatenation, batch repetition, the sampler step and the timestep embedding.

use super::{expect_shape, word, GpuError, GpuTensor, Nn};
use crate::model::schedulers::LinearStep;

/// Elementwise activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unary {
    /// x * sigmoid(x).
    Silu,
    /// The exact GELU, 0.5 x (1 + erf(x / sqrt 2)), erf by Abramowitz-Stegun 7.1.26
    /// (|error| <= 1.5e-7).
    Gelu,
    /// x * sigmoid(1.702 x) (OpenAI CLIP).
    QuickGelu,
}

impl Nn {
    /// x (.., 2n) -> (.., n): first half * gelu(second half), exact (erf) GELU (diffusers'
    /// GEGLU).
    pub fn geglu(&self, x: &GpuTensor) -> Result<GpuTensor, GpuError> {
        let Some((&last, lead)) = x.shape().split_last() else {
            return Err(GpuError::BadInput("geglu input is a scalar".into()));
        };
        if last % 2 != 0 {
            return Err(GpuError::BadInput(format!(
                "geglu input {:?} must have an even last dim",
                x.shape()
            )));
        }
        let mut shape = lead.to_vec();
        shape.push(last / 2);
        let out = self.output(&shape, "geglu output")?;
        let count = out.len();
        self.ew(
            &self.kernels.geglu,
            [word(last / 2, "geglu width")?, 0, 0],
            [0.0; 8],
            x,
            None,
            &out,
            count,
        )?;
        Ok(out)
    }

    /// An activation, elementwise.
    pub fn unary(&self, x: &GpuTensor, op: Unary) -> Result<GpuTensor, GpuError> {
        let out = self.output(x.shape(), "activation output")?;
        let code = match op {
            Unary::Silu => 0,
            Unary::Gelu => 1,
            Unary::QuickGelu => 2,
        };
        self.ew(
            &self.kernels.unary,
            [code, 0, 0],
            [0.0; 8],
            x,
            None,
            &out,
            x.len(),
        )?;
        Ok(out)
    }

    /// a + b, of the same shape.
    pub fn add(&self, a: &GpuTensor, b: &GpuTensor) -> Result<GpuTensor, GpuError> {
        expect_shape(b, a.shape(), "add's second operand")?;
        let out = self.output(a.shape(), "add output")?;
        self.ew(
            &self.kernels.add,
            [0; 3],
            [0.0; 8],
            a,
            Some(b),
            &out,
            a.len(),
        )?;
        Ok(out)
    }

    /// x * s.
    pub fn scale(&self, x: &GpuTensor, s: f32) -> Result<GpuTensor, GpuError> {
        let out = self.output(x.shape(), "scale output")?;
        let mut f = [0.0; 8];
        f[0] = s;
        self.ew(&self.kernels.scale, [0; 3], f, x, None, &out, x.len())?;
        Ok(out)
    }

    /// NCHW a (B, Ca, H, W), b (B, Cb, H, W) -> (B, Ca+Cb, H, W) (any number of spatial
    /// dims, equal in both).
    pub fn concat_channels(&self, a: &GpuTensor, b: &GpuTensor) -> Result<GpuTensor, GpuError> {
        let (sa, sb) = (a.shape(), b.shape());
        if sa.len() < 2 || sa.len() != sb.len() || sa[0] != sb[0] || sa[2..] != sb[2..] {
            return Err(GpuError::BadInput(format!(
                "concat_channels of {sa:?} and {sb:?}: batch and spatial sizes must match"
            )));
        }
        let mut shape = sa.to_vec();
        shape[1] = sa[1] + sb[1];
        let spatial: usize = sa[2..].iter().product();
        let out = self.output(&shape, "concat output")?;
        let count = out.len();
        self.ew(
            &self.kernels.concat,
            [
                word(sa[1], "channels")?,
                word(sb[1], "channels")?,
                word(spatial, "spatial size")?,
            ],
            [0.0; 8],
            a,
            Some(b),
            &out,
            count,
        )?;
        Ok(out)
    }

    /// x (B, ...) -> (B*times, ...), the batch repeated whole (cat([x, x]) for times 2).
    pub fn repeat_batch(&self, x: &GpuTensor, times: usize) -> Result<GpuTensor, GpuError> {
        let mut shape = x.shape().to_vec();
        let Some(first) = shape.first_mut() else {
            return Err(GpuError::BadInput("repeat_batch input is a scalar".into()));
        };
        *first *= times;
        let out = self.output(&shape, "repeat output")?;
        let count = out.len();
        if x.is_empty() {
            return Ok(out);
        }
        self.ew(
            &self.kernels.repeat,
            [word(x.len(), "tensor length")?, 0, 0],
            [0.0; 8],
            x,
            None,
            &out,
            count,
        )?;
        Ok(out)
    }

    /// diffusers' get_timestep_embedding of timestep `t` -> (1, dim): sin/cos halves (cos
    /// first when `flip_sin_to_cos`), exponent -ln(10000) * i / (half - freq_shift), an odd
    /// dim padded with a zero.
    pub fn timestep_embedding(
        &self,
        t: f32,
        dim: usize,
        flip_sin_to_cos: bool,
        freq_shift: f32,
    ) -> Result<GpuTensor, GpuError> {
        let half = dim / 2;
        let freqs = self.timestep_freqs(dim, freq_shift)?;
        let out = self.output(&[1, dim], "timestep embedding")?;
        let mut f = [0.0; 8];
        f[0] = t;
        let params = [
            word(half, "embedding width")?,
            u32::from(flip_sin_to_cos),
            0,
        ];
        self.ew(&self.kernels.timestep, params, f, &freqs, None, &out, dim)?;
        Ok(out)
    }

    /// One sampler step, all on the device. `model_out` has x's batch B, or 2B with guidance
    /// (first half unconditional u, second conditional c):
    /// e = guidance.map_or(out, |g| u + g * (c - u)); x0 = p * x + q * e, clamped to [-r, r]
    /// when `clamp` is Some(r); x' = alpha * x + beta * x0 + gamma * e.
    pub fn sampler_step(
        &self,
        x: &GpuTensor,
        model_out: &GpuTensor,
        c: &LinearStep,
        guidance: Option<f32>,
    ) -> Result<GpuTensor, GpuError> {
        let mut want = x.shape().to_vec();
        if guidance.is_some() {
            match want.first_mut() {
                Some(batch) => *batch *= 2,
                None => return Err(GpuError::BadInput("sampler_step x is a scalar".into())),
            }
        }
        expect_shape(model_out, &want, "sampler_step model output")?;
        let out = self.output(x.shape(), "sampler step output")?;
        let f = [
            c.p,
            c.q,
            c.clamp.unwrap_or(0.0),
            c.alpha,
            c.beta,
            c.gamma,
            guidance.unwrap_or(0.0),
            0.0,
        ];
        let params = [
            u32::from(guidance.is_some()),
            u32::from(c.clamp.is_some()),
            0,
        ];
        self.ew(
            &self.kernels.step,
            params,
            f,
            x,
            Some(model_out),
            &out,
            x.len(),
        )?;
        Ok(out)
    }

    /// exp(-ln(10000) * i / (half - freq_shift)) for i < half, rounded in f32 exactly as
    /// src/model/unet does it (GPU `exp` may differ by an ulp, and an ulp of a frequency
    /// moves t * freq by ~1e-4 at t ~ 1000), uploaded once per (dim, freq_shift).
    fn timestep_freqs(&self, dim: usize, freq_shift: f32) -> Result<GpuTensor, GpuError> {
        let mut cache = self.timestep_freqs.lock();
        if let Some(freqs) = cache.get(&(dim, freq_shift.to_bits())) {
            return Ok(freqs.clone());
        }
        let half = dim / 2;
        let neg_log_period = -(10000f64.ln()) as f32;
        let divisor = (half as f64 - f64::from(freq_shift)) as f32;
        let freqs: Vec<f32> = (0..half)
            .map(|i| ((neg_log_period * i as f32) / divisor).exp())
            .collect();
        let freqs = self.upload(&freqs, &[half])?;
        cache.insert((dim, freq_shift.to_bits()), freqs.clone());
        Ok(freqs)
    }

    /// Dispatches an elementwise kernel over `count` outputs.
    #[allow(clippy::too_many_arguments)]
    fn ew(
        &self,
        kernel: &super::Kernel,
        ints: [u32; 3],
        floats: [f32; 8],
        x: &GpuTensor,
        y: Option<&GpuTensor>,
        out: &GpuTensor,
        count: usize,
    ) -> Result<(), GpuError> {
        let mut params = vec![word(count, "tensor length")?];
        params.extend(ints);
        params.extend(floats.map(f32::to_bits));
        self.dispatch_1d(kernel, &params, &[x, self.or_dummy(y)], out, count)
    }
}
