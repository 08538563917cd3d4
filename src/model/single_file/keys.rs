//! Where each weight the model builders ask for (by its diffusers name) is in an original
//! LDM / CompVis single-file checkpoint: the inverse of diffusers' `convert_ldm_*_checkpoint`
//! functions, computed from the component's config (the block numbering of the original
//! layout depends on the levels and resnets per level).

use crate::model::unet::UNetConfig;

/// A tensor of the checkpoint: its key, and the rows of it to take (OpenCLIP stores the
/// query, key and value projections as one `in_proj` tensor; `Some(k)` takes the k-th third
/// along the first dimension).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub key: String,
    pub third: Option<usize>,
}

impl Source {
    fn whole(key: String) -> Self {
        Self { key, third: None }
    }
}

fn join(head: &str, rest: &[&str]) -> String {
    if rest.is_empty() {
        head.to_string()
    } else {
        format!("{head}.{}", rest.join("."))
    }
}

/// `norm1`, `conv1`, ... of a UNet resnet under their original names.
fn unet_resnet(head: String, rest: &[&str]) -> Option<String> {
    let (first, tail) = rest.split_first()?;
    let original = match *first {
        "norm1" => "in_layers.0",
        "conv1" => "in_layers.2",
        "time_emb_proj" => "emb_layers.1",
        "norm2" => "out_layers.0",
        "conv2" => "out_layers.3",
        "conv_shortcut" => "skip_connection",
        _ => return None,
    };
    Some(join(&format!("{head}.{original}"), tail))
}

/// The checkpoint key (under `model.diffusion_model.`) of the UNet weight diffusers names
/// `name`, for a UNet described by `cfg`; `None` for a name the layout has no place for.
pub fn unet_key(name: &str, cfg: &UNetConfig) -> Option<String> {
    let parts: Vec<&str> = name.split('.').collect();
    let levels = cfg.block_out_channels.len();
    let resnets = |level: usize| cfg.layers_per_block.get(level);
    let key = match parts.as_slice() {
        ["time_embedding", "linear_1", rest @ ..] => join("time_embed.0", rest),
        ["time_embedding", "linear_2", rest @ ..] => join("time_embed.2", rest),
        ["conv_in", rest @ ..] => join("input_blocks.0.0", rest),
        ["conv_norm_out", rest @ ..] => join("out.0", rest),
        ["conv_out", rest @ ..] => join("out.2", rest),
        ["down_blocks", level, kind, index, rest @ ..] => {
            let level: usize = level.parse().ok()?;
            let index: usize = index.parse().ok()?;
            // input_blocks.0 is conv_in; each level holds its resnets, then its downsampler.
            let mut start = 1;
            for l in 0..level {
                start += resnets(l)? + 1;
            }
            match *kind {
                "resnets" => unet_resnet(format!("input_blocks.{}.0", start + index), rest)?,
                "attentions" => join(&format!("input_blocks.{}.1", start + index), rest),
                "downsamplers" if index == 0 => match rest {
                    ["conv", tail @ ..] => join(
                        &format!("input_blocks.{}.0.op", start + resnets(level)?),
                        tail,
                    ),
                    _ => return None,
                },
                _ => return None,
            }
        }
        ["mid_block", "resnets", index, rest @ ..] => match *index {
            "0" => unet_resnet("middle_block.0".into(), rest)?,
            "1" => unet_resnet("middle_block.2".into(), rest)?,
            _ => return None,
        },
        ["mid_block", "attentions", "0", rest @ ..] => join("middle_block.1", rest),
        ["up_blocks", block, kind, index, rest @ ..] => {
            let block: usize = block.parse().ok()?;
            let index: usize = index.parse().ok()?;
            // Up block b mirrors down level (levels - 1 - b) with one more resnet.
            let up_resnets = |b: usize| Some(resnets(levels.checked_sub(b + 1)?)? + 1);
            let mut start = 0;
            for b in 0..block {
                start += up_resnets(b)?;
            }
            match *kind {
                "resnets" => unet_resnet(format!("output_blocks.{}.0", start + index), rest)?,
                "attentions" => join(&format!("output_blocks.{}.1", start + index), rest),
                "upsamplers" if index == 0 => match rest {
                    ["conv", tail @ ..] => {
                        let with_attention = cfg
                            .up_block_types
                            .get(block)
                            .is_some_and(|t| t.starts_with("CrossAttn"));
                        let slot = if with_attention { 2 } else { 1 };
                        let last = start + up_resnets(block)? - 1;
                        join(&format!("output_blocks.{last}.{slot}.conv"), tail)
                    }
                    _ => return None,
                },
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(format!("model.diffusion_model.{key}"))
}

/// A VAE resnet's layer under its original name.
fn vae_resnet(head: String, rest: &[&str]) -> Option<String> {
    let (first, tail) = rest.split_first()?;
    let original = match *first {
        "conv_shortcut" => "nin_shortcut",
        "norm1" | "conv1" | "norm2" | "conv2" => first,
        _ => return None,
    };
    Some(join(&format!("{head}.{original}"), tail))
}

/// The mid block of either half of the VAE, under its original names.
fn vae_mid(half: &str, rest: &[&str]) -> Option<String> {
    Some(match rest {
        ["resnets", "0", tail @ ..] => vae_resnet(format!("{half}.mid.block_1"), tail)?,
        ["resnets", "1", tail @ ..] => vae_resnet(format!("{half}.mid.block_2"), tail)?,
        ["attentions", "0", layer, tail @ ..] => {
            let (original, tail) = match (*layer, tail) {
                ("group_norm", tail) => ("norm", tail),
                ("to_q" | "query", tail) => ("q", tail),
                ("to_k" | "key", tail) => ("k", tail),
                ("to_v" | "value", tail) => ("v", tail),
                ("to_out", ["0", tail @ ..]) => ("proj_out", tail),
                ("proj_attn", tail) => ("proj_out", tail),
                _ => return None,
            };
            join(&format!("{half}.mid.attn_1.{original}"), tail)
        }
        _ => return None,
    })
}

/// The checkpoint key (under `first_stage_model.`) of the AutoencoderKL weight diffusers
/// names `name`, for a VAE of `blocks` blocks (the decoder's up blocks are numbered the
/// other way round in the original layout).
pub fn vae_key(name: &str, blocks: usize) -> Option<String> {
    let parts: Vec<&str> = name.split('.').collect();
    let key = match parts.as_slice() {
        [conv @ ("quant_conv" | "post_quant_conv"), rest @ ..] => join(conv, rest),
        [half @ ("encoder" | "decoder"), "conv_norm_out", rest @ ..] => {
            join(&format!("{half}.norm_out"), rest)
        }
        [half @ ("encoder" | "decoder"), conv @ ("conv_in" | "conv_out"), rest @ ..] => {
            join(&format!("{half}.{conv}"), rest)
        }
        [half @ ("encoder" | "decoder"), "mid_block", rest @ ..] => vae_mid(half, rest)?,
        ["encoder", "down_blocks", i, "resnets", j, rest @ ..] => {
            vae_resnet(format!("encoder.down.{i}.block.{j}"), rest)?
        }
        ["encoder", "down_blocks", i, "downsamplers", "0", "conv", rest @ ..] => {
            join(&format!("encoder.down.{i}.downsample.conv"), rest)
        }
        ["decoder", "up_blocks", i, rest @ ..] => {
            let i: usize = i.parse().ok()?;
            let original = blocks.checked_sub(i + 1)?;
            match rest {
                ["resnets", j, tail @ ..] => {
                    vae_resnet(format!("decoder.up.{original}.block.{j}"), tail)?
                }
                ["upsamplers", "0", "conv", tail @ ..] => {
                    join(&format!("decoder.up.{original}.upsample.conv"), tail)
                }
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(format!("first_stage_model.{key}"))
}

/// How a checkpoint stores its text encoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextLayout {
    /// SD 1.x: transformers' `CLIPTextModel` keys under `cond_stage_model.transformer.`.
    Transformers,
    /// SD 1.x saved with transformers before its `text_model.` level (early checkpoints):
    /// `cond_stage_model.transformer.encoder.*`, `.embeddings.*`, `.final_layer_norm.*`.
    TransformersFlat,
    /// SD 2.x: OpenCLIP's keys under `cond_stage_model.model.` (fused q/k/v projections).
    OpenClip,
}

/// Where the text-encoder weight transformers names `name` (without its `text_model.`
/// prefix) is in the checkpoint.
pub fn clip_source(name: &str, layout: TextLayout) -> Option<Source> {
    let name = name.strip_prefix("text_model.").unwrap_or(name);
    match layout {
        TextLayout::Transformers => Some(Source::whole(format!(
            "cond_stage_model.transformer.text_model.{name}"
        ))),
        TextLayout::TransformersFlat => Some(Source::whole(format!(
            "cond_stage_model.transformer.{name}"
        ))),
        TextLayout::OpenClip => open_clip_source(name),
    }
}

fn open_clip_source(name: &str) -> Option<Source> {
    let parts: Vec<&str> = name.split('.').collect();
    let prefix = "cond_stage_model.model";
    let whole = |key: String| Some(Source::whole(format!("{prefix}.{key}")));
    match parts.as_slice() {
        ["embeddings", "token_embedding", "weight"] => whole("token_embedding.weight".into()),
        ["embeddings", "position_embedding", "weight"] => whole("positional_embedding".into()),
        ["final_layer_norm", rest @ ..] => whole(join("ln_final", rest)),
        ["encoder", "layers", i, rest @ ..] => {
            let block = format!("transformer.resblocks.{i}");
            match rest {
                ["self_attn", projection, kind @ ("weight" | "bias")] => {
                    let third = match *projection {
                        "q_proj" => 0,
                        "k_proj" => 1,
                        "v_proj" => 2,
                        "out_proj" => return whole(format!("{block}.attn.out_proj.{kind}")),
                        _ => return None,
                    };
                    Some(Source {
                        key: format!("{prefix}.{block}.attn.in_proj_{kind}"),
                        third: Some(third),
                    })
                }
                ["layer_norm1", tail @ ..] => whole(join(&format!("{block}.ln_1"), tail)),
                ["layer_norm2", tail @ ..] => whole(join(&format!("{block}.ln_2"), tail)),
                ["mlp", "fc1", tail @ ..] => whole(join(&format!("{block}.mlp.c_fc"), tail)),
                ["mlp", "fc2", tail @ ..] => whole(join(&format!("{block}.mlp.c_proj"), tail)),
                _ => None,
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd15_unet() -> UNetConfig {
        serde_json::from_value(serde_json::json!({
            "block_out_channels": [320, 640, 1280, 1280],
            "layers_per_block": 2,
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                 "CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                               "CrossAttnUpBlock2D"],
        }))
        .unwrap()
    }

    #[test]
    fn sd15_unet_keys_follow_the_original_numbering() {
        let cfg = sd15_unet();
        let key = |name: &str| unet_key(name, &cfg).unwrap();
        assert_eq!(
            key("conv_in.weight"),
            "model.diffusion_model.input_blocks.0.0.weight"
        );
        assert_eq!(
            key("down_blocks.1.resnets.1.conv2.weight"),
            "model.diffusion_model.input_blocks.5.0.out_layers.3.weight"
        );
        assert_eq!(
            key("down_blocks.2.attentions.0.proj_in.weight"),
            "model.diffusion_model.input_blocks.7.1.proj_in.weight"
        );
        assert_eq!(
            key("down_blocks.0.downsamplers.0.conv.bias"),
            "model.diffusion_model.input_blocks.3.0.op.bias"
        );
        assert_eq!(
            key("mid_block.resnets.1.time_emb_proj.weight"),
            "model.diffusion_model.middle_block.2.emb_layers.1.weight"
        );
        // Up block 0 has no attention: its upsampler is `.1`; the others' `.2`.
        assert_eq!(
            key("up_blocks.0.upsamplers.0.conv.weight"),
            "model.diffusion_model.output_blocks.2.1.conv.weight"
        );
        assert_eq!(
            key("up_blocks.1.upsamplers.0.conv.weight"),
            "model.diffusion_model.output_blocks.5.2.conv.weight"
        );
        assert_eq!(
            key("up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_k.weight"),
            "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight"
        );
        assert_eq!(
            key("up_blocks.2.resnets.0.conv_shortcut.weight"),
            "model.diffusion_model.output_blocks.6.0.skip_connection.weight"
        );
        assert_eq!(key("conv_out.bias"), "model.diffusion_model.out.2.bias");
        assert_eq!(unet_key("up_blocks.9.resnets.0.norm1.weight", &cfg), None);
    }

    #[test]
    fn vae_keys_reverse_the_decoder_blocks() {
        assert_eq!(
            vae_key("decoder.up_blocks.0.resnets.2.conv1.weight", 4).unwrap(),
            "first_stage_model.decoder.up.3.block.2.conv1.weight"
        );
        assert_eq!(
            vae_key("decoder.up_blocks.1.upsamplers.0.conv.weight", 4).unwrap(),
            "first_stage_model.decoder.up.2.upsample.conv.weight"
        );
        assert_eq!(
            vae_key("encoder.down_blocks.1.resnets.0.conv_shortcut.bias", 4).unwrap(),
            "first_stage_model.encoder.down.1.block.0.nin_shortcut.bias"
        );
        assert_eq!(
            vae_key("decoder.mid_block.attentions.0.to_out.0.weight", 4).unwrap(),
            "first_stage_model.decoder.mid.attn_1.proj_out.weight"
        );
        assert_eq!(
            vae_key("encoder.conv_norm_out.weight", 4).unwrap(),
            "first_stage_model.encoder.norm_out.weight"
        );
        assert_eq!(
            vae_key("post_quant_conv.bias", 4).unwrap(),
            "first_stage_model.post_quant_conv.bias"
        );
    }

    #[test]
    fn open_clip_splits_the_fused_projections() {
        let source = clip_source(
            "encoder.layers.3.self_attn.k_proj.weight",
            TextLayout::OpenClip,
        )
        .unwrap();
        assert_eq!(
            source.key,
            "cond_stage_model.model.transformer.resblocks.3.attn.in_proj_weight"
        );
        assert_eq!(source.third, Some(1));
        assert_eq!(
            clip_source("final_layer_norm.weight", TextLayout::OpenClip)
                .unwrap()
                .key,
            "cond_stage_model.model.ln_final.weight"
        );
        assert_eq!(
            clip_source(
                "text_model.encoder.layers.0.mlp.fc1.weight",
                TextLayout::Transformers
            )
            .unwrap()
            .key,
            "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight"
        );
    }
}
