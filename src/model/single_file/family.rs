//! What a single-file checkpoint holds, told from its keys and shapes: an SD 1.x or 2.x
//! model (and the facts its configs need), or another family refused by name.

use std::path::Path;

use super::keys::TextLayout;
use crate::model::{ModelError, Result};

/// The facts of an SD 1.x / 2.x checkpoint that its keys show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub text: TextLayout,
    /// Width of the text embeddings the UNet attends to (768 SD 1.x, 1024 SD 2.x).
    pub context_dim: usize,
    /// The transformers' `proj_in`/`proj_out` are linear layers (SD 2.x) rather than 1x1
    /// convolutions (SD 1.x).
    pub linear_projection: bool,
}

const UNET: &str = "model.diffusion_model.";

/// Classifies a checkpoint from its `(key, shape)` list; other families and incomplete
/// files are refused with a sentence that names the file and what it is.
pub fn classify(path: &Path, tensors: &[(String, Vec<usize>)]) -> Result<Layout> {
    let refuse = |what: String| Err(ModelError::bad_file(path, what));
    let has_prefix = |prefix: &str| tensors.iter().any(|(k, _)| k.starts_with(prefix));
    let contains = |part: &str| tensors.iter().any(|(k, _)| k.contains(part));
    let shape = |key: &str| {
        tensors
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, s)| s.as_slice())
    };
    if tensors.is_empty() {
        return refuse("the file holds no tensors".into());
    }
    if has_prefix("lora_") || contains(".lora_down.") || contains(".lora_A.") {
        return refuse(
            "this is a LoRA, not a model: give a base model with --model and this file with \
             --lora"
                .into(),
        );
    }
    if has_prefix("conditioner.embedders.") || has_prefix("model.diffusion_model.label_emb.") {
        return refuse(
            "this is an SDXL checkpoint; dreamwalk runs Stable Diffusion 1.x, 2.x and SD-Turbo"
                .into(),
        );
    }
    if contains("joint_blocks.") {
        return refuse(
            "this is a Stable Diffusion 3 checkpoint; dreamwalk runs Stable Diffusion 1.x, 2.x \
             and SD-Turbo"
                .into(),
        );
    }
    if contains("double_blocks.") {
        return refuse(
            "this is a Flux checkpoint; dreamwalk runs Stable Diffusion 1.x, 2.x and SD-Turbo"
                .into(),
        );
    }
    if !has_prefix(UNET) {
        if has_prefix("down_blocks.") || has_prefix("conv_in.") || has_prefix("text_model.") {
            return refuse(
                "this is one component of a diffusers model: give the model's folder".into(),
            );
        }
        let mut first: Vec<&str> = tensors.iter().map(|(k, _)| k.as_str()).take(3).collect();
        first.sort_unstable();
        return refuse(format!(
            "unknown key layout (no `{UNET}*` UNet keys; the file has e.g. {})",
            first.join(", ")
        ));
    }
    match shape("model.diffusion_model.input_blocks.0.0.weight") {
        Some([_, 4, 3, 3]) => {}
        Some([_, 9, 3, 3]) => {
            return refuse(
                "this is an inpainting checkpoint (9 input channels); dreamwalk runs text-to-\
                 image models (4)"
                    .into(),
            )
        }
        Some(other) => {
            return refuse(format!(
                "the UNet's first convolution has shape {other:?}: a model with {} input \
                 channels is not a text-to-image Stable Diffusion",
                other.get(1).copied().unwrap_or(0)
            ))
        }
        None => return refuse("missing `model.diffusion_model.input_blocks.0.0.weight`".into()),
    }
    let text = if has_prefix("cond_stage_model.transformer.text_model.") {
        TextLayout::Transformers
    } else if has_prefix("cond_stage_model.transformer.") {
        TextLayout::TransformersFlat
    } else if has_prefix("cond_stage_model.model.") {
        TextLayout::OpenClip
    } else {
        return refuse("no text encoder (no `cond_stage_model.*` keys)".into());
    };
    if !has_prefix("first_stage_model.") {
        return refuse("no VAE (no `first_stage_model.*` keys)".into());
    }
    // The first transformer's cross-attention key projection: (inner, context).
    let context_dim = tensors
        .iter()
        .find(|(k, _)| k.starts_with(UNET) && k.ends_with(".attn2.to_k.weight"))
        .and_then(|(_, s)| s.get(1).copied());
    let Some(context_dim) = context_dim else {
        return refuse("no cross-attention layer (`*.attn2.to_k.weight`) in the UNet".into());
    };
    let linear_projection = tensors
        .iter()
        .find(|(k, _)| k.starts_with(UNET) && k.ends_with(".proj_in.weight"))
        .is_some_and(|(_, s)| s.len() == 2);
    Ok(Layout {
        text,
        context_dim,
        linear_projection,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[(&str, &[usize])]) -> Vec<(String, Vec<usize>)> {
        list.iter()
            .map(|(k, s)| (k.to_string(), s.to_vec()))
            .collect()
    }

    fn refusal(list: &[(&str, &[usize])]) -> String {
        classify(Path::new("model.safetensors"), &keys(list))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn other_families_are_refused_by_name() {
        assert!(refusal(&[("conditioner.embedders.0.x", &[1])]).contains("SDXL"));
        assert!(refusal(&[("model.diffusion_model.joint_blocks.0.x", &[1])]).contains("3"));
        assert!(refusal(&[("double_blocks.0.img_attn.qkv.weight", &[1])]).contains("Flux"));
        assert!(refusal(&[("lora_unet_down_blocks_0.lora_down.weight", &[1])]).contains("LoRA"));
        let inpainting = refusal(&[(
            "model.diffusion_model.input_blocks.0.0.weight",
            &[320, 9, 3, 3],
        )]);
        assert!(inpainting.contains("inpainting"), "{inpainting}");
        assert!(refusal(&[("foo.bar", &[1])]).contains("unknown key layout"));
        assert!(refusal(&[]).contains("no tensors"));
    }

    #[test]
    fn sd1_and_sd2_are_told_apart() {
        let common: [(&str, &[usize]); 2] = [
            (
                "model.diffusion_model.input_blocks.0.0.weight",
                &[320, 4, 3, 3],
            ),
            ("first_stage_model.decoder.conv_in.weight", &[512, 4, 3, 3]),
        ];
        let mut sd1 = common.to_vec();
        sd1.extend([
            (
                "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
                &[49408usize, 768][..],
            ),
            (
                "model.diffusion_model.input_blocks.1.1.proj_in.weight",
                &[320, 320, 1, 1][..],
            ),
            (
                "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
                &[320, 768][..],
            ),
        ]);
        let layout = classify(Path::new("a.safetensors"), &keys(&sd1)).unwrap();
        assert_eq!(layout.text, TextLayout::Transformers);
        assert_eq!((layout.context_dim, layout.linear_projection), (768, false));

        let mut sd2 = common.to_vec();
        sd2.extend([
            (
                "cond_stage_model.model.token_embedding.weight",
                &[49408usize, 1024][..],
            ),
            (
                "model.diffusion_model.input_blocks.1.1.proj_in.weight",
                &[320, 320][..],
            ),
            (
                "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
                &[320, 1024][..],
            ),
        ]);
        let layout = classify(Path::new("a.safetensors"), &keys(&sd2)).unwrap();
        assert_eq!(layout.text, TextLayout::OpenClip);
        assert_eq!((layout.context_dim, layout.linear_projection), (1024, true));
    }
}
