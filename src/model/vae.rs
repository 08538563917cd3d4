//! The AutoencoderKL decoder (the full Stable Diffusion VAE): latents to an image in [-1, 1].
//!
//! Built from candle-transformers' VAE blocks (`UNetMidBlock2D`, `UpDecoderBlock2D`), which
//! match diffusers to ~3e-6. We assemble the decoder ourselves rather than use its
//! `AutoEncoderKL` because that one always builds the encoder too: this viewer only decodes,
//! and the SD encoder would cost ~34M parameters (136 MB of f32) and its loading time.

use std::path::Path;

use candle_core::{Device, Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, GroupNorm, VarBuilder};
use candle_transformers::models::stable_diffusion::unet_2d_blocks::{
    UNetMidBlock2D, UNetMidBlock2DConfig, UpDecoderBlock2D, UpDecoderBlock2DConfig,
};
use serde::Deserialize;

use super::{weights, ModelError, Result};

/// diffusers' AutoencoderKL `config.json` (the `vae/` folder of an SD model); keys this
/// decoder does not use (encoder blocks, `sample_size`, `force_upcast`, ...) are ignored.
///
/// The four shape keys are required: diffusers always writes them, and guessing them would
/// only turn a wrong file into a confusing shape error.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AutoencoderKlConfig {
    /// The diffusers class that wrote the file; must be `AutoencoderKL` when present.
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    /// Channels of each encoder block; the decoder runs them in reverse.
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder block (decoder blocks have one more).
    pub layers_per_block: usize,
    /// Channels of the latents.
    pub latent_channels: usize,
    /// Groups of every GroupNorm.
    pub norm_num_groups: usize,
    /// Image channels.
    #[serde(default = "default_out_channels")]
    pub out_channels: usize,
    /// Activation; only `silu` exists in diffusers' AutoencoderKL.
    #[serde(default = "default_act_fn")]
    pub act_fn: String,
    /// Decoder block types; only `UpDecoderBlock2D` is supported.
    #[serde(default)]
    pub up_block_types: Option<Vec<String>>,
    /// Whether the mid block has its self-attention; must be true here.
    #[serde(default = "default_true")]
    pub mid_block_add_attention: bool,
    /// Whether the encoder output goes through a 1x1 `quant_conv` (encoder side, unused here).
    #[serde(default = "default_true")]
    pub use_quant_conv: bool,
    /// Whether latents go through a 1x1 `post_quant_conv` before the decoder.
    #[serde(default = "default_true")]
    pub use_post_quant_conv: bool,
    /// Latents are `vae_latents * scaling_factor` in the diffusion model's space.
    #[serde(default = "default_scaling_factor")]
    pub scaling_factor: f64,
    /// Latents are also shifted by this (SD3/Flux VAEs); `None` for SD 1.x/2.x.
    #[serde(default)]
    pub shift_factor: Option<f64>,
}

fn default_out_channels() -> usize {
    3
}
fn default_act_fn() -> String {
    "silu".to_string()
}
fn default_true() -> bool {
    true
}
fn default_scaling_factor() -> f64 {
    0.18215
}

impl AutoencoderKlConfig {
    /// The Stable Diffusion 1.x/2.x VAE (`block_out_channels` [128, 256, 512, 512], 8x).
    pub fn stable_diffusion() -> Self {
        Self {
            class_name: Some("AutoencoderKL".to_string()),
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            latent_channels: 4,
            norm_num_groups: 32,
            out_channels: 3,
            act_fn: default_act_fn(),
            up_block_types: None,
            mid_block_add_attention: true,
            use_quant_conv: true,
            use_post_quant_conv: true,
            scaling_factor: default_scaling_factor(),
            shift_factor: None,
        }
    }

    /// How many image pixels one latent covers along each side: 2^(blocks - 1).
    pub fn upscale_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    /// The first setting this decoder cannot express, as (config key, reason).
    fn unsupported(&self) -> Option<(&'static str, String)> {
        if let Some(class) = &self.class_name {
            if class != "AutoencoderKL" {
                return Some(("_class_name", format!("`{class}` is not an AutoencoderKL")));
            }
        }
        if self.block_out_channels.is_empty() || self.block_out_channels.contains(&0) {
            return Some((
                "block_out_channels",
                "must be a non-empty list of channel counts".into(),
            ));
        }
        if self.latent_channels == 0 {
            return Some(("latent_channels", "must be at least 1".into()));
        }
        if self.norm_num_groups == 0 {
            return Some(("norm_num_groups", "must be at least 1".into()));
        }
        if let Some(&c) = self
            .block_out_channels
            .iter()
            .find(|&&c| c % self.norm_num_groups != 0)
        {
            return Some((
                "norm_num_groups",
                format!(
                    "{} does not divide the {c} channels of a block",
                    self.norm_num_groups
                ),
            ));
        }
        if self.act_fn != "silu" {
            return Some((
                "act_fn",
                format!("`{}` is not supported (only silu)", self.act_fn),
            ));
        }
        if let Some(types) = &self.up_block_types {
            if types.len() != self.block_out_channels.len() {
                return Some((
                    "up_block_types",
                    format!(
                        "{} block types for {} blocks in block_out_channels",
                        types.len(),
                        self.block_out_channels.len()
                    ),
                ));
            }
            if let Some(other) = types.iter().find(|t| *t != "UpDecoderBlock2D") {
                return Some((
                    "up_block_types",
                    format!("`{other}` is not supported (only UpDecoderBlock2D)"),
                ));
            }
        }
        if !self.mid_block_add_attention {
            return Some((
                "mid_block_add_attention",
                "false is not supported: the decoder's mid block always has its attention".into(),
            ));
        }
        if !self.scaling_factor.is_finite() || self.scaling_factor == 0.0 {
            return Some(("scaling_factor", "must be a finite non-zero number".into()));
        }
        None
    }
}

/// The AutoencoderKL decoder with its `post_quant_conv`.
#[derive(Debug)]
pub struct VaeDecoder {
    post_quant_conv: Option<Conv2d>,
    conv_in: Conv2d,
    mid_block: UNetMidBlock2D,
    up_blocks: Vec<UpDecoderBlock2D>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    config: AutoencoderKlConfig,
}

/// diffusers' VAE uses GroupNorm eps 1e-6 everywhere (not the UNet's `norm_eps`).
const VAE_NORM_EPS: f64 = 1e-6;

impl VaeDecoder {
    /// Builds the decoder from weights with diffusers' names (`decoder.*`, `post_quant_conv.*`)
    /// at the root of `vb`. Encoder weights, if present, are never read.
    pub fn new(vb: VarBuilder, cfg: &AutoencoderKlConfig) -> Result<Self> {
        if let Some((key, message)) = cfg.unsupported() {
            return Err(ModelError::Invalid(format!(
                "AutoencoderKL config `{key}`: {message}"
            )));
        }
        Ok(Self::build(vb, cfg)?)
    }

    fn build(vb: VarBuilder, cfg: &AutoencoderKlConfig) -> candle_core::Result<Self> {
        let conv3 = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let groups = cfg.norm_num_groups;
        let channels = &cfg.block_out_channels;
        // Checked by `unsupported`: non-empty.
        let deepest = channels[channels.len() - 1];
        let post_quant_conv = if cfg.use_post_quant_conv {
            let (c, vb) = (cfg.latent_channels, vb.pp("post_quant_conv"));
            Some(candle_nn::conv2d(c, c, 1, Default::default(), vb)?)
        } else {
            None
        };
        let vb = vb.pp("decoder");
        let conv_in = candle_nn::conv2d(cfg.latent_channels, deepest, 3, conv3, vb.pp("conv_in"))?;
        let mid_cfg = UNetMidBlock2DConfig {
            num_layers: 1,
            resnet_eps: VAE_NORM_EPS,
            resnet_groups: Some(groups),
            // One head over all channels, as diffusers' `attention_head_dim` = last channels.
            attn_num_head_channels: None,
            output_scale_factor: 1.0,
        };
        let mid_block = UNetMidBlock2D::new(vb.pp("mid_block"), deepest, None, mid_cfg)?;
        let mut up_blocks = Vec::with_capacity(channels.len());
        let mut in_channels = deepest;
        for (index, &out_channels) in channels.iter().rev().enumerate() {
            let up_cfg = UpDecoderBlock2DConfig {
                num_layers: cfg.layers_per_block + 1,
                resnet_eps: VAE_NORM_EPS,
                resnet_groups: groups,
                output_scale_factor: 1.0,
                add_upsample: index + 1 < channels.len(),
            };
            let vb = vb.pp("up_blocks").pp(index.to_string());
            up_blocks.push(UpDecoderBlock2D::new(
                vb,
                in_channels,
                out_channels,
                up_cfg,
            )?);
            in_channels = out_channels;
        }
        let conv_norm_out =
            candle_nn::group_norm(groups, channels[0], VAE_NORM_EPS, vb.pp("conv_norm_out"))?;
        let conv_out =
            candle_nn::conv2d(channels[0], cfg.out_channels, 3, conv3, vb.pp("conv_out"))?;
        Ok(Self {
            post_quant_conv,
            conv_in,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
            config: cfg.clone(),
        })
    }

    /// Loads a diffusers `vae/` folder: `config.json` and its safetensors weights (fp32 or
    /// fp16). Errors name the file at fault.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config_path = dir.join("config.json");
        let cfg: AutoencoderKlConfig = weights::read_config(&config_path)?;
        if let Some((key, message)) = cfg.unsupported() {
            return Err(ModelError::Config {
                path: config_path,
                key: key.to_string(),
                message,
            });
        }
        let weights_path = weights::find_weights(dir)?;
        let vb = weights::mmap_var_builder(std::slice::from_ref(&weights_path), device)?;
        Self::build(vb, &cfg).map_err(weights::in_file(&weights_path))
    }

    /// The configuration the decoder was built with.
    pub fn config(&self) -> &AutoencoderKlConfig {
        &self.config
    }

    /// Image pixels per latent along each side (8 for SD's VAE).
    pub fn upscale_factor(&self) -> usize {
        self.config.upscale_factor()
    }

    /// diffusers' `vae.decode(z).sample`: `z` (B, latent_channels, h, w) in the VAE's own
    /// latent space to an image (B, out_channels, h * f, w * f), nominally in [-1, 1]
    /// (not clamped).
    pub fn decode_raw(&self, z: &Tensor) -> Result<Tensor> {
        let (batch, c, _, _) = z.dims4()?;
        if c != self.config.latent_channels {
            return Err(ModelError::Invalid(format!(
                "VAE decode: latents have {c} channels, the VAE expects {}",
                self.config.latent_channels
            )));
        }
        if batch == 1 {
            return self.decode_one(z);
        }
        // One image at a time: candle-core 0.11.1's CPU matmul folds a batched
        // `(b, m, k) @ broadcast (k, n)` into one gemm whenever the lhs batch stride is m*k,
        // even when the lhs is a transposed view whose rows are not adjacent. The mid-block
        // attention's projections are exactly that, so batch rows after the first come out
        // wrong (7e-3 on the tiny-sd fixture; huggingface/candle PR #3758). Decoding rows
        // separately costs nothing measurable: the convolutions dominate and are per image.
        let images = (0..batch)
            .map(|i| self.decode_one(&z.narrow(0, i, 1)?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&images, 0)?)
    }

    fn decode_one(&self, z: &Tensor) -> Result<Tensor> {
        let z = match &self.post_quant_conv {
            Some(conv) => conv.forward(z)?,
            None => z.clone(),
        };
        let mut x = self.mid_block.forward(&self.conv_in.forward(&z)?, None)?;
        for block in &self.up_blocks {
            x = block.forward(&x)?;
        }
        let x = candle_nn::ops::silu(&self.conv_norm_out.forward(&x)?)?;
        Ok(self.conv_out.forward(&x)?)
    }

    /// Decodes latents of the diffusion model (what the sampler returns), as the SD pipeline
    /// does: `decode_raw(latents / scaling_factor + shift_factor)`. NCHW, nominally in [-1, 1].
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let shift = self.config.shift_factor.unwrap_or(0.0);
        // A true division, as the pipeline's `latents / scaling_factor` (the reciprocal
        // multiply of `affine` can differ in the last bit).
        let scale = Tensor::new(self.config.scaling_factor as f32, latents.device())?
            .to_dtype(latents.dtype())?;
        let z = latents.broadcast_div(&scale)?;
        let z = if shift != 0.0 { (z + shift)? } else { z };
        self.decode_raw(&z)
    }
}
