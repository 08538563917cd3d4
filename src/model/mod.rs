//! Stable Diffusion on candle, matched element by element against diffusers/transformers.
//!
//! One file per network part or scheduler, plain config structs that mirror the
//! diffusers `config.json` files. candle-transformers is used where it matches diffusers
//! (the AutoencoderKL); where it does not, the part is written here and says why.

pub mod decoders;
pub mod demo;
pub mod kernels;
pub mod schedulers;
pub mod sd;
pub mod text;
pub mod unet;
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

pub use decoders::{AutoencoderKlConfig, TaesdConfig, TaesdDecoder, VaeDecoder};
pub use sd::{load_init_latents, StableDiffusion};

/// Which network turns latents into pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, clap::ValueEnum, serde::Serialize)]
pub enum DecoderKind {
    /// The tiny autoencoder: about 100x less work than the full VAE, a little softer.
    #[default]
    Taesd,
    /// The model's own AutoencoderKL: the reference quality.
    Vae,
}

impl DecoderKind {
    pub fn label(self) -> &'static str {
        match self {
            DecoderKind::Taesd => "TAESD",
            DecoderKind::Vae => "full VAE",
        }
    }
}

/// Everything that decides the keyframe latents: a change to any of it means sampling
/// the endpoints again.
#[derive(Clone, Debug)]
pub struct EndpointRequest {
    /// One prompt per keyframe (two or more for a walk).
    pub prompts: Vec<String>,
    /// The negative prompt (the "unconditional" side of classifier-free guidance).
    pub negative: String,
    pub seed: u64,
    /// Each keyframe gets `seed + i` instead of the same seed (layouts stop matching).
    pub seed_per_keyframe: bool,
    /// Sampler steps per keyframe.
    pub steps: usize,
    /// Classifier-free guidance scale; 1 or less turns guidance off (one UNet pass).
    pub guidance: f64,
    /// Decoded image size (width, height), multiples of the decoder's upscale factor.
    pub image_size: (u32, u32),
    /// Start every keyframe from these latents instead of seeded noise (reproducing
    /// another tool's run).
    pub init_latents: Option<candle_core::Tensor>,
}

impl PartialEq for EndpointRequest {
    fn eq(&self, other: &Self) -> bool {
        let same_init = match (&self.init_latents, &other.init_latents) {
            (None, None) => true,
            // Tensors share storage when cloned from the same load: compare by identity.
            (Some(a), Some(b)) => a.id() == b.id(),
            _ => false,
        };
        self.prompts == other.prompts
            && self.negative == other.negative
            && self.seed == other.seed
            && self.seed_per_keyframe == other.seed_per_keyframe
            && self.steps == other.steps
            && self.guidance == other.guidance
            && self.image_size == other.image_size
            && same_init
    }
}

/// Settings a model is meant to run with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelDefaults {
    /// Decoded image (width, height).
    pub image_size: (u32, u32),
    pub steps: usize,
    pub guidance: f64,
}

/// Sampling progress, reported after each sampler step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SamplingProgress {
    /// 0-based keyframe being sampled, of `keyframes`.
    pub keyframe: usize,
    pub keyframes: usize,
    /// Steps done for this keyframe, of `steps`.
    pub step: usize,
    pub steps: usize,
}

/// Why sampling stopped early.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The caller asked to stop (a newer request, or shutdown).
    #[error("cancelled")]
    Cancelled,
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl From<candle_core::Error> for EndpointError {
    fn from(e: candle_core::Error) -> Self {
        EndpointError::Model(e.into())
    }
}

/// What the pipeline needs from a model: endpoints from prompts, pixels from latents.
///
/// Implemented by [`StableDiffusion`] for real weights and the built-in demo model alike;
/// tests may implement it with something simpler.
pub trait Engine: Send + Sync + 'static {
    /// A name for the window and the logs ("demo model (random weights)" for the demo).
    fn name(&self) -> String;
    /// The decoders this model has.
    fn decoders(&self) -> Vec<DecoderKind>;
    /// Image sides must be multiples of this (decoder factor x UNet down-sampling).
    fn size_multiple(&self) -> u32;
    /// What a walk on this model starts from.
    fn defaults(&self) -> ModelDefaults;
    /// Samples one latent per prompt. `progress` is called after each sampler step and
    /// returns `false` to cancel.
    fn endpoints(
        &self,
        request: &EndpointRequest,
        progress: &mut dyn FnMut(SamplingProgress) -> bool,
    ) -> Result<Vec<candle_core::Tensor>, EndpointError>;
    /// Decodes one latent (1, C, h, w) to an RGBA image.
    fn decode(
        &self,
        latents: &candle_core::Tensor,
        decoder: DecoderKind,
    ) -> Result<crate::frame::RgbaImage>;
    /// Decodes one latent to a pipeline frame: [`Self::decode`]'s image, unless the engine
    /// decodes on a GPU and keeps the frame there.
    fn decode_frame(
        &self,
        latents: &candle_core::Tensor,
        decoder: DecoderKind,
    ) -> Result<crate::frame::FrameImage> {
        self.decode(latents, decoder).map(Into::into)
    }
    /// The TAESD weights, for decoders elsewhere (the GPU's); `None` when there is none.
    fn taesd(&self) -> Option<&decoders::taesd::TaesdDecoder> {
        None
    }
    /// Which decoder runs and where, for the window ("TAESD on the CPU").
    fn decoder_description(&self, decoder: DecoderKind) -> String {
        format!("{} on the CPU", decoder.label())
    }
}
