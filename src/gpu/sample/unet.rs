//! diffusers' `UNet2DConditionModel` on the GPU kernels: the same blocks in the same order
//! as `model::unet` (which is tested against diffusers), with the resnets' time embedding
//! and conv1 bias folded into one per-channel add and the 1x1 projections of the
//! transformers reading and writing NCHW directly.
//!
//! What runs here: SD 1.x, 2.x and Turbo UNets (the configs `model::unet` accepts, without
//! a class embedding, with 3x3 `conv_in` / `conv_out` and no `center_input_sample`). Others
//! are refused by [`GpuUNet::supports`] and sample on the CPU.

use candle_nn::VarBuilder;

use super::layers::{dims4, AttentionSizes, Resnet, Shared, Transformer};
use super::weights::{self, Affine};
use crate::gpu::nn::{Conv3x3Opts, Conv3x3Weights, GpuTensor, LinearWeights, Nn, Unary};
use crate::gpu::GpuError;
use crate::model::{ModelError, Result, UNetConfig};

/// A down block: resnets (each followed by a transformer in a cross-attention block), then
/// the stride-2 convolution.
struct Down {
    layers: Vec<(Resnet, Option<Transformer>)>,
    downsample: Option<(Conv3x3Weights, (usize, usize))>,
}

/// An up block: resnets on the input concatenated with a skip (each followed by a
/// transformer in a cross-attention block), then nearest up-sampling fused into a 3x3 conv.
struct Up {
    layers: Vec<(Resnet, Option<Transformer>)>,
    upsample: Option<Conv3x3Weights>,
}

/// The UNet's weights on the GPU, and how to run them.
pub struct GpuUNet {
    config: UNetConfig,
    time_1: LinearWeights,
    time_2: LinearWeights,
    conv_in: Conv3x3Weights,
    down: Vec<Down>,
    mid: Option<(Resnet, Transformer, Resnet)>,
    up: Vec<Up>,
    norm_out: Affine,
    conv_out: Conv3x3Weights,
    groups: usize,
    eps: f32,
}

impl GpuUNet {
    /// Why `config` cannot run here, if it cannot.
    pub fn supports(config: &UNetConfig) -> std::result::Result<(), String> {
        config.validate().map_err(|e| e.to_string())?;
        if config.num_class_embeds.is_some() {
            return Err("class embeddings (the x4 upscaler's noise level) run on the CPU".into());
        }
        if config.conv_in_kernel != 3 || config.conv_out_kernel != 3 {
            return Err(format!(
                "conv_in_kernel {} / conv_out_kernel {}: only 3 runs on the GPU",
                config.conv_in_kernel, config.conv_out_kernel
            ));
        }
        if config.center_input_sample {
            return Err("center_input_sample runs on the CPU".into());
        }
        Ok(())
    }

    /// Uploads the weights under `vb` (diffusers names) for `config`.
    pub fn load(nn: &Nn, vb: &VarBuilder, config: &UNetConfig) -> Result<Self> {
        Self::supports(config).map_err(ModelError::Invalid)?;
        let channels = &config.block_out_channels;
        let levels = channels.len();
        let groups = config.norm_num_groups.unwrap_or(32);
        let temb_channels = config.time_embed_dim();
        let shared = Shared {
            temb_channels,
            groups,
            eps: config.norm_eps as f32,
        };
        let invalid = || ModelError::Invalid("UNet config not validated".into());
        let sizes = |level: usize, channels: usize| -> Result<AttentionSizes> {
            let heads = config.heads().get(level).ok_or_else(invalid)?;
            if heads == 0 || channels / heads == 0 {
                return Err(ModelError::Invalid(format!(
                    "{heads} attention heads do not fit {channels} channels"
                )));
            }
            Ok(AttentionSizes {
                heads,
                head_dim: channels / heads,
                cross_attention_dim: config.cross_attention_dim.get(level).ok_or_else(invalid)?,
                layers: config
                    .transformer_layers_per_block
                    .get(level)
                    .ok_or_else(invalid)?,
                only_cross_attention: config.only_cross_attention.get(level).ok_or_else(invalid)?,
            })
        };
        let linear = config.use_linear_projection;
        let transformer = |vb: &VarBuilder, c: usize, a: &AttentionSizes| {
            Transformer::load(nn, vb, c, a, linear, groups)
        };

        let tvb = vb.pp("time_embedding");
        let time_1 = weights::linear(nn, &tvb.pp("linear_1"), channels[0], temb_channels, true)?;
        let time_2 = weights::linear(nn, &tvb.pp("linear_2"), temb_channels, temb_channels, true)?;
        let conv_in =
            weights::conv3x3(nn, &vb.pp("conv_in"), config.in_channels, channels[0], None)?;

        let mut down = Vec::with_capacity(levels);
        for (level, kind) in config.down_block_types.iter().enumerate() {
            let bvb = vb.pp("down_blocks").pp(level);
            let out_c = channels[level];
            let attention = sizes(level, out_c)?;
            let cross = kind == "CrossAttnDownBlock2D";
            let num = config.layers_per_block.get(level).ok_or_else(invalid)?;
            let mut layers = Vec::with_capacity(num);
            for i in 0..num {
                let in_c = if i == 0 {
                    channels[level.saturating_sub(1)]
                } else {
                    out_c
                };
                let resnet = Resnet::load(nn, &bvb.pp("resnets").pp(i), in_c, out_c, 1.0, shared)?;
                let attn = match cross {
                    true => Some(transformer(&bvb.pp("attentions").pp(i), out_c, &attention)?),
                    false => None,
                };
                layers.push((resnet, attn));
            }
            let downsample = match level + 1 < levels {
                true => {
                    let conv = weights::conv3x3(
                        nn,
                        &bvb.pp("downsamplers").pp("0").pp("conv"),
                        out_c,
                        out_c,
                        None,
                    )?;
                    let p = config.downsample_padding;
                    let pad = if p == 0 { (0, 1) } else { (p, p) };
                    Some((conv, pad))
                }
                false => None,
            };
            down.push(Down { layers, downsample });
        }

        let deepest = channels[levels - 1];
        let mid = match config.mid_block_type {
            Some(_) => {
                let mvb = vb.pp("mid_block");
                let mut attention = sizes(levels - 1, deepest)?;
                // diffusers does not pass `only_cross_attention` to the mid block.
                attention.only_cross_attention = false;
                let scale = config.mid_block_scale_factor;
                let resnet = |i: usize| {
                    Resnet::load(
                        nn,
                        &mvb.pp("resnets").pp(i),
                        deepest,
                        deepest,
                        scale,
                        shared,
                    )
                };
                Some((
                    resnet(0)?,
                    transformer(&mvb.pp("attentions").pp("0"), deepest, &attention)?,
                    resnet(1)?,
                ))
            }
            None => None,
        };

        let mut up = Vec::with_capacity(levels);
        let mut prev_output = deepest;
        for (i, kind) in config.up_block_types.iter().enumerate() {
            let level = levels - 1 - i;
            let bvb = vb.pp("up_blocks").pp(i);
            let (in_c, out_c) = (channels[level.saturating_sub(1)], channels[level]);
            let attention = sizes(level, out_c)?;
            let cross = kind == "CrossAttnUpBlock2D";
            let num = config.layers_per_block.get(level).ok_or_else(invalid)? + 1;
            let mut layers = Vec::with_capacity(num);
            for j in 0..num {
                let skip = if j + 1 == num { in_c } else { out_c };
                let resnet_in = if j == 0 { prev_output } else { out_c };
                let resnet = Resnet::load(
                    nn,
                    &bvb.pp("resnets").pp(j),
                    resnet_in + skip,
                    out_c,
                    1.0,
                    shared,
                )?;
                let attn = match cross {
                    true => Some(transformer(&bvb.pp("attentions").pp(j), out_c, &attention)?),
                    false => None,
                };
                layers.push((resnet, attn));
            }
            let upsample = match i + 1 < levels {
                true => Some(weights::conv3x3(
                    nn,
                    &bvb.pp("upsamplers").pp("0").pp("conv"),
                    out_c,
                    out_c,
                    None,
                )?),
                false => None,
            };
            up.push(Up { layers, upsample });
            prev_output = out_c;
        }

        Ok(Self {
            config: config.clone(),
            time_1,
            time_2,
            conv_in,
            down,
            mid,
            up,
            norm_out: Affine::load(nn, &vb.pp("conv_norm_out"), channels[0])?,
            conv_out: weights::conv3x3(
                nn,
                &vb.pp("conv_out"),
                channels[0],
                config.out_channels,
                None,
            )?,
            groups,
            eps: config.norm_eps as f32,
        })
    }

    /// The config the weights are for.
    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// The model's prediction for `sample` (B, in_channels, H, W) at `timestep`, given
    /// `context` (B, tokens, cross_attention_dim). Everything stays on the device.
    pub fn forward(
        &self,
        nn: &Nn,
        sample: &GpuTensor,
        timestep: f64,
        context: &GpuTensor,
    ) -> std::result::Result<GpuTensor, GpuError> {
        let [batch, channels, _, _] = dims4(sample)?;
        if channels != self.config.in_channels || context.shape().first() != Some(&batch) {
            return Err(GpuError::BadInput(format!(
                "UNet input {:?} with context {:?}: expected {} channels and one context row \
                 per sample",
                sample.shape(),
                context.shape(),
                self.config.in_channels
            )));
        }
        let t_emb = nn.timestep_embedding(
            timestep as f32,
            self.config.block_out_channels[0],
            self.config.flip_sin_to_cos,
            self.config.freq_shift as f32,
        )?;
        let temb = nn.linear(
            &nn.unary(&nn.linear(&t_emb, &self.time_1, None)?, Unary::Silu)?,
            &self.time_2,
            None,
        )?;
        // Every resnet projects SiLU of the embedding.
        let temb = nn.unary(&temb, Unary::Silu)?;

        let mut h = nn.conv3x3(sample, &self.conv_in, &Conv3x3Opts::default())?;
        let mut skips = vec![h.clone()];
        for block in &self.down {
            for (resnet, attention) in &block.layers {
                h = resnet.forward(nn, &h, &temb)?;
                if let Some(a) = attention {
                    h = a.forward(nn, &h, context)?;
                }
                skips.push(h.clone());
            }
            if let Some((conv, pad)) = &block.downsample {
                let opts = Conv3x3Opts {
                    stride: 2,
                    pad: *pad,
                    ..Default::default()
                };
                h = nn.conv3x3(&h, conv, &opts)?;
                skips.push(h.clone());
            }
        }
        if let Some((first, attention, second)) = &self.mid {
            h = first.forward(nn, &h, &temb)?;
            h = attention.forward(nn, &h, context)?;
            h = second.forward(nn, &h, &temb)?;
        }
        for block in &self.up {
            for (resnet, attention) in &block.layers {
                let skip = skips.pop().ok_or_else(|| {
                    GpuError::BadInput("UNet up blocks ran out of skip connections".into())
                })?;
                h = nn.concat_channels(&h, &skip)?;
                h = resnet.forward(nn, &h, &temb)?;
                if let Some(a) = attention {
                    h = a.forward(nn, &h, context)?;
                }
            }
            if let Some(conv) = &block.upsample {
                // To the next skip's size (diffusers' `upsample_size`), else twice the size.
                let [_, _, hh, ww] = dims4(&h)?;
                let size = match skips.last() {
                    Some(next) => {
                        let [_, _, sh, sw] = dims4(next)?;
                        (sh, sw)
                    }
                    None => (2 * hh, 2 * ww),
                };
                let opts = Conv3x3Opts {
                    upsample_to: Some(size),
                    ..Default::default()
                };
                h = nn.conv3x3(&h, conv, &opts)?;
            }
        }
        let h = nn.group_norm(
            &h,
            self.groups,
            &self.norm_out.gamma,
            &self.norm_out.beta,
            self.eps,
            true,
        )?;
        nn.conv3x3(&h, &self.conv_out, &Conv3x3Opts::default())
    }
}
