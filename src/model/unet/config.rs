//! The diffusers `unet/config.json`, checked key by key against what this UNet implements,
//! and the per-level settings the blocks are built with.

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};

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
    pub(super) fn last(&self) -> Option<T> {
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
pub(super) struct ConfigIssue {
    pub(super) key: &'static str,
    pub(super) message: String,
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

    pub(super) fn first_issue(&self) -> Option<ConfigIssue> {
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
    pub fn heads(&self) -> &PerBlock<usize> {
        self.num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim)
    }

    /// Width of the time embedding fed to every resnet.
    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim
            .unwrap_or(4 * self.block_out_channels[0])
    }

    /// The attention settings of down level `level` (also used reversed for up levels).
    pub(super) fn attention_settings(&self, level: usize) -> Option<AttentionSettings> {
        Some(AttentionSettings {
            heads: self.heads().get(level)?,
            cross_attention_dim: self.cross_attention_dim.get(level)?,
            transformer_layers: self.transformer_layers_per_block.get(level)?,
            only_cross_attention: self.only_cross_attention.get(level)?,
        })
    }
}

/// Settings shared by every block of one UNet.
#[derive(Debug, Clone, Copy)]
pub(super) struct BlockSettings {
    /// Width of the time embedding each resnet projects from.
    pub temb_channels: usize,
    /// GroupNorm groups of resnets and transformers (`norm_num_groups`).
    pub groups: usize,
    /// GroupNorm epsilon of the resnets (`norm_eps`).
    pub eps: f64,
    /// Linear instead of 1x1-conv `proj_in` / `proj_out` in transformers.
    pub use_linear_projection: bool,
    /// Padding of the stride-2 down-sampling conv (0 pads right/bottom by one first).
    pub downsample_padding: usize,
}

/// The attention settings of one block level.
#[derive(Debug, Clone, Copy)]
pub(super) struct AttentionSettings {
    /// Number of heads (diffusers: `num_attention_heads or attention_head_dim`).
    pub heads: usize,
    /// Width of the `encoder_hidden_states` the cross-attention reads.
    pub cross_attention_dim: usize,
    /// `BasicTransformerBlock`s per `Transformer2DModel`.
    pub transformer_layers: usize,
    /// The first attention also reads the context instead of attending to itself.
    pub only_cross_attention: bool,
}
