//! Loading the x4 upscaler from a diffusers folder laid out as
//! `stabilityai/stable-diffusion-x4-upscaler` is: `model_index.json` (class
//! `StableDiffusionUpscalePipeline`, `max_noise_level`), `tokenizer/`, `text_encoder/`,
//! `unet/` (7 input channels: 4 latent + 3 image; a class embedding for the noise level),
//! `scheduler/`, `low_res_scheduler/` and `vae/` (3 blocks: 4x, `scaling_factor` 0.08333).

use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::Deserialize;

use super::low_res::LowResNoise;
use super::X4Upscaler;
use crate::model::decoders::{AutoencoderKlConfig, VaeDecoder};
use crate::model::schedulers::SchedulerConfig;
use crate::model::sd::resolve_model;
use crate::model::text::{ClipTextEncoder, ClipTokenizer};
use crate::model::unet::{UNet2DConditionModel, UNetConfig};
use crate::model::weights::{find_weights, in_file, mmap_var_builder, read_config};
use crate::model::{ModelError, Result};

/// The `_class_name` of an x4 upscaler's `model_index.json`.
pub const X4_PIPELINE: &str = "StableDiffusionUpscalePipeline";

/// diffusers' default `max_noise_level` of the pipeline.
const DEFAULT_MAX_NOISE_LEVEL: usize = 350;

/// The VAE scale the pipeline always uses: diffusers replaces any other value in
/// `vae/config.json` with it (the original repo's file had none).
const X4_VAE_SCALING_FACTOR: f64 = 0.08333;

/// Latent channels of the UNet's input besides the 3 of the low-res image.
const IMAGE_CHANNELS: usize = 3;

/// The keys of `model_index.json` the upscaler reads.
#[derive(Debug, Deserialize)]
struct ModelIndex {
    #[serde(rename = "_class_name", default)]
    class_name: Option<String>,
    #[serde(default = "default_max_noise_level")]
    max_noise_level: usize,
}

fn default_max_noise_level() -> usize {
    DEFAULT_MAX_NOISE_LEVEL
}

/// The folder `model` names (a path, or a Hugging Face id in the local cache) and its
/// checked `model_index.json`.
fn open_index(model: &str) -> Result<(PathBuf, ModelIndex)> {
    let dir = resolve_model(model)?;
    let index_path = dir.join("model_index.json");
    let index: ModelIndex = read_config(&index_path)?;
    match index.class_name.as_deref() {
        Some(X4_PIPELINE) => Ok((dir, index)),
        other => Err(ModelError::Config {
            path: index_path,
            key: "_class_name".into(),
            message: format!(
                "`{}` is not the x4 upscaler ({X4_PIPELINE}, e.g. \
                 stabilityai/stable-diffusion-x4-upscaler)",
                other.unwrap_or("")
            ),
        }),
    }
}

/// The `max_noise_level` of the x4 upscaler `model` names, read from its
/// `model_index.json` alone: for checking a request before the weights load.
pub fn read_max_noise_level(model: &str) -> Result<usize> {
    Ok(open_index(model)?.1.max_noise_level)
}

impl X4Upscaler {
    /// Loads an x4 upscaler folder, or a Hugging Face id (`org/name`) from the local cache.
    /// Errors name the file and key at fault.
    pub fn load(model: &str) -> Result<Self> {
        let (dir, index) = open_index(model)?;
        let device = Device::Cpu;
        let low_res_path = dir.join("low_res_scheduler").join("scheduler_config.json");
        let low_res_noise = LowResNoise::new(&SchedulerConfig::load(&low_res_path)?)
            .map_err(|e| ModelError::bad_file(&low_res_path, e))?;
        check_noise_levels(&dir, &low_res_noise, index.max_noise_level)?;
        let vae = load_vae(&dir.join("vae"), &device)?;
        // The UNet's config against the pipeline before its weights are read, so a UNet of
        // another kind is named by its key rather than by a tensor's shape.
        let unet_config = dir.join("unet").join("config.json");
        check_unet(
            &unet_config,
            &read_config(&unet_config)?,
            vae.config().latent_channels,
            index.max_noise_level,
        )?;
        let unet = UNet2DConditionModel::load(&dir.join("unet"), &device)?;
        let tokenizer = ClipTokenizer::from_folder(&dir.join("tokenizer"))?;
        let text_encoder = ClipTextEncoder::load(&dir.join("text_encoder"), &device)?;
        let scheduler =
            SchedulerConfig::load(&dir.join("scheduler").join("scheduler_config.json"))?;
        let name = Path::new(model)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|_| Path::new(model).exists())
            .unwrap_or_else(|| model.to_string());
        Ok(Self {
            name,
            tokenizer,
            text_encoder,
            unet,
            scheduler,
            low_res_noise,
            vae,
            max_noise_level: index.max_noise_level,
        })
    }
}

/// The `vae/` folder with the pipeline's settings: `scaling_factor` 0.08333 whatever the
/// file says (as diffusers), and diffusers' defaults for keys old files lack.
fn load_vae(dir: &Path, device: &Device) -> Result<VaeDecoder> {
    let config_path = dir.join("config.json");
    let mut value: serde_json::Value = read_config(&config_path)?;
    if let Some(map) = value.as_object_mut() {
        map.entry("norm_num_groups").or_insert(32.into());
        let given = map
            .insert("scaling_factor".into(), X4_VAE_SCALING_FACTOR.into())
            .and_then(|v| v.as_f64());
        if let Some(given) = given.filter(|&g| g != X4_VAE_SCALING_FACTOR) {
            tracing::warn!(
                "{}: scaling_factor {given} replaced by the x4 upscaler's {X4_VAE_SCALING_FACTOR}, \
                 as diffusers does",
                config_path.display()
            );
        }
    }
    let cfg: AutoencoderKlConfig = serde_json::from_value(value)
        .map_err(|e| ModelError::bad_file(&config_path, format!("invalid config: {e}")))?;
    let weights = find_weights(dir)?;
    let vb = mmap_var_builder(std::slice::from_ref(&weights), device)?;
    VaeDecoder::new(vb, &cfg).map_err(|e| match e {
        ModelError::Candle(e) => in_file(&weights)(e),
        ModelError::Invalid(message) => ModelError::bad_file(&config_path, message),
        other => other,
    })
}

/// The low-res schedule has a level for every noise level up to `max_noise_level`.
fn check_noise_levels(dir: &Path, low_res: &LowResNoise, max_noise_level: usize) -> Result<()> {
    if low_res.levels() <= max_noise_level {
        return Err(ModelError::Config {
            path: dir.join("model_index.json"),
            key: "max_noise_level".into(),
            message: format!(
                "{max_noise_level} is past the low_res_scheduler's {} timesteps",
                low_res.levels()
            ),
        });
    }
    Ok(())
}

/// The UNet fits the pipeline: it takes the latents plus the image, predicts latents, and
/// has a class embedding for every noise level up to `max_noise_level`.
fn check_unet(
    path: &Path,
    cfg: &UNetConfig,
    latent_channels: usize,
    max_noise_level: usize,
) -> Result<()> {
    let refuse = |key: &str, message: String| {
        Err(ModelError::Config {
            path: path.to_path_buf(),
            key: key.into(),
            message,
        })
    };
    if cfg.in_channels != latent_channels + IMAGE_CHANNELS {
        return refuse(
            "in_channels",
            format!(
                "{}: the x4 upscaler's UNet takes {latent_channels} latent + {IMAGE_CHANNELS} \
                 image channels",
                cfg.in_channels
            ),
        );
    }
    if cfg.out_channels != latent_channels {
        return refuse(
            "out_channels",
            format!(
                "{}: the VAE's latents have {latent_channels} channels",
                cfg.out_channels
            ),
        );
    }
    match cfg.num_class_embeds {
        Some(n) if n > max_noise_level => Ok(()),
        other => refuse(
            "num_class_embeds",
            format!(
                "{}: the x4 upscaler's UNet embeds the noise level as a class label, so \
                 it needs more than max_noise_level ({max_noise_level}) classes",
                other.map_or("null".to_string(), |n| n.to_string())
            ),
        ),
    }
}
