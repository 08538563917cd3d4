//! The Stable Diffusion denoiser: diffusers' `UNet2DConditionModel`, on candle-nn blocks.
//!
//! Why our own and not candle-transformers 0.11's `UNet2DConditionModel`: its
//! `DownBlock2D` / `UpBlock2D` never pass `resnet_groups` to their resnets (they silently
//! use 32 groups whatever `norm_num_groups` says), its GEGLU uses the tanh-approximate GELU
//! where diffusers uses the exact erf GELU, and its config cannot express class-label
//! embeddings (the x4 upscaler's noise level) or `only_cross_attention`. Each of these
//! changes the output, so this module follows diffusers instead and is tested against it.
//!
//! [`UNetConfig`] is the diffusers `unet/config.json`; options this module does not
//! implement are refused with the name of the key rather than ignored.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Embedding, GroupNorm, Linear, VarBuilder};
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};

mod blocks;

use self::blocks::{AttentionSettings, BlockSettings, DownBlock, MidBlock, UpBlock, UpChannels};
use crate::model::weights::{find_weights, in_file, mmap_var_builder, read_config};
use crate::model::{ModelError, Result};

/// A config value given once for all blocks or as a list with one per down block
/// (diffusers accepts both for e.g. `attention_head_dim` and `only_cross_attention`).
#[derive(Debug, Clone, PartialEq)]
pub enum PerBlock<T> {
    /// The same value for every block.
    All(T),
    /// One value per down block, in down order (up blocks use them reversed).
    Each(Vec<T>),
}

impl<T: Clone> PerBlock<T> {
    /// The value of down block `index`; `None` when a list is too short.
    pub fn get(&self, index: usize) -> Option<T> {
        match self {
            Self::All(value) => Some(value.clone()),
            Self::Each(values) => values.get(index).cloned(),
        }
    }

    /// The value for the block after the last one: the mid block uses the last entry.
    fn last(&self) -> Option<T> {
        match self {
            Self::All(value) => Some(value.clone()),
            Self::Each(values) => values.last().cloned(),
        }
    }

    fn len_matches(&self, blocks: usize) -> bool {
        match self {
            Self::All(_) => true,
            Self::Each(values) => values.len() == blocks,
        }
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for PerBlock<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        // Through a `Value` so the error can quote what was there (an untagged enum only
        // says "did not match any variant").
        let value = serde_json::Value::deserialize(deserializer)?;
        let parsed = if value.is_array() {
            serde_json::from_value::<Vec<T>>(value.clone()).map(Self::Each)
        } else {
            serde_json::from_value::<T>(value.clone()).map(Self::All)
        };
        parsed.map_err(|e| {
            D::Error::custom(format!(
                "expected a value or a flat list with one per block, got {value} ({e})"
            ))
        })
    }
}

/// Names the key when `transformer_layers_per_block` is an SDXL-refiner-style nested
/// per-layer list, which this module does not implement.
fn transformer_layers_per_block<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<PerBlock<usize>, D::Error> {
    PerBlock::deserialize(deserializer).map_err(|e| {
        D::Error::custom(format!(
            "`transformer_layers_per_block`: {e}; per-layer (nested) lists are not supported"
        ))
    })
}

/// diffusers `UNet2DConditionModel` config (`unet/config.json`); missing keys take
/// diffusers' defaults. Keys that only matter to block types this module refuses anyway
/// (`resnet_skip_time_act`, `resnet_out_scale_factor`, `addition_time_embed_dim`, ...)
/// are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct UNetConfig {
    /// Nominal latent size the model was trained at (information only).
    pub sample_size: Option<usize>,
    /// Input channels: 4 latent channels, 7 for the x4 upscaler (latent + low-res image).
    pub in_channels: usize,
    /// Output channels (the predicted noise / v).
    pub out_channels: usize,
    /// Map the input with `2x - 1` first.
    pub center_input_sample: bool,
    /// Sinusoidal time embedding as [cos, sin] instead of [sin, cos].
    pub flip_sin_to_cos: bool,
    /// `downscale_freq_shift` of the sinusoidal time embedding.
    pub freq_shift: f64,
    /// `CrossAttnDownBlock2D` or `DownBlock2D` per level.
    pub down_block_types: Vec<String>,
    /// `UNetMidBlock2DCrossAttn`, or null for no mid block.
    pub mid_block_type: Option<String>,
    /// `CrossAttnUpBlock2D` or `UpBlock2D` per level, deepest first.
    pub up_block_types: Vec<String>,
    /// Whether the first attention of each transformer also reads the text context.
    pub only_cross_attention: PerBlock<bool>,
    /// Channels per level.
    pub block_out_channels: Vec<usize>,
    /// Resnets per down level (up levels have one more).
    pub layers_per_block: PerBlock<usize>,
    /// Padding of the stride-2 down-sampling convs.
    pub downsample_padding: usize,
    /// Output scale of the mid block's resnets.
    pub mid_block_scale_factor: f64,
    /// Training-time dropout (unused at inference).
    pub dropout: f64,
    /// Activation: only `silu` (`swish`) exists in SD UNets.
    pub act_fn: String,
    /// GroupNorm groups of every norm.
    pub norm_num_groups: Option<usize>,
    /// GroupNorm epsilon of the resnets and the output norm.
    pub norm_eps: f64,
    /// Width of the text embeddings (768 for SD 1.x, 1024 for SD 2.x).
    pub cross_attention_dim: PerBlock<usize>,
    /// `BasicTransformerBlock`s per transformer (a flat per-block list is accepted).
    #[serde(deserialize_with = "transformer_layers_per_block")]
    pub transformer_layers_per_block: PerBlock<usize>,
    /// Must be null (per-layer up-block transformer counts are not implemented).
    pub reverse_transformer_layers_per_block: Option<serde_json::Value>,
    /// Must be null (no projection of the text embeddings).
    pub encoder_hid_dim: Option<usize>,
    /// Must be null.
    pub encoder_hid_dim_type: Option<String>,
    /// Used by diffusers as the NUMBER of heads when `num_attention_heads` is null (a
    /// long-standing naming quirk); head dim = channels / heads.
    pub attention_head_dim: PerBlock<usize>,
    /// Number of heads; when set it wins over `attention_head_dim`.
    pub num_attention_heads: Option<PerBlock<usize>>,
    /// Must be false.
    pub dual_cross_attention: bool,
    /// Linear instead of 1x1-conv `proj_in` / `proj_out` (SD 2.x).
    pub use_linear_projection: bool,
    /// Must be null (plain `nn.Embedding` class labels come from `num_class_embeds`).
    pub class_embed_type: Option<String>,
    /// Must be null (SDXL-style added conditioning is not implemented).
    pub addition_embed_type: Option<String>,
    /// Size of the class-label embedding table (the x4 upscaler: 1000 noise levels).
    pub num_class_embeds: Option<usize>,
    /// Attention scores in f32 for fp16 models: a no-op here, everything is f32.
    pub upcast_attention: bool,
    /// Must be `default` (time embedding added after `conv1`).
    pub resnet_time_scale_shift: String,
    /// Must be `positional`.
    pub time_embedding_type: String,
    /// Width of the time embedding; default 4 x `block_out_channels[0]`.
    pub time_embedding_dim: Option<usize>,
    /// Must be null.
    pub time_embedding_act_fn: Option<String>,
    /// Must be null.
    pub timestep_post_act: Option<String>,
    /// Must be null (LCM-style guidance embedding is not implemented).
    pub time_cond_proj_dim: Option<usize>,
    /// Kernel size of `conv_in`.
    pub conv_in_kernel: usize,
    /// Kernel size of `conv_out`.
    pub conv_out_kernel: usize,
    /// Must be `default`.
    pub attention_type: String,
    /// Must be false (the class embedding is added to the time embedding).
    pub class_embeddings_concat: bool,
    /// Ignored: diffusers only uses it for `UNetMidBlock2DSimpleCrossAttn`.
    pub mid_block_only_cross_attention: Option<bool>,
    /// Must be null.
    pub cross_attention_norm: Option<String>,
}

impl Default for UNetConfig {
    /// diffusers' defaults (the `UNet2DConditionModel.__init__` keyword defaults).
    fn default() -> Self {
        let strings = |names: &[&str]| names.iter().map(|s| s.to_string()).collect();
        Self {
            sample_size: None,
            in_channels: 4,
            out_channels: 4,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: strings(&[
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            ]),
            mid_block_type: Some("UNetMidBlock2DCrossAttn".to_string()),
            up_block_types: strings(&[
                "UpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
            ]),
            only_cross_attention: PerBlock::All(false),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: PerBlock::All(2),
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            dropout: 0.0,
            act_fn: "silu".to_string(),
            norm_num_groups: Some(32),
            norm_eps: 1e-5,
            cross_attention_dim: PerBlock::All(1280),
            transformer_layers_per_block: PerBlock::All(1),
            reverse_transformer_layers_per_block: None,
            encoder_hid_dim: None,
            encoder_hid_dim_type: None,
            attention_head_dim: PerBlock::All(8),
            num_attention_heads: None,
            dual_cross_attention: false,
            use_linear_projection: false,
            class_embed_type: None,
            addition_embed_type: None,
            num_class_embeds: None,
            upcast_attention: false,
            resnet_time_scale_shift: "default".to_string(),
            time_embedding_type: "positional".to_string(),
            time_embedding_dim: None,
            time_embedding_act_fn: None,
            timestep_post_act: None,
            time_cond_proj_dim: None,
            conv_in_kernel: 3,
            conv_out_kernel: 3,
            attention_type: "default".to_string(),
            class_embeddings_concat: false,
            mid_block_only_cross_attention: None,
            cross_attention_norm: None,
        }
    }
}

/// A config key this module cannot honour, and why.
struct ConfigIssue {
    key: &'static str,
    message: String,
}

fn issue(key: &'static str, message: impl Into<String>) -> Option<ConfigIssue> {
    Some(ConfigIssue {
        key,
        message: message.into(),
    })
}

const DOWN_TYPES: [&str; 2] = ["CrossAttnDownBlock2D", "DownBlock2D"];
const UP_TYPES: [&str; 2] = ["CrossAttnUpBlock2D", "UpBlock2D"];
const MID_TYPE: &str = "UNetMidBlock2DCrossAttn";

impl UNetConfig {
    /// Checks that the config describes a UNet this module implements; the error names
    /// the offending key.
    pub fn validate(&self) -> Result<()> {
        match self.first_issue() {
            None => Ok(()),
            Some(i) => Err(ModelError::Invalid(format!(
                "UNet config key `{}`: {}",
                i.key, i.message
            ))),
        }
    }

    fn first_issue(&self) -> Option<ConfigIssue> {
        let levels = self.block_out_channels.len();
        if levels == 0 {
            return issue("block_out_channels", "is empty");
        }
        if self.block_out_channels.contains(&0) {
            return issue("block_out_channels", "has a zero entry");
        }
        if self.in_channels == 0 || self.out_channels == 0 {
            let key = if self.in_channels == 0 {
                "in_channels"
            } else {
                "out_channels"
            };
            return issue(key, "must be positive");
        }
        for (key, types, allowed) in [
            ("down_block_types", &self.down_block_types, DOWN_TYPES),
            ("up_block_types", &self.up_block_types, UP_TYPES),
        ] {
            if types.len() != levels {
                return issue(
                    key,
                    format!(
                        "has {} entries but block_out_channels has {levels}",
                        types.len()
                    ),
                );
            }
            if let Some(t) = types.iter().find(|t| !allowed.contains(&t.as_str())) {
                return issue(
                    key,
                    format!("block type `{t}` is not supported (only {allowed:?})"),
                );
            }
        }
        if let Some(t) = self.mid_block_type.as_deref().filter(|t| *t != MID_TYPE) {
            return issue(
                "mid_block_type",
                format!("`{t}` is not supported (only {MID_TYPE} or null)"),
            );
        }
        let per_block_lengths = [
            (
                "only_cross_attention",
                self.only_cross_attention.len_matches(levels),
            ),
            (
                "layers_per_block",
                self.layers_per_block.len_matches(levels),
            ),
            (
                "cross_attention_dim",
                self.cross_attention_dim.len_matches(levels),
            ),
            (
                "transformer_layers_per_block",
                self.transformer_layers_per_block.len_matches(levels),
            ),
            (
                "attention_head_dim",
                self.attention_head_dim.len_matches(levels),
            ),
            (
                "num_attention_heads",
                self.num_attention_heads
                    .as_ref()
                    .is_none_or(|h| h.len_matches(levels)),
            ),
        ];
        if let Some((key, _)) = per_block_lengths.iter().find(|(_, ok)| !ok) {
            return issue(key, format!("needs one entry per block ({levels})"));
        }
        let heads = self.heads();
        for level in 0..levels {
            if heads.get(level) == Some(0) {
                let key = if self.num_attention_heads.is_some() {
                    "num_attention_heads"
                } else {
                    "attention_head_dim"
                };
                return issue(key, "must be positive");
            }
            if self.layers_per_block.get(level) == Some(0) {
                return issue("layers_per_block", "must be positive");
            }
            if self.transformer_layers_per_block.get(level) == Some(0) {
                return issue("transformer_layers_per_block", "must be positive");
            }
        }
        match self.norm_num_groups {
            None => return issue("norm_num_groups", "null (no output norm) is not supported"),
            Some(0) => return issue("norm_num_groups", "must be positive"),
            Some(_) => {}
        }
        if !matches!(self.act_fn.as_str(), "silu" | "swish") {
            return issue(
                "act_fn",
                format!("`{}` is not supported (only silu)", self.act_fn),
            );
        }
        for (key, kernel) in [
            ("conv_in_kernel", self.conv_in_kernel),
            ("conv_out_kernel", self.conv_out_kernel),
        ] {
            if kernel % 2 == 0 {
                return issue(
                    key,
                    format!("{kernel}: only odd kernel sizes are supported"),
                );
            }
        }
        if self.resnet_time_scale_shift != "default" {
            return issue(
                "resnet_time_scale_shift",
                format!(
                    "`{}` is not supported (only default)",
                    self.resnet_time_scale_shift
                ),
            );
        }
        if self.time_embedding_type != "positional" {
            return issue(
                "time_embedding_type",
                format!(
                    "`{}` is not supported (only positional)",
                    self.time_embedding_type
                ),
            );
        }
        if self.attention_type != "default" {
            return issue(
                "attention_type",
                format!("`{}` is not supported (only default)", self.attention_type),
            );
        }
        if self.dual_cross_attention {
            return issue("dual_cross_attention", "true is not supported");
        }
        if self.class_embeddings_concat {
            return issue("class_embeddings_concat", "true is not supported");
        }
        if self.time_embedding_dim == Some(0) {
            return issue("time_embedding_dim", "must be positive");
        }
        if self.num_class_embeds == Some(0) {
            return issue("num_class_embeds", "must be positive");
        }
        let must_be_null = [
            ("addition_embed_type", self.addition_embed_type.is_some()),
            ("time_cond_proj_dim", self.time_cond_proj_dim.is_some()),
            ("class_embed_type", self.class_embed_type.is_some()),
            ("encoder_hid_dim", self.encoder_hid_dim.is_some()),
            ("encoder_hid_dim_type", self.encoder_hid_dim_type.is_some()),
            (
                "time_embedding_act_fn",
                self.time_embedding_act_fn.is_some(),
            ),
            ("timestep_post_act", self.timestep_post_act.is_some()),
            ("cross_attention_norm", self.cross_attention_norm.is_some()),
            (
                "reverse_transformer_layers_per_block",
                self.reverse_transformer_layers_per_block
                    .as_ref()
                    .is_some_and(|v| !v.is_null()),
            ),
        ];
        if let Some((key, _)) = must_be_null.iter().find(|(_, set)| *set) {
            return issue(key, "is not supported (must be null)");
        }
        None
    }

    /// Heads per down level: `num_attention_heads`, else `attention_head_dim` (diffusers'
    /// `num_attention_heads or attention_head_dim`).
    fn heads(&self) -> &PerBlock<usize> {
        self.num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim)
    }

    /// Width of the time embedding fed to every resnet.
    fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim
            .unwrap_or(4 * self.block_out_channels[0])
    }

    /// The attention settings of down level `level` (also used reversed for up levels).
    fn attention_settings(&self, level: usize) -> Option<AttentionSettings> {
        Some(AttentionSettings {
            heads: self.heads().get(level)?,
            cross_attention_dim: self.cross_attention_dim.get(level)?,
            transformer_layers: self.transformer_layers_per_block.get(level)?,
            only_cross_attention: self.only_cross_attention.get(level)?,
        })
    }
}

/// Sinusoidal time embedding, as diffusers' `get_timestep_embedding` computes it in f32
/// (same operations in the same order, so the rounding matches too).
fn timestep_embedding(
    timestep: f64,
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let half = dim / 2;
    let t = timestep as f32;
    let neg_log_period = -(10000f64.ln()) as f32;
    let divisor = (half as f64 - freq_shift) as f32;
    let args: Vec<f32> = (0..half)
        .map(|i| t * ((neg_log_period * i as f32) / divisor).exp())
        .collect();
    let sin = args.iter().map(|a| a.sin());
    let cos = args.iter().map(|a| a.cos());
    let mut values: Vec<f32> = if flip_sin_to_cos {
        cos.chain(sin).collect()
    } else {
        sin.chain(cos).collect()
    };
    // An odd width gets a zero last column (diffusers pads).
    values.resize(dim, 0.0);
    Tensor::from_vec(values, (1, dim), device)
}

/// diffusers `UNet2DConditionModel` for SD 1.x / 2.x / Turbo and the x4 upscaler.
#[derive(Debug, Clone)]
pub struct UNet2DConditionModel {
    config: UNetConfig,
    time_linear_1: Linear,
    time_linear_2: Linear,
    class_embedding: Option<Embedding>,
    conv_in: Conv2d,
    down_blocks: Vec<DownBlock>,
    mid_block: Option<MidBlock>,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl UNet2DConditionModel {
    /// Builds the model from weights with diffusers names (`conv_in.weight`,
    /// `down_blocks.0.resnets.0.norm1.weight`, ...). Errors from `vb` (a missing or
    /// wrongly shaped tensor) come back as [`ModelError::Candle`]; [`Self::load`] names the
    /// file instead.
    pub fn new(vb: VarBuilder, cfg: &UNetConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self::build(vb, cfg.clone())?)
    }

    /// Loads a diffusers `unet/` folder: `config.json` and
    /// `diffusion_pytorch_model[.fp16].safetensors` (fp16 converted to f32).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config_path = dir.join("config.json");
        let cfg: UNetConfig = read_config(&config_path)?;
        if let Some(i) = cfg.first_issue() {
            return Err(ModelError::Config {
                path: config_path,
                key: i.key.to_string(),
                message: i.message,
            });
        }
        let weights = find_weights(dir)?;
        let vb = mmap_var_builder(std::slice::from_ref(&weights), device)?;
        Self::build(vb, cfg).map_err(in_file(&weights))
    }

    /// Builds a validated config.
    fn build(vb: VarBuilder, cfg: UNetConfig) -> candle_core::Result<Self> {
        let channels = &cfg.block_out_channels;
        let levels = channels.len();
        let groups = cfg.norm_num_groups.unwrap_or(32);
        let temb_channels = cfg.time_embed_dim();
        let settings = BlockSettings {
            temb_channels,
            groups,
            eps: cfg.norm_eps,
            use_linear_projection: cfg.use_linear_projection,
            downsample_padding: cfg.downsample_padding,
        };
        // `first_issue` checked every per-block list against `levels`.
        let invalid = || candle_core::Error::Msg("UNet config not validated".to_string());
        let attention_at = |level: usize| cfg.attention_settings(level).ok_or_else(invalid);
        let layers_at = |level: usize| cfg.layers_per_block.get(level).ok_or_else(invalid);

        let time_linear_1 = candle_nn::linear(
            channels[0],
            temb_channels,
            vb.pp("time_embedding").pp("linear_1"),
        )?;
        let time_linear_2 = candle_nn::linear(
            temb_channels,
            temb_channels,
            vb.pp("time_embedding").pp("linear_2"),
        )?;
        let class_embedding = match cfg.num_class_embeds {
            Some(n) => Some(candle_nn::embedding(
                n,
                temb_channels,
                vb.pp("class_embedding"),
            )?),
            None => None,
        };
        let conv = |in_c, out_c, kernel: usize, name: &str| {
            let cfg = Conv2dConfig {
                padding: (kernel - 1) / 2,
                ..Default::default()
            };
            candle_nn::conv2d(in_c, out_c, kernel, cfg, vb.pp(name))
        };
        let conv_in = conv(cfg.in_channels, channels[0], cfg.conv_in_kernel, "conv_in")?;

        let mut down_blocks = Vec::with_capacity(levels);
        for (level, kind) in cfg.down_block_types.iter().enumerate() {
            let in_c = channels[level.saturating_sub(1)];
            let attention = attention_at(level)?;
            down_blocks.push(DownBlock::new(
                vb.pp("down_blocks").pp(level),
                (in_c, channels[level]),
                layers_at(level)?,
                (kind == "CrossAttnDownBlock2D").then_some(&attention),
                level + 1 < levels,
                &settings,
            )?);
        }

        let deepest = channels[levels - 1];
        let mid_block = match cfg.mid_block_type {
            Some(_) => {
                let last = |p: &PerBlock<usize>| p.last().ok_or_else(invalid);
                let attention = AttentionSettings {
                    heads: last(cfg.heads())?,
                    cross_attention_dim: last(&cfg.cross_attention_dim)?,
                    transformer_layers: last(&cfg.transformer_layers_per_block)?,
                    // diffusers does not pass `only_cross_attention` to this block type.
                    only_cross_attention: false,
                };
                Some(MidBlock::new(
                    vb.pp("mid_block"),
                    deepest,
                    cfg.mid_block_scale_factor,
                    &attention,
                    &settings,
                )?)
            }
            None => None,
        };

        let mut up_blocks = Vec::with_capacity(levels);
        let mut prev_output_channels = deepest;
        for (i, kind) in cfg.up_block_types.iter().enumerate() {
            // Up block i mirrors down level `levels - 1 - i`: every per-block list reversed.
            let level = levels - 1 - i;
            let up_channels = UpChannels {
                in_channels: channels[level.saturating_sub(1)],
                out_channels: channels[level],
                prev_output_channels,
            };
            let attention = attention_at(level)?;
            up_blocks.push(UpBlock::new(
                vb.pp("up_blocks").pp(i),
                up_channels,
                layers_at(level)? + 1,
                (kind == "CrossAttnUpBlock2D").then_some(&attention),
                i + 1 < levels,
                &settings,
            )?);
            prev_output_channels = channels[level];
        }

        let conv_norm_out =
            candle_nn::group_norm(groups, channels[0], cfg.norm_eps, vb.pp("conv_norm_out"))?;
        let conv_out = conv(
            channels[0],
            cfg.out_channels,
            cfg.conv_out_kernel,
            "conv_out",
        )?;
        Ok(Self {
            config: cfg,
            time_linear_1,
            time_linear_2,
            class_embedding,
            conv_in,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
        })
    }

    /// The config the model was built from.
    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Channels `forward` expects in `sample` (4, or 7 for the x4 upscaler).
    pub fn in_channels(&self) -> usize {
        self.config.in_channels
    }

    /// Predicts the noise (or v) for `sample` (B, in_channels, H, W) at `timestep` (the
    /// same for the whole batch) given `encoder_hidden_states` (B, tokens,
    /// cross_attention_dim). Any H, W works; multiples of 2^(levels-1) are the usual case.
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: f64,
        encoder_hidden_states: &Tensor,
    ) -> Result<Tensor> {
        self.forward_with_class_labels(sample, timestep, encoder_hidden_states, None)
    }

    /// [`Self::forward`] with class labels (B,) for models with `num_class_embeds` (the x4
    /// upscaler's noise level). Models without a class embedding ignore them, as diffusers.
    pub fn forward_with_class_labels(
        &self,
        sample: &Tensor,
        timestep: f64,
        encoder_hidden_states: &Tensor,
        class_labels: Option<&Tensor>,
    ) -> Result<Tensor> {
        let batch = self.check_inputs(sample, timestep, encoder_hidden_states)?;
        let device = sample.device();
        let context = encoder_hidden_states.to_dtype(DType::F32)?;
        let sample = sample.to_dtype(DType::F32)?;

        let t_emb = timestep_embedding(
            timestep,
            self.config.block_out_channels[0],
            self.config.flip_sin_to_cos,
            self.config.freq_shift,
            device,
        )?;
        // One row for the whole batch: the resnets broadcast it.
        let mut temb = self
            .time_linear_2
            .forward(&self.time_linear_1.forward(&t_emb)?.silu()?)?;
        if let Some(table) = &self.class_embedding {
            let labels = self.class_indices(class_labels, batch)?;
            temb = temb.broadcast_add(&table.forward(&labels)?)?;
        }

        let sample = if self.config.center_input_sample {
            sample.affine(2.0, -1.0)?
        } else {
            sample
        };
        let mut h = self.conv_in.forward(&sample)?;
        let mut skips = vec![h.clone()];
        for block in &self.down_blocks {
            let (out, states) = block.forward(&h, &temb, &context)?;
            h = out;
            skips.extend(states);
        }
        if let Some(mid) = &self.mid_block {
            h = mid.forward(&h, &temb, &context)?;
        }
        for block in &self.up_blocks {
            let n = block.num_skips();
            let block_skips = skips.split_off(skips.len().saturating_sub(n));
            // Up-sample to the size of the next skip connection (diffusers'
            // `upsample_size`), which also handles sizes not divisible by 2^levels.
            let upsample_hw = match skips.last() {
                Some(next) => {
                    let (_, _, height, width) = next.dims4()?;
                    Some((height, width))
                }
                None => None,
            };
            h = block.forward(&h, &block_skips, &temb, &context, upsample_hw)?;
        }
        let h = self.conv_norm_out.forward(&h)?.silu()?;
        Ok(self.conv_out.forward(&h)?)
    }

    /// Checks the shapes a caller controls; returns the batch size.
    fn check_inputs(&self, sample: &Tensor, timestep: f64, context: &Tensor) -> Result<usize> {
        let (batch, channels, height, width) = sample.dims4().map_err(|_| {
            ModelError::Invalid(format!(
                "UNet sample must be (batch, channels, height, width), got {:?}",
                sample.dims()
            ))
        })?;
        if channels != self.config.in_channels || height == 0 || width == 0 || batch == 0 {
            return Err(ModelError::Invalid(format!(
                "UNet sample {:?}: expected {} channels and a non-empty batch and image",
                sample.dims(),
                self.config.in_channels
            )));
        }
        if !timestep.is_finite() {
            return Err(ModelError::Invalid(format!(
                "UNet timestep {timestep} is not finite"
            )));
        }
        let (ctx_batch, tokens, width) = context.dims3().map_err(|_| {
            ModelError::Invalid(format!(
                "encoder_hidden_states must be (batch, tokens, dim), got {:?}",
                context.dims()
            ))
        })?;
        let levels = self.config.block_out_channels.len();
        let width_ok = (0..levels).all(|l| self.config.cross_attention_dim.get(l) == Some(width));
        if ctx_batch != batch || tokens == 0 || !width_ok {
            return Err(ModelError::Invalid(format!(
                "encoder_hidden_states {:?} does not fit sample {:?}: expected batch {batch}, \
                 width {:?}",
                context.dims(),
                sample.dims(),
                self.config.cross_attention_dim
            )));
        }
        Ok(batch)
    }

    /// The class labels as u32 indices (B,), checked against the table size.
    fn class_indices(&self, labels: Option<&Tensor>, batch: usize) -> Result<Tensor> {
        let table_size = self.config.num_class_embeds.unwrap_or(0);
        let labels = labels.ok_or_else(|| {
            ModelError::Invalid(
                "this UNet has a class embedding (num_class_embeds): class_labels are required"
                    .to_string(),
            )
        })?;
        let values: Vec<f64> = labels.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
        if values.len() != batch {
            return Err(ModelError::Invalid(format!(
                "class_labels {:?}: expected one label per sample ({batch})",
                labels.dims()
            )));
        }
        let indices = values
            .iter()
            .map(|&v| {
                if v >= 0.0 && v.fract() == 0.0 && v < table_size as f64 {
                    Ok(v as u32)
                } else {
                    Err(ModelError::Invalid(format!(
                        "class label {v} is not an integer in 0..{table_size}"
                    )))
                }
            })
            .collect::<Result<Vec<u32>>>()?;
        Ok(Tensor::from_vec(indices, batch, labels.device())?)
    }
}
