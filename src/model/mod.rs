//! Stable Diffusion on candle, matched element by element against diffusers/transformers.
//!
//! One module per network part, with plain config structs that mirror the diffusers
//! `config.json` files: [`text`] (tokenizer and CLIP text encoder), [`unet`],
//! [`schedulers`], [`decoders`] (TAESD and the AutoencoderKL) and the CPU [`kernels`] the
//! decoders run on; [`sd`] puts them together behind the [`Engine`] trait the pipeline
//! drives. A walk's [`keyframe`]s are prompts or pictures (read, fitted, encoded). The networks are written here on candle and candle-nn layers rather than taken
//! from candle-transformers, whose versions differ from diffusers in ways that change the
//! output (each module says which).

pub mod decoders;
pub mod demo;
pub mod device;
mod device_job;
pub mod diffused;
pub mod engine;
pub mod kernels;
pub mod keyframe;
pub mod lora;
pub mod schedulers;
pub mod scripted;
pub mod sd;
mod seeded;
pub mod single_file;
pub mod text;
pub mod tiled;
pub mod unet;
pub mod weights;
pub mod x4;

use std::path::{Path, PathBuf};

pub use decoders::{
    AutoencoderKlConfig, DecodePlan, DecoderKind, TaesdConfig, TaesdDecoder, TaesdEncoder, Tiling,
    VaeDecoder, VaeEncoder,
};
pub use engine::{EndpointError, EndpointRequest, Engine, ModelDefaults, SamplingProgress};
pub use keyframe::{read_image, Fit, ImageKeyframe, Keyframe};
pub use sd::{load_init_latents, StableDiffusion};
pub use seeded::seeded_var_builder;
pub use single_file::SingleFileOptions;
pub use text::MAX_TOKENS as MAX_PROMPT_TOKENS;
pub use unet::{UNet2DConditionModel, UNetConfig};

/// Everything that can go wrong while loading or running a model.
///
/// Every variant that comes from a file names that file, so a user can fix it.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file or folder the model needs is not there.
    #[error("{}: not found", path.display())]
    Missing {
        /// The path that was looked for.
        path: PathBuf,
    },
    /// A file that exists but cannot be used (not safetensors, truncated, wrong tensors).
    #[error("{}: {message}", path.display())]
    BadFile {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A config file whose `key` asks for something this crate does not run.
    #[error("{}: config key `{key}`: {message}", path.display())]
    Config {
        /// The config file.
        path: PathBuf,
        /// The key at fault.
        key: String,
        /// Why its value cannot be used.
        message: String,
    },
    /// A request or an input that cannot be run (sizes, step counts, shapes).
    #[error("{0}")]
    Invalid(String),
    /// An error from candle that no file or argument explains better.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    /// A file that exists but cannot be used, with the reason.
    pub fn bad_file(path: &Path, message: impl std::fmt::Display) -> Self {
        Self::BadFile {
            path: path.to_path_buf(),
            message: message.to_string(),
        }
    }
}

/// The model's results, [`ModelError`] by default.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
