//! The configs of the real SD 1.x and 2.x families, for single-file checkpoints read
//! without `--config`: what diffusers' `from_single_file` fetches from the Hub for them
//! (SD 1.5's and SD 2.1's `unet/`, `text_encoder/`, `scheduler/` configs; the VAE is
//! [`AutoencoderKlConfig::stable_diffusion`](crate::model::AutoencoderKlConfig)).

use crate::model::schedulers::SchedulerConfig;
use crate::model::text::{ClipTextConfig, ClipTokenizer};
use crate::model::unet::UNetConfig;

/// SD 1.x (768-wide context, 8 heads) or SD 2.x (1024, 5/10/20/20 heads) UNet; linear
/// transformer projections as the checkpoint has them.
pub fn unet(sd2: bool, linear_projection: bool) -> UNetConfig {
    let json = if sd2 {
        serde_json::json!({
            "sample_size": 64,
            "cross_attention_dim": 1024,
            "attention_head_dim": [5, 10, 20, 20],
            "use_linear_projection": linear_projection,
        })
    } else {
        serde_json::json!({
            "sample_size": 64,
            "cross_attention_dim": 768,
            "attention_head_dim": 8,
            "use_linear_projection": linear_projection,
        })
    };
    // The remaining keys are diffusers' defaults, which are SD's.
    serde_json::from_value(json).expect("the built-in UNet config parses")
}

/// CLIP ViT-L/14's text model (SD 1.x), or OpenCLIP ViT-H/14's as diffusers converts it
/// (SD 2.x: 23 of its 24 layers, as SD 2 reads the penultimate layer).
pub fn text_encoder(sd2: bool) -> ClipTextConfig {
    let json = if sd2 {
        serde_json::json!({
            "vocab_size": 49408,
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 23,
            "num_attention_heads": 16,
            "max_position_embeddings": 77,
            "hidden_act": "gelu",
        })
    } else {
        serde_json::json!({
            "vocab_size": 49408,
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "max_position_embeddings": 77,
            "hidden_act": "quick_gelu",
        })
    };
    serde_json::from_value(json).expect("the built-in CLIP config parses")
}

/// SD's DDIM schedule (scaled linear betas 0.00085 to 0.012, "leading" steps, offset 1):
/// the same for both families; what the UNet predicts is the `--prediction` flag's.
pub fn scheduler() -> SchedulerConfig {
    serde_json::from_value(serde_json::json!({
        "_class_name": "DDIMScheduler",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": false,
        "set_alpha_to_one": false,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "prediction_type": "epsilon",
    }))
    .expect("the built-in scheduler config parses")
}

/// Hugging Face repositories (and their tokenizer folder) whose cached tokenizer fits the
/// family: the same CLIP vocabulary, SD 2.x padding with `!`.
fn tokenizer_folders(sd2: bool) -> &'static [(&'static str, &'static str)] {
    if sd2 {
        &[
            ("stabilityai/stable-diffusion-2-1", "tokenizer"),
            ("stabilityai/stable-diffusion-2-1-base", "tokenizer"),
            ("stabilityai/sd-turbo", "tokenizer"),
        ]
    } else {
        &[
            ("stable-diffusion-v1-5/stable-diffusion-v1-5", "tokenizer"),
            ("runwayml/stable-diffusion-v1-5", "tokenizer"),
            ("CompVis/stable-diffusion-v1-4", "tokenizer"),
            ("openai/clip-vit-large-patch14", ""),
        ]
    }
}

/// The repositories [`cached_tokenizer`] looks in.
pub fn tokenizer_repos(sd2: bool) -> Vec<&'static str> {
    tokenizer_folders(sd2)
        .iter()
        .map(|(repo, _)| *repo)
        .collect()
}

/// The first of the family's tokenizers found in the Hugging Face cache.
pub fn cached_tokenizer(sd2: bool) -> Option<ClipTokenizer> {
    tokenizer_folders(sd2).iter().find_map(|(repo, folder)| {
        let file = if folder.is_empty() {
            "vocab.json".to_string()
        } else {
            format!("{folder}/vocab.json")
        };
        let vocab = crate::model::sd::find_cached(repo, &file)?;
        ClipTokenizer::from_folder(vocab.parent()?).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_configs_are_the_families() {
        let sd1 = unet(false, false);
        assert!(sd1.validate().is_ok(), "{:?}", sd1.validate());
        assert_eq!(sd1.cross_attention_dim.get(0), Some(768));
        let sd2 = unet(true, true);
        assert!(sd2.validate().is_ok(), "{:?}", sd2.validate());
        assert_eq!(sd2.attention_head_dim.get(3), Some(20));
        assert!(sd2.use_linear_projection);
        assert_eq!(text_encoder(true).num_hidden_layers, 23);
        assert_eq!(text_encoder(false).hidden_size, 768);
    }
}
