//! The down / mid / up blocks of the diffusers UNet, built from resnets and spatial
//! transformers. Tensor names follow diffusers so a `VarBuilder` over a diffusers
//! `state_dict` finds every weight.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::config::{AttentionSettings, BlockSettings};
use super::resnet::{Downsample2D, ResnetBlock2D, Upsample2D};
use super::transformer::Transformer2D;

/// diffusers `CrossAttnDownBlock2D` (with `attention`) or `DownBlock2D` (without).
#[derive(Debug, Clone)]
pub(super) struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2D>,
    downsampler: Option<Downsample2D>,
}

impl DownBlock {
    pub fn new(
        vb: VarBuilder,
        (in_channels, out_channels): (usize, usize),
        num_layers: usize,
        attention: Option<&AttentionSettings>,
        add_downsample: bool,
        s: &BlockSettings,
    ) -> Result<Self> {
        let mut resnets = Vec::with_capacity(num_layers);
        let mut attentions = Vec::new();
        for i in 0..num_layers {
            let resnet_in = if i == 0 { in_channels } else { out_channels };
            resnets.push(ResnetBlock2D::new(
                vb.pp("resnets").pp(i),
                resnet_in,
                out_channels,
                1.0,
                s,
            )?);
            if let Some(a) = attention {
                attentions.push(Transformer2D::new(
                    vb.pp("attentions").pp(i),
                    out_channels,
                    a,
                    s,
                )?);
            }
        }
        let downsampler = if add_downsample {
            Some(Downsample2D::new(
                vb.pp("downsamplers").pp("0"),
                out_channels,
                s.downsample_padding,
            )?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            downsampler,
        })
    }

    /// Returns the output and every state the up blocks take as skip connections
    /// (each resnet's output, then the down-sampled one).
    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        context: &Tensor,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut h = x.clone();
        let mut states = Vec::with_capacity(self.resnets.len() + 1);
        for (i, resnet) in self.resnets.iter().enumerate() {
            h = resnet.forward(&h, temb)?;
            if let Some(attention) = self.attentions.get(i) {
                h = attention.forward(&h, context)?;
            }
            states.push(h.clone());
        }
        if let Some(down) = &self.downsampler {
            h = down.forward(&h)?;
            states.push(h.clone());
        }
        Ok((h, states))
    }
}

/// diffusers `UNetMidBlock2DCrossAttn`: resnet, then (transformer, resnet) per layer.
#[derive(Debug, Clone)]
pub(super) struct MidBlock {
    first: ResnetBlock2D,
    layers: Vec<(Transformer2D, ResnetBlock2D)>,
}

impl MidBlock {
    pub fn new(
        vb: VarBuilder,
        channels: usize,
        output_scale_factor: f64,
        attention: &AttentionSettings,
        s: &BlockSettings,
    ) -> Result<Self> {
        let resnet = |i: usize| {
            ResnetBlock2D::new(
                vb.pp("resnets").pp(i),
                channels,
                channels,
                output_scale_factor,
                s,
            )
        };
        // diffusers' mid block always has one attention layer (`num_layers=1`).
        let attention = Transformer2D::new(vb.pp("attentions").pp("0"), channels, attention, s)?;
        Ok(Self {
            first: resnet(0)?,
            layers: vec![(attention, resnet(1)?)],
        })
    }

    pub fn forward(&self, x: &Tensor, temb: &Tensor, context: &Tensor) -> Result<Tensor> {
        let mut h = self.first.forward(x, temb)?;
        for (attention, resnet) in &self.layers {
            h = attention.forward(&h, context)?;
            h = resnet.forward(&h, temb)?;
        }
        Ok(h)
    }
}

/// diffusers `CrossAttnUpBlock2D` (with `attention`) or `UpBlock2D` (without).
#[derive(Debug, Clone)]
pub(super) struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2D>,
    upsampler: Option<Upsample2D>,
}

/// The channel counts an up block is built from (diffusers' names).
#[derive(Debug, Clone, Copy)]
pub(super) struct UpChannels {
    /// Channels of the matching down level's input: the last skip connection's width.
    pub in_channels: usize,
    /// Channels of this level.
    pub out_channels: usize,
    /// Channels coming up from the level below.
    pub prev_output_channels: usize,
}

impl UpBlock {
    pub fn new(
        vb: VarBuilder,
        c: UpChannels,
        num_layers: usize,
        attention: Option<&AttentionSettings>,
        add_upsample: bool,
        s: &BlockSettings,
    ) -> Result<Self> {
        let mut resnets = Vec::with_capacity(num_layers);
        let mut attentions = Vec::new();
        for i in 0..num_layers {
            let skip = if i + 1 == num_layers {
                c.in_channels
            } else {
                c.out_channels
            };
            let resnet_in = if i == 0 {
                c.prev_output_channels
            } else {
                c.out_channels
            };
            resnets.push(ResnetBlock2D::new(
                vb.pp("resnets").pp(i),
                resnet_in + skip,
                c.out_channels,
                1.0,
                s,
            )?);
            if let Some(a) = attention {
                attentions.push(Transformer2D::new(
                    vb.pp("attentions").pp(i),
                    c.out_channels,
                    a,
                    s,
                )?);
            }
        }
        let upsampler = if add_upsample {
            Some(Upsample2D::new(
                vb.pp("upsamplers").pp("0"),
                c.out_channels,
            )?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            upsampler,
        })
    }

    /// How many skip connections this block consumes.
    pub fn num_skips(&self) -> usize {
        self.resnets.len()
    }

    /// `skips` are this block's skip connections in down order (the last is used first);
    /// `upsample_hw` is the spatial size to up-sample to, when the block does.
    pub fn forward(
        &self,
        x: &Tensor,
        skips: &[Tensor],
        temb: &Tensor,
        context: &Tensor,
        upsample_hw: Option<(usize, usize)>,
    ) -> Result<Tensor> {
        let mut h = x.clone();
        for (i, (resnet, skip)) in self.resnets.iter().zip(skips.iter().rev()).enumerate() {
            h = Tensor::cat(&[&h, skip], 1)?;
            h = resnet.forward(&h, temb)?;
            if let Some(attention) = self.attentions.get(i) {
                h = attention.forward(&h, context)?;
            }
        }
        match (&self.upsampler, upsample_hw) {
            (Some(up), Some(hw)) => up.forward(&h, hw),
            (Some(up), None) => {
                let (_, _, height, width) = h.dims4()?;
                up.forward(&h, (2 * height, 2 * width))
            }
            (None, _) => Ok(h),
        }
    }
}
