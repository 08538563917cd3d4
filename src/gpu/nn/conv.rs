//! The 3x3 convolution (`conv.wgsl`): an implicit GEMM with padding, stride, nearest resize
//! of the input, bias, an extra per-channel bias, a residual and an output scale fused.

use super::products::Product;
use super::{expect_shape, word, GpuError, GpuTensor, Nn};

/// A 3x3 convolution's weights on the GPU: PyTorch's (O, I, 3, 3) as it comes, read as a
/// (O, I*9) row-major matrix, stored in the [`Nn`]'s precision (f32 or f16); the bias is
/// f32.
pub struct Conv3x3Weights {
    weight: GpuTensor,
    bias: Option<GpuTensor>,
    out_channels: usize,
    in_channels: usize,
}

impl Conv3x3Weights {
    /// `weight` is PyTorch's (O, I, 3, 3) row-major, `bias` (O).
    pub fn new(
        nn: &Nn,
        weight: &[f32],
        bias: Option<&[f32]>,
        out_channels: usize,
        in_channels: usize,
    ) -> Result<Self, GpuError> {
        let want = out_channels * in_channels * 9;
        if weight.len() != want {
            return Err(GpuError::BadInput(format!(
                "3x3 conv weight has {} values, ({out_channels}, {in_channels}, 3, 3) needs \
                 {want}",
                weight.len()
            )));
        }
        if let Some(bias) = bias {
            if bias.len() != out_channels {
                return Err(GpuError::BadInput(format!(
                    "3x3 conv bias has {} values, the conv has {out_channels} outputs",
                    bias.len()
                )));
            }
        }
        Ok(Self {
            weight: nn.upload_weights(weight, &[out_channels, in_channels, 3, 3])?,
            bias: bias.map(|b| nn.upload(b, &[out_channels])).transpose()?,
            out_channels,
            in_channels,
        })
    }

    /// O.
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// I.
    pub fn in_channels(&self) -> usize {
        self.in_channels
    }
}

/// What a 3x3 convolution does besides convolving.
#[derive(Clone, Copy, Debug)]
pub struct Conv3x3Opts<'a> {
    /// 1 or 2.
    pub stride: usize,
    /// Zero padding before (top, left) and after (bottom, right): (1, 1) "same", (0, 1) for
    /// diffusers' downsample_padding 0.
    pub pad: (usize, usize),
    /// Nearest-resize the input to (h, w) first (PyTorch: src = floor(dst * in / out)),
    /// fused into the input read.
    pub upsample_to: Option<(usize, usize)>,
    /// Added with the bias: per output channel (Cout), or per batch and output channel
    /// (B, Cout) (the resnet's time embedding).
    pub extra_bias: Option<&'a GpuTensor>,
    /// Same shape as the output, added after the bias.
    pub residual: Option<&'a GpuTensor>,
    /// The sum is multiplied by it (1.0 normally; the resnet's 1/output_scale_factor).
    pub out_scale: f32,
}

impl Default for Conv3x3Opts<'_> {
    fn default() -> Self {
        Self {
            stride: 1,
            pad: (1, 1),
            upsample_to: None,
            extra_bias: None,
            residual: None,
            out_scale: 1.0,
        }
    }
}

impl Nn {
    /// 3x3 convolution of NCHW `x` (B, Cin, H, W) -> (B, Cout, Ho, Wo), with
    /// Ho = (H' + pad.0 + pad.1 - 3) / stride + 1 (H' the resized height), same for W.
    pub fn conv3x3(
        &self,
        x: &GpuTensor,
        w: &Conv3x3Weights,
        o: &Conv3x3Opts,
    ) -> Result<GpuTensor, GpuError> {
        let &[batch, cin, hs, ws] = x.shape() else {
            return Err(GpuError::BadInput(format!(
                "conv3x3 input must be (B, C, H, W), got {:?}",
                x.shape()
            )));
        };
        if cin != w.in_channels {
            return Err(GpuError::BadInput(format!(
                "conv3x3 input has {cin} channels, the weights take {}",
                w.in_channels
            )));
        }
        if !matches!(o.stride, 1 | 2) {
            return Err(GpuError::BadInput(format!(
                "conv3x3 stride must be 1 or 2, got {}",
                o.stride
            )));
        }
        if o.pad.0 > 2 || o.pad.1 > 2 {
            return Err(GpuError::BadInput(format!(
                "conv3x3 padding {:?} is beyond 2",
                o.pad
            )));
        }
        let (hu, wu) = o.upsample_to.unwrap_or((hs, ws));
        let padded = (hu + o.pad.0 + o.pad.1, wu + o.pad.0 + o.pad.1);
        if hs == 0 || ws == 0 || hu == 0 || wu == 0 || padded.0 < 3 || padded.1 < 3 {
            return Err(GpuError::BadInput(format!(
                "conv3x3 input {hs}x{ws} (resized to {hu}x{wu}) with padding {:?} is smaller \
                 than the kernel",
                o.pad
            )));
        }
        // The shader's index arithmetic is u32 without bounds checks (proof at
        // `products::product_module`): the resize's iy * H and the padded sizes must fit.
        let fits = |a: usize, b: usize| a.checked_mul(b).is_some_and(|p| p <= u32::MAX as usize);
        if o.upsample_to.is_some() && !(fits(hu, hs) && fits(wu, ws)) {
            return Err(GpuError::Unsupported(format!(
                "conv3x3 resize of {hs}x{ws} to {hu}x{wu} is beyond 32-bit index arithmetic"
            )));
        }
        if padded.0 > i32::MAX as usize || padded.1 > i32::MAX as usize {
            return Err(GpuError::Unsupported(format!(
                "conv3x3 input {hu}x{wu} is beyond 32-bit index arithmetic"
            )));
        }
        let ho = (padded.0 - 3) / o.stride + 1;
        let wo = (padded.1 - 3) / o.stride + 1;
        let cout = w.out_channels;
        let out_shape = [batch, cout, ho, wo];
        let extra_mode = match o.extra_bias {
            None => 0,
            Some(e) if e.len() == cout => 1,
            Some(e) if e.len() == batch * cout => 2,
            Some(e) => {
                return Err(GpuError::BadInput(format!(
                    "conv3x3 extra bias {:?} must hold {cout} or {batch} x {cout} values",
                    e.shape()
                )))
            }
        };
        if let Some(r) = o.residual {
            expect_shape(r, &out_shape, "conv3x3 residual")?;
        }
        let kernel = self.product_kernel(Product::Conv {
            weights: w.weight.precision(),
        })?;
        let y = self.output(&out_shape, "conv3x3 output")?;
        let k = cin * 9;
        let n = batch * ho * wo;
        let tiles_m = cout.div_ceil(64);
        let tiles_n = n.div_ceil(64);
        let params = [
            word(cin, "conv channels")?,
            word(hs, "conv height")?,
            word(ws, "conv width")?,
            word(hu, "conv height")?,
            word(wu, "conv width")?,
            word(ho, "conv height")?,
            word(wo, "conv width")?,
            word(cout, "conv channels")?,
            o.stride as u32,
            o.pad.0 as u32,
            o.pad.0 as u32,
            u32::from(o.upsample_to.is_some()),
            u32::from(w.bias.is_some()),
            extra_mode,
            u32::from(o.residual.is_some()),
            o.out_scale.to_bits(),
            word(k, "conv K")?,
            word(n, "conv pixels")?,
            word(tiles_m, "conv tiles")?,
            word(tiles_n, "conv tiles")?,
        ];
        self.dispatch(
            &kernel,
            &params,
            &[
                x,
                &w.weight,
                self.or_dummy(w.bias.as_ref()),
                self.or_dummy(o.extra_bias),
                self.or_dummy(o.residual),
            ],
            &y,
            (tiles_m * tiles_n) as u64,
        )?;
        self.add_flops(2 * (cout * n * k) as u64);
        Ok(y)
    }
}
