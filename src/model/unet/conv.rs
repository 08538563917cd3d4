//! The UNet's 3x3 convolutions on our CPU kernels (`model::kernels`) instead of candle's
//! generic conv2d (~13 GFLOP/s here): the weights are kept once, in the compact layout, and
//! each call picks
//!
//! * **Winograd F(4x4, 3x3)** (the decoders' kernel, nearest up-sampling fused into its
//!   input gather) when the call has enough 4x4 output tiles to pay for transforming the
//!   weights, i.e. the UNet's 64x64 and 32x32 levels;
//! * **nine matrix products** on `gemm` otherwise, and for stride 2: the 16x16 and 8x8
//!   levels, whose 1280-channel weights would cost more to transform than to use.
//!
//! Tensors stay NCHW at the boundary, converted to and from the kernels' NHWC layout around
//! each call (memory-bound copies, a few percent of the convolution they feed).

use std::cell::RefCell;

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

use crate::model::kernels::{Act, CompactConv3x3, ConvShape, Padding, Sink};

/// Output tiles (4x4, over the batch) from which Winograd is used: below it the per-call
/// weight transform (36 floats per channel pair) costs more than the products it saves.
const WINOGRAD_MIN_TILES: usize = 64;

thread_local! {
    /// Winograd weights or gathered taps of the current call, kept between calls (the
    /// largest is a 1280 -> 640 layer's 118 MB of Winograd weights at the 32x32 level).
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// A 3x3 convolution of the UNet (stride 1 or 2) with a bias.
#[derive(Debug, Clone)]
pub(super) struct Conv3x3 {
    conv: CompactConv3x3,
    stride: usize,
    padding: Padding,
}

impl Conv3x3 {
    /// Reads `weight` (cout, cin, 3, 3) and `bias` (cout) under `vb` with candle-nn's
    /// initialisation hints (so seeded weights are the same as candle-nn's conv2d).
    pub(super) fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        stride: usize,
        padding: Padding,
    ) -> Result<Self> {
        let cfg = candle_nn::Conv2dConfig {
            padding: 1,
            stride,
            ..Default::default()
        };
        let candle = candle_nn::conv2d(in_channels, out_channels, 3, cfg, vb)?;
        let values = |t: &Tensor| t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>();
        let weight = values(candle.weight())?;
        let bias = candle.bias().map(values).transpose()?;
        Ok(Self {
            conv: CompactConv3x3::new(&weight, bias.as_deref(), out_channels, in_channels),
            stride,
            padding,
        })
    }

    /// The convolution of `x` (N, C, H, W).
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_upsampled(x, 1)
    }

    /// The convolution of `x` (N, C, H, W) up-sampled (nearest) by `upsample` (1 or 2).
    pub(super) fn forward_upsampled(&self, x: &Tensor, upsample: usize) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        if c != self.conv.in_channels() {
            candle_core::bail!(
                "conv: input has {c} channels, the weights {}",
                self.conv.in_channels()
            );
        }
        let values = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let input = Act::from_nchw(Vec::new(), &values, (n, c, h, w), |v| v);
        let (uh, uw) = (h * upsample, w * upsample);
        let (oh, ow) = (
            self.padding.out_len(uh, self.stride),
            self.padding.out_len(uw, self.stride),
        );
        let cout = self.conv.out_channels();
        let tiles = n * oh.div_ceil(4) * ow.div_ceil(4);
        let winograd = self.stride == 1 && self.padding == Padding::same(1);
        let out = SCRATCH.with(|scratch| {
            let scratch = &mut scratch.borrow_mut();
            if winograd && tiles >= WINOGRAD_MIN_TILES {
                let mut planes = vec![0f32; n * cout * oh * ow];
                let sink = Sink::Planes { out: &mut planes };
                self.conv.forward(&input, upsample, sink, scratch);
                planes
            } else {
                let input = if upsample == 1 {
                    input
                } else {
                    input.upsample_nearest(upsample)
                };
                let mut out = Act::reuse(Vec::new(), n, oh, ow, self.conv.out_channels_padded());
                self.conv
                    .forward_direct(&input, self.stride, self.padding, &mut out, scratch);
                out.to_nchw(cout)
            }
        });
        Tensor::from_vec(out, (n, cout, oh, ow), x.device())
    }
}

/// `conv_in` / `conv_out`: a "same"-padded convolution of the configured (odd) kernel size,
/// 3x3 on our kernels, other sizes on candle-nn.
#[derive(Debug, Clone)]
pub(super) enum SameConv {
    Fast(Conv3x3),
    Candle(candle_nn::Conv2d),
}

impl SameConv {
    pub(super) fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
    ) -> Result<Self> {
        if kernel == 3 {
            return Ok(Self::Fast(Conv3x3::new(
                vb,
                in_channels,
                out_channels,
                1,
                Padding::same(1),
            )?));
        }
        let cfg = candle_nn::Conv2dConfig {
            padding: (kernel - 1) / 2,
            ..Default::default()
        };
        Ok(Self::Candle(candle_nn::conv2d(
            in_channels,
            out_channels,
            kernel,
            cfg,
            vb,
        )?))
    }

    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Fast(conv) => conv.forward(x),
            Self::Candle(conv) => candle_core::Module::forward(conv, x),
        }
    }
}
