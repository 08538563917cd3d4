//! diffusers' AutoencoderKL `config.json`, and which of its settings this decoder runs.

use serde::Deserialize;

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
    /// Image channels the encoder takes.
    #[serde(default = "default_out_channels")]
    pub in_channels: usize,
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
    /// Whether the encoder output goes through a 1x1 `quant_conv`.
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
            in_channels: 3,
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

    /// [`Self::unsupported`] as an error, for configs made in code.
    pub(super) fn check(&self) -> crate::model::Result<()> {
        match self.unsupported() {
            Some((key, message)) => Err(crate::model::ModelError::Invalid(format!(
                "AutoencoderKL config `{key}`: {message}"
            ))),
            None => Ok(()),
        }
    }

    /// The first setting this decoder cannot express, as (config key, reason).
    pub(super) fn unsupported(&self) -> Option<(&'static str, String)> {
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
            .find(|&&c| !c.is_multiple_of(self.norm_num_groups))
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
