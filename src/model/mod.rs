//! Stable Diffusion on candle, matched element by element against diffusers/transformers.
//!
//! One file per network part or scheduler, plain config structs that mirror the
//! diffusers `config.json` files. candle-transformers is used where it matches diffusers
//! (the AutoencoderKL); where it does not, the part is written here and says why.

pub mod clip;
pub mod scheduler;
pub mod taesd;
pub mod tokenizer;
pub mod unet;
mod unet_blocks;
pub mod vae;
pub mod weights;

use std::path::{Path, PathBuf};

/// Everything that can go wrong while loading or running a model.
///
/// Every variant that comes from a file names that file, so a user can fix it.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: not found", path.display())]
    Missing { path: PathBuf },
    #[error("{}: {message}", path.display())]
    BadFile { path: PathBuf, message: String },
    #[error("{}: config key `{key}`: {message}", path.display())]
    Config {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
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

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
