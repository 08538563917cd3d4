//! Single-file checkpoints: one `.safetensors` in the original LDM / CompVis key layout, as
//! A1111, ComfyUI and Civitai share SD 1.x / 2.x fine-tunes.
//!
//! The file is memory-mapped once; each component (UNet, VAE, text encoder) is built from
//! it through a renaming [`backend`] that finds, for every diffusers name the builders ask
//! for, the original key ([`keys`]), so no converted copy is ever made. What the keys and
//! shapes cannot tell comes from a config folder (`--config DIR`: a diffusers model whose
//! `unet/`, `vae/`, `text_encoder/`, `scheduler/` configs and `tokenizer/` describe the
//! checkpoint, as diffusers' `from_single_file(config=...)`), else from the built-in SD 1.x
//! and 2.x configs chosen by the [`family`] the keys show, with the tokenizer from the
//! Hugging Face cache. Other families (SDXL, SD3, Flux, inpainting, a LoRA) are refused by
//! name.

mod backend;
pub mod builtin;
mod family;
pub mod keys;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::Device;

use self::backend::{Rename, Renamed};
use self::family::Layout;
use self::keys::{clip_source, unet_key, vae_key, Source, TextLayout};
use super::decoders::{AutoencoderKlConfig, VaeDecoder, VaeEncoder};
use super::device::DeviceLoader;
use super::device_job::device_slot;
use super::keyframe::encoder::{EncoderLoader, ImageEncoder};
use super::lora::{Component, LoraSet};
use super::schedulers::{PredictionType, SchedulerConfig};
use super::sd::{Parts, StableDiffusion};
use super::text::{ClipTextConfig, ClipTextEncoder, ClipTokenizer};
use super::unet::{UNet2DConditionModel, UNetConfig};
use super::weights::read_config;
use super::{ModelError, Result};

/// How to read a single-file checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SingleFileOptions {
    /// A diffusers model folder whose configs and tokenizer describe the checkpoint.
    pub config: Option<PathBuf>,
    /// What the UNet predicts, when the checkpoint is not what its family's default says
    /// (SD 2.x 768 models predict v).
    pub prediction: Option<PredictionType>,
}

/// Whether `path` names a single-file checkpoint rather than a model folder or an id.
pub fn is_single_file(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors") || e.eq_ignore_ascii_case("ckpt"))
}

/// The configs a checkpoint is built with.
struct Configs {
    unet: UNetConfig,
    vae: AutoencoderKlConfig,
    text: ClipTextConfig,
    scheduler: SchedulerConfig,
    tokenizer: ClipTokenizer,
}

impl StableDiffusion {
    /// Loads a single-file checkpoint (see the [module docs](self)); `taesd` as in
    /// [`StableDiffusion::load`].
    pub fn load_single_file(
        path: &Path,
        options: &SingleFileOptions,
        taesd: Option<&Path>,
    ) -> Result<Self> {
        Self::load_single_file_with_loras(path, options, taesd, &LoraSet::default())
    }

    /// [`Self::load_single_file`] with `loras` merged into the UNet and text-encoder weights.
    pub fn load_single_file_with_loras(
        path: &Path,
        options: &SingleFileOptions,
        taesd: Option<&Path>,
        loras: &LoraSet,
    ) -> Result<Self> {
        Self::load_single_file_on(path, options, taesd, loras, None)
    }

    /// [`Self::load_single_file_with_loras`], sampling on the device `loader` makes from
    /// the weights (the CPU, with a note, when it cannot).
    pub fn load_single_file_on(
        path: &Path,
        options: &SingleFileOptions,
        taesd: Option<&Path>,
        loras: &LoraSet,
        loader: Option<&dyn DeviceLoader>,
    ) -> Result<Self> {
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("ckpt"))
        {
            return Err(ModelError::bad_file(
                path,
                "a pickled .ckpt can run code when loaded and is not read here: use the \
                 model's .safetensors",
            ));
        }
        if !path.is_file() {
            return Err(ModelError::Missing {
                path: path.to_path_buf(),
            });
        }
        let file = map_checkpoint(path)?;
        let tensors: Vec<(String, Vec<usize>)> = file
            .tensors()
            .into_iter()
            .map(|(name, view)| (name, view.shape().to_vec()))
            .collect();
        let layout = family::classify(path, &tensors)?;
        let mut configs = match &options.config {
            Some(dir) => Configs::from_folder(dir)?,
            None => Configs::builtin(path, &layout)?,
        };
        if let Some(prediction) = options.prediction {
            configs.scheduler.prediction_type = prediction;
            // The SD 2.x v-prediction models are the 768 px ones.
            if options.config.is_none() && prediction == PredictionType::VPrediction {
                configs.unet.sample_size = Some(96);
            }
        }
        let file = Arc::new(file);
        let device = Device::Cpu;
        let component = |rename: Rename| {
            Renamed {
                file: Arc::clone(&file),
                path: path.to_path_buf(),
                rename,
            }
            .var_builder(&device)
        };

        let unet_config = configs.unet.clone();
        let unet_vb = loras.patch(
            component(Box::new(move |name| {
                unet_key(name, &unet_config).map(|key| Source { key, third: None })
            })),
            Component::Unet,
        );
        let unet = UNet2DConditionModel::new(unet_vb.clone(), &configs.unet)
            .map_err(|e| named(path, e))?;
        let blocks = configs.vae.block_out_channels.len();
        let vae_names =
            move |name: &str| vae_key(name, blocks).map(|key| Source { key, third: None });
        let vae = VaeDecoder::new(component(Box::new(vae_names)), &configs.vae)
            .map_err(|e| named(path, e))?;
        // The encoder maps the file again when an image keyframe first needs it: keeping
        // this map open for it would keep the whole checkpoint's pages counted in memory.
        let (checkpoint, vae_config) = (path.to_path_buf(), configs.vae.clone());
        let image_encoder: EncoderLoader = Box::new(move || {
            let file = Arc::new(map_checkpoint(&checkpoint)?);
            let vb = Renamed {
                file,
                path: checkpoint.clone(),
                rename: Box::new(vae_names),
            }
            .var_builder(&Device::Cpu);
            let encoder = VaeEncoder::new(vb, &vae_config).map_err(|e| named(&checkpoint, e))?;
            Ok(ImageEncoder::Vae(Box::new(encoder)))
        });
        let text = layout.text;
        let text_vb = loras.patch(
            component(Box::new(move |name| clip_source(name, text))),
            Component::TextEncoder,
        );
        let text_encoder =
            ClipTextEncoder::new(text_vb.clone(), &configs.text).map_err(|e| named(path, e))?;
        loras.check_matched()?;
        let sampling = device_slot(loader, unet_vb, &configs.unet, text_vb, &configs.text);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        Self::assemble(Parts {
            name: super::sd::with_loras(name, loras),
            tokenizer: configs.tokenizer,
            text_encoder,
            unet,
            scheduler: configs.scheduler,
            vae,
            taesd,
            image_encoder,
            sampling,
        })
    }
}

/// The checkpoint, memory-mapped.
fn map_checkpoint(path: &Path) -> Result<MmapedSafetensors> {
    // SAFETY: mapped read-only; like every mmap reader we assume no other process
    // truncates the file while it is mapped.
    #[allow(unsafe_code)]
    let file = unsafe { MmapedSafetensors::new(path) }
        .map_err(|e| ModelError::bad_file(path, format!("not a valid safetensors file: {e}")))?;
    Ok(file)
}

/// A builder's error, naming the checkpoint when it does not already.
fn named(path: &Path, error: ModelError) -> ModelError {
    match error {
        ModelError::Candle(e) => {
            let message = e.to_string();
            if message.contains(&path.display().to_string()) {
                ModelError::Invalid(message)
            } else {
                ModelError::bad_file(path, message)
            }
        }
        ModelError::Invalid(message) => ModelError::bad_file(path, message),
        other => other,
    }
}

impl Configs {
    /// The configs and tokenizer of a diffusers model folder (`--config`).
    fn from_folder(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(ModelError::Missing {
                path: dir.to_path_buf(),
            });
        }
        Ok(Self {
            unet: read_config(&dir.join("unet").join("config.json"))?,
            vae: read_config(&dir.join("vae").join("config.json"))?,
            text: read_config(&dir.join("text_encoder").join("config.json"))?,
            scheduler: SchedulerConfig::load(&dir.join("scheduler").join("scheduler_config.json"))?,
            tokenizer: ClipTokenizer::from_folder(&dir.join("tokenizer"))?,
        })
    }

    /// The built-in configs of the family `layout` shows, with a tokenizer from the Hugging
    /// Face cache.
    fn builtin(path: &Path, layout: &Layout) -> Result<Self> {
        let sd2 = match (layout.text, layout.context_dim) {
            (TextLayout::Transformers | TextLayout::TransformersFlat, 768) => false,
            (TextLayout::OpenClip, 1024) => true,
            (text, context) => {
                return Err(ModelError::bad_file(
                    path,
                    format!(
                        "a {text:?} text encoder with {context}-wide cross-attention is neither \
                         SD 1.x (768) nor SD 2.x (1024): give its configs with --config DIR"
                    ),
                ))
            }
        };
        Ok(Self {
            unet: builtin::unet(sd2, layout.linear_projection),
            vae: AutoencoderKlConfig::stable_diffusion(),
            text: builtin::text_encoder(sd2),
            scheduler: builtin::scheduler(),
            tokenizer: builtin::cached_tokenizer(sd2).ok_or_else(|| {
                ModelError::bad_file(
                    path,
                    format!(
                        "a single-file checkpoint carries no tokenizer, and none is in the \
                         Hugging Face cache (looked for {}): give a diffusers folder of the \
                         same family with --config DIR",
                        builtin::tokenizer_repos(sd2).join(", ")
                    ),
                )
            })?,
        })
    }
}
