//! The built-in demo model: Stable Diffusion's architecture in miniature, with weights made
//! from a fixed seed in code, so that dreamwalk runs on a fresh machine with no files.
//!
//! Its images are not pictures of anything (the weights are random); it exists so the whole
//! path — tokenizer, text encoder, UNet, sampler, decoders — runs for real. Everything that
//! shows or saves its output says [`DEMO_NAME`].

use candle_core::{Device, Tensor};
use serde_json::json;

use super::decoders::{AutoencoderKlConfig, TaesdConfig, TaesdDecoder, VaeDecoder, VaeEncoder};
use super::device::DeviceLoader;
use super::device_job::device_slot;
use super::engine::ModelDefaults;
use super::keyframe::encoder::{ImageEncoder, LazyEncoder};
use super::schedulers::{PredictionType, SchedulerConfig};
use super::sd::StableDiffusion;
use super::seeded::seeded_var_builder;
use super::text::{ClipTextConfig, ClipTextEncoder, ClipTokenizer};
use super::unet::{UNet2DConditionModel, UNetConfig};

/// How the demo model is named wherever its output is shown or saved.
pub const DEMO_NAME: &str = "demo model (random weights)";

const SEED: u64 = 0x00d2_ea3f_a1c0;

fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("the demo model's built-in config is valid")
}

/// TAESD with seeded weights scaled so the picture is visible: He-scaled convolutions keep
/// the activations' size through the ReLUs, and the last layer's bias centres the output on
/// mid-grey. (Small random weights, as in the fixtures, give an almost black picture.)
fn demo_taesd(config: &TaesdConfig) -> super::Result<TaesdDecoder> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED ^ 0x7AE5D);
    let shapes = config.decoder_tensor_shapes();
    let last_bias = shapes
        .iter()
        .rposition(|(name, _)| name.ends_with(".bias"))
        .unwrap_or(usize::MAX);
    let last_weight = shapes
        .iter()
        .rposition(|(name, _)| name.ends_with(".weight"))
        .unwrap_or(usize::MAX);
    let mut tensors = std::collections::HashMap::new();
    for (i, (name, shape)) in shapes.into_iter().enumerate() {
        let count: usize = shape.iter().product();
        let values: Vec<f32> = if name.ends_with(".bias") {
            let mean = if i == last_bias { 0.5 } else { 0.0 };
            (0..count)
                .map(|_| mean + 0.05 * rng.sample::<f32, _>(rand_distr::StandardNormal))
                .collect()
        } else {
            let fan_in: usize = shape[1..].iter().product();
            // The last layer quieter: soft colour fields rather than clipped noise.
            let gain = if i == last_weight { 0.025 } else { 1.0 };
            let std = gain * (2.0 / fan_in as f32).sqrt();
            (0..count)
                .map(|_| std * rng.sample::<f32, _>(rand_distr::StandardNormal))
                .collect()
        };
        tensors.insert(name, Tensor::from_vec(values, shape, &Device::Cpu)?);
    }
    TaesdDecoder::from_tensors(&tensors, config)
}

impl StableDiffusion {
    /// The built-in demo model (see the module docs). 1024x576 images by default.
    pub fn demo() -> Self {
        Self::demo_on(None)
    }

    /// [`Self::demo`], sampling on the device `loader` makes from the weights (the CPU,
    /// with a note, when it cannot).
    pub fn demo_on(loader: Option<&dyn DeviceLoader>) -> Self {
        let device = Device::Cpu;
        let vb = seeded_var_builder(SEED, &device);
        let clip_config: ClipTextConfig = from_json(json!({
            "vocab_size": 514, "hidden_size": 32, "intermediate_size": 37,
            "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 77,
            "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5
        }));
        // Attention only at the lowest resolution: 1024x576 images are 128x72 latents,
        // too many tokens for attention at full latent size to be quick.
        let unet_config: UNetConfig = from_json(json!({
            "in_channels": 4, "out_channels": 4, "block_out_channels": [16, 32, 32],
            "down_block_types": ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
            "layers_per_block": 1, "attention_head_dim": 4, "cross_attention_dim": 32,
            "norm_num_groups": 8, "sample_size": 64
        }));
        let vae_config: AutoencoderKlConfig = from_json(json!({
            "block_out_channels": [8, 8, 8, 8], "layers_per_block": 1, "latent_channels": 4,
            "norm_num_groups": 4, "scaling_factor": 0.18215,
            "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
            "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
        }));
        // TAESD's shape with 8 channels and no full-resolution blocks: a 1024x576 decode
        // is ~2 GFLOP, so the demo walks in real time on two cores.
        let taesd_config: TaesdConfig = from_json(json!({
            "latent_channels": 4,
            "decoder_block_out_channels": [8, 8, 8, 8],
            "num_decoder_blocks": [1, 1, 1, 0]
        }));
        let text_encoder =
            ClipTextEncoder::new(vb.pp("text_model"), &clip_config).expect("demo text encoder");
        let unet = UNet2DConditionModel::new(vb.pp("unet"), &unet_config).expect("demo UNet");
        let vae = VaeDecoder::new(vb.pp("vae"), &vae_config).expect("demo VAE");
        let taesd = demo_taesd(&taesd_config).expect("demo TAESD");
        // The VAE's other half, from the same seeded weights, when an image first needs it.
        let image_encoder = LazyEncoder::new(Box::new(move || {
            let vb = seeded_var_builder(SEED, &Device::Cpu);
            let encoder = VaeEncoder::new(vb.pp("vae"), &vae_config)?;
            Ok(ImageEncoder::Vae(Box::new(encoder)))
        }));
        Self {
            name: DEMO_NAME.to_string(),
            device,
            tokenizer: ClipTokenizer::bytes_only(),
            text_encoder,
            unet,
            scheduler: SchedulerConfig::stable_diffusion(PredictionType::Epsilon),
            vae: Some(vae),
            taesd: Some(taesd),
            image_encoder,
            defaults: ModelDefaults {
                image_size: (1024, 576),
                steps: 10,
                guidance: 7.5,
            },
            sampling: device_slot(
                loader,
                vb.pp("unet"),
                &unet_config,
                vb.pp("text_model"),
                &clip_config,
            ),
        }
    }

    /// Whether this is the built-in demo model.
    pub fn is_demo(&self) -> bool {
        self.name == DEMO_NAME
    }
}
