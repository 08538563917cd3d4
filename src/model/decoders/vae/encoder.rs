//! The AutoencoderKL encoder: an image in [-1, 1] to the latent distribution's mean, for
//! images used as keyframes. On the decoder's kernels; the downsamplers' stride-2
//! convolutions (diffusers pads only the right and bottom, then convolves with padding 0)
//! are the stride-1 convolution sampled at odd rows and columns ([`Act::subsample`]).
//!
//! ```text
//! conv_in (3x3)
//! down blocks: layers_per_block resnets, then (not last) pad (0,1,0,1) + conv 3x3 stride 2
//! mid block: resnet, attention (one head, all channels), resnet
//! GroupNorm + SiLU -> conv_out (3x3, 2 x latent channels) -> quant_conv (1x1)
//! mean = moments[:latent_channels]   (logvar = the rest)
//! ```

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::AutoencoderKlConfig;
use super::{conv1x1, conv3x3, group_norm, mid_block, open_folder, plain, Resnet, Workspace};
use crate::model::kernels::{
    padded, Act, Attention, CompactConv3x3, Conv1x1, ConvShape, GroupNorm,
};
use crate::model::{weights, ModelError, Result};

/// A `DownEncoderBlock2D`: resnets, then (all but the last block) the downsampler.
#[derive(Debug)]
struct DownBlock {
    resnets: Vec<Resnet>,
    downsample: Option<CompactConv3x3>,
}

/// The AutoencoderKL encoder with its `quant_conv`.
#[derive(Debug)]
pub struct VaeEncoder {
    conv_in: CompactConv3x3,
    down_blocks: Vec<DownBlock>,
    mid_resnets: [Resnet; 2],
    mid_attention: Attention,
    conv_norm_out: GroupNorm,
    conv_out: CompactConv3x3,
    quant_conv: Option<Conv1x1>,
    config: AutoencoderKlConfig,
}

impl VaeEncoder {
    /// Builds the encoder from weights with diffusers' names (`encoder.*`, `quant_conv.*`) at
    /// the root of `vb`. Decoder weights, if present, are never read.
    pub fn new(vb: VarBuilder, cfg: &AutoencoderKlConfig) -> Result<Self> {
        cfg.check()?;
        Ok(Self::build(vb, cfg)?)
    }

    fn build(vb: VarBuilder, cfg: &AutoencoderKlConfig) -> candle_core::Result<Self> {
        let groups = cfg.norm_num_groups;
        let channels = &cfg.block_out_channels;
        let deepest = channels[channels.len() - 1];
        let moments = 2 * cfg.latent_channels;
        let quant_conv = if cfg.use_quant_conv {
            Some(conv1x1(vb.pp("quant_conv"), moments, moments)?)
        } else {
            None
        };
        let vb = vb.pp("encoder");
        let conv_in = conv3x3(vb.pp("conv_in"), cfg.in_channels, channels[0])?;
        let mut down_blocks = Vec::with_capacity(channels.len());
        let mut in_channels = channels[0];
        for (index, &out_channels) in channels.iter().enumerate() {
            let vb = vb.pp("down_blocks").pp(index);
            let resnets = (0..cfg.layers_per_block)
                .map(|i| {
                    let cin = if i == 0 { in_channels } else { out_channels };
                    Resnet::new(vb.pp("resnets").pp(i), cin, out_channels, groups)
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            let downsample = if index + 1 < channels.len() {
                let vb = vb.pp("downsamplers").pp("0").pp("conv");
                Some(conv3x3(vb, out_channels, out_channels)?)
            } else {
                None
            };
            down_blocks.push(DownBlock {
                resnets,
                downsample,
            });
            in_channels = out_channels;
        }
        let (mid_resnets, mid_attention) = mid_block(vb.pp("mid_block"), groups, deepest)?;
        let conv_norm_out = group_norm(vb.pp("conv_norm_out"), groups, deepest)?;
        let conv_out = conv3x3(vb.pp("conv_out"), deepest, moments)?;
        Ok(Self {
            conv_in,
            down_blocks,
            mid_resnets,
            mid_attention,
            conv_norm_out,
            conv_out,
            quant_conv,
            config: cfg.clone(),
        })
    }

    /// Loads the encoder of a diffusers `vae/` folder: `config.json` and its safetensors
    /// weights. Errors name the file at fault.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let (cfg, vb, weights_path) = open_folder(dir, device)?;
        Self::build(vb, &cfg).map_err(weights::in_file(&weights_path))
    }

    /// The configuration the encoder was built with.
    pub fn config(&self) -> &AutoencoderKlConfig {
        &self.config
    }

    /// Image pixels per latent along each side (8 for SD's VAE).
    pub fn downscale_factor(&self) -> usize {
        self.config.upscale_factor()
    }

    /// `quant_conv(encoder(image))`: the distribution's `(B, 2 x latent_channels, H/f, W/f)`
    /// moments (mean, then log-variance before diffusers' clamp) of `(B, in_channels, H, W)`
    /// images in [-1, 1]. Runs on the CPU, one image at a time.
    pub fn moments(&self, image: &Tensor) -> Result<Tensor> {
        let (batch, c, h, w) = image.dims4()?;
        let f = self.downscale_factor();
        if c != self.config.in_channels || batch == 0 || h < f || w < f {
            return Err(ModelError::Invalid(format!(
                "VAE encoder input must be (batch, {}, height, width) with sides of at least \
                 {f}, got {:?}",
                self.config.in_channels,
                image.dims()
            )));
        }
        let values = image
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut ws = Workspace::default();
        let mut out = Vec::new();
        let mut shape = (0, 0);
        for one in values.chunks(c * h * w) {
            let (moments, hw) = self.encode_one(one, (h, w), &mut ws);
            out.extend(moments);
            shape = hw;
        }
        let channels = 2 * self.config.latent_channels;
        Ok(Tensor::from_vec(
            out,
            (batch, channels, shape.0, shape.1),
            &Device::Cpu,
        )?)
    }

    /// diffusers' `vae.encode(image).latent_dist.mean` (= `.mode()`): the latents of
    /// `image` in the VAE's own space.
    pub fn encode_mean(&self, image: &Tensor) -> Result<Tensor> {
        let moments = self.moments(image)?;
        Ok(moments.narrow(1, 0, self.config.latent_channels)?)
    }

    /// The latents of `image` in the diffusion model's space, as the SD pipelines make them
    /// from the distribution's mean: `(mean - shift_factor) * scaling_factor`.
    pub fn encode(&self, image: &Tensor) -> Result<Tensor> {
        let mean = self.encode_mean(image)?;
        let shift = self.config.shift_factor.unwrap_or(0.0);
        Ok(((mean - shift)? * self.config.scaling_factor)?)
    }

    /// Encodes one image (NCHW values) to its moments (NCHW) and their size.
    fn encode_one(
        &self,
        image: &[f32],
        (h, w): (usize, usize),
        ws: &mut Workspace,
    ) -> (Vec<f32>, (usize, usize)) {
        let c = self.config.in_channels;
        let input = Act::from_nchw(ws.pool.take(h * w * padded(c)), image, (1, c, h, w), |v| v);
        let cp = self.conv_in.out_channels_padded();
        let mut x = Act::reuse(ws.pool.take(h * w * cp), 1, h, w, cp);
        self.conv_in
            .forward(&input, 1, plain(&mut x), &mut ws.winograd);
        ws.pool.give(input.into_buffer());
        for block in &self.down_blocks {
            for resnet in &block.resnets {
                x = resnet.forward(x, ws);
            }
            if let Some(conv) = &block.downsample {
                let cp = conv.out_channels_padded();
                let mut full = Act::reuse(ws.pool.take(x.h * x.w * cp), 1, x.h, x.w, cp);
                conv.forward(&x, 1, plain(&mut full), &mut ws.winograd);
                let half = full.subsample(1, x.into_buffer());
                ws.pool.give(full.into_buffer());
                x = half;
            }
        }
        let [resnet0, resnet1] = &self.mid_resnets;
        x = resnet0.forward(x, ws);
        self.mid_attention.forward(&mut x, &mut ws.pool);
        x = resnet1.forward(x, ws);
        self.conv_norm_out.forward_in_place(&mut x, true);
        let cp = self.conv_out.out_channels_padded();
        let mut moments = Act::reuse(ws.pool.take(x.h * x.w * cp), 1, x.h, x.w, cp);
        self.conv_out
            .forward(&x, 1, plain(&mut moments), &mut ws.winograd);
        ws.pool.give(x.into_buffer());
        if let Some(conv) = &self.quant_conv {
            let cp = conv.out_channels_padded();
            let mut y = Act::reuse(
                ws.pool.take(moments.h * moments.w * cp),
                1,
                moments.h,
                moments.w,
                cp,
            );
            conv.forward(&moments, &mut y);
            ws.pool
                .give(std::mem::replace(&mut moments, y).into_buffer());
        }
        let size = (moments.h, moments.w);
        (moments.to_nchw(2 * self.config.latent_channels), size)
    }
}
