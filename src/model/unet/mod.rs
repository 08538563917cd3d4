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
//!
//! The model is here; its config in `config.rs`; its parts by concern in `resnet.rs`
//! (resnets, down/up samplers), `attention.rs` (sliced attention and its softmax),
//! `transformer.rs` (the spatial transformer) and `blocks.rs` (down / mid / up blocks).

mod attention;
mod blocks;
mod config;
mod conv;
mod resnet;
mod transformer;

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, GroupNorm, Linear, VarBuilder};

use self::blocks::{DownBlock, MidBlock, UpBlock, UpChannels};
use self::config::{AttentionSettings, BlockSettings};
use self::conv::SameConv;
use crate::model::seeded::seeded_var_builder;
use crate::model::weights::{find_weights, in_file, mmap_var_builder, read_config};
use crate::model::{ModelError, Result};

pub use self::config::{PerBlock, UNetConfig};

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
    conv_in: SameConv,
    down_blocks: Vec<DownBlock>,
    mid_block: Option<MidBlock>,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: SameConv,
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

    /// A model of `cfg`'s architecture with seeded random weights (each tensor drawn from
    /// `seed` and its name, at PyTorch-like scales): for benchmarks at the real sizes
    /// without multi-GB files; the weights do not change the work.
    pub fn seeded(cfg: &UNetConfig, seed: u64) -> Result<Self> {
        Self::new(seeded_var_builder(seed, &Device::Cpu), cfg)
    }

    /// Loads a diffusers `unet/` folder: `config.json` and
    /// `diffusion_pytorch_model[.fp16].safetensors` (fp16 converted to f32).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Self::load_patched(dir, device, |vb| vb)
    }

    /// [`Self::load`] with the weights read through `patch` (LoRA deltas added).
    pub fn load_patched(
        dir: &Path,
        device: &Device,
        patch: impl FnOnce(VarBuilder<'static>) -> VarBuilder<'static>,
    ) -> Result<Self> {
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
        let vb = patch(mmap_var_builder(std::slice::from_ref(&weights), device)?);
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
            SameConv::new(vb.pp(name), in_c, out_c, kernel)
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
