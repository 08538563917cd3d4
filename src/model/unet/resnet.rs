//! diffusers' `ResnetBlock2D` and the down / up samplers between UNet levels.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, GroupNorm, Linear, VarBuilder};

use super::config::BlockSettings;
use super::conv::Conv3x3;
use crate::model::kernels::Padding;

/// A candle-nn 2D convolution with the given stride and padding.
pub(super) fn conv2d(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding,
        stride,
        ..Default::default()
    };
    candle_nn::conv2d(in_channels, out_channels, kernel, cfg, vb)
}

/// diffusers `ResnetBlock2D` with the `default` time-embedding mode (added after `conv1`).
#[derive(Debug, Clone)]
pub(super) struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv3x3,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv3x3,
    conv_shortcut: Option<Conv2d>,
    output_scale_factor: f64,
}

impl ResnetBlock2D {
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        output_scale_factor: f64,
        s: &BlockSettings,
    ) -> Result<Self> {
        let conv_shortcut = if in_channels != out_channels {
            Some(conv2d(
                in_channels,
                out_channels,
                1,
                1,
                0,
                vb.pp("conv_shortcut"),
            )?)
        } else {
            None
        };
        Ok(Self {
            norm1: candle_nn::group_norm(s.groups, in_channels, s.eps, vb.pp("norm1"))?,
            conv1: Conv3x3::new(
                vb.pp("conv1"),
                in_channels,
                out_channels,
                1,
                Padding::same(1),
            )?,
            time_emb_proj: candle_nn::linear(
                s.temb_channels,
                out_channels,
                vb.pp("time_emb_proj"),
            )?,
            norm2: candle_nn::group_norm(s.groups, out_channels, s.eps, vb.pp("norm2"))?,
            conv2: Conv3x3::new(
                vb.pp("conv2"),
                out_channels,
                out_channels,
                1,
                Padding::same(1),
            )?,
            conv_shortcut,
            output_scale_factor,
        })
    }

    /// `temb` is (1 or batch, temb_channels).
    pub fn forward(&self, x: &Tensor, temb: &Tensor) -> Result<Tensor> {
        let h = self.norm1.forward(x)?.silu()?;
        let h = self.conv1.forward(&h)?;
        let t = self.time_emb_proj.forward(&temb.silu()?)?;
        let t = t.unsqueeze(2)?.unsqueeze(3)?;
        let h = h.broadcast_add(&t)?;
        let h = self.norm2.forward(&h)?.silu()?;
        // Dropout is the identity at inference.
        let h = self.conv2.forward(&h)?;
        let skip = match &self.conv_shortcut {
            Some(conv) => conv.forward(x)?,
            None => x.clone(),
        };
        let out = (skip + h)?;
        if self.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            out / self.output_scale_factor
        }
    }
}

/// diffusers `Downsample2D` with a conv: 3x3, stride 2.
#[derive(Debug, Clone)]
pub(super) struct Downsample2D {
    conv: Conv3x3,
}

impl Downsample2D {
    pub(super) fn new(vb: VarBuilder, channels: usize, padding: usize) -> Result<Self> {
        // diffusers pads (0, 1, 0, 1) itself when the conv has no padding.
        let padding = match padding {
            0 => Padding {
                before: 0,
                after: 1,
            },
            p => Padding::same(p),
        };
        Ok(Self {
            conv: Conv3x3::new(vb.pp("conv"), channels, channels, 2, padding)?,
        })
    }

    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(x)
    }
}

/// diffusers `Upsample2D` with a conv: nearest up-sampling, then 3x3.
#[derive(Debug, Clone)]
pub(super) struct Upsample2D {
    conv: Conv3x3,
}

impl Upsample2D {
    pub(super) fn new(vb: VarBuilder, channels: usize) -> Result<Self> {
        Ok(Self {
            conv: Conv3x3::new(vb.pp("conv"), channels, channels, 1, Padding::same(1))?,
        })
    }

    /// Up-samples to `(height, width)`: the size of the skip connection it meets next.
    /// That is 2x for sizes divisible by 2^levels; for other sizes diffusers passes the
    /// same target (`upsample_size`), so both paths agree with it.
    pub(super) fn forward(&self, x: &Tensor, (height, width): (usize, usize)) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        if (height, width) == (2 * h, 2 * w) {
            // The usual case: the up-sampling is folded into the convolution's input.
            return self.conv.forward_upsampled(x, 2);
        }
        let x = x.upsample_nearest2d(height, width)?;
        self.conv.forward(&x)
    }
}
