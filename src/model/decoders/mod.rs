//! The networks that turn latents into pixels: TAESD (the tiny autoencoder, fast enough to
//! decode every frame of a walk) and the model's own AutoencoderKL (the reference quality);
//! and their encoders, which turn a person's images into keyframe latents.

pub mod taesd;
pub mod tiling;
pub mod vae;

pub use taesd::{ConvWeights, TaesdConfig, TaesdDecoder, TaesdEncoder};
pub use tiling::{default_budget_bytes, Tiling};
pub use vae::{AutoencoderKlConfig, DecodePlan, VaeDecoder, VaeEncoder};

/// Which network turns latents into pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize)]
pub enum DecoderKind {
    /// The tiny autoencoder: about 100x less work than the full VAE, a little softer.
    #[default]
    Taesd,
    /// The model's own AutoencoderKL: the reference quality.
    Vae,
}

impl DecoderKind {
    /// The decoder's name as the window and the logs show it.
    pub fn label(self) -> &'static str {
        match self {
            DecoderKind::Taesd => "TAESD",
            DecoderKind::Vae => "full VAE",
        }
    }

    /// The fastest of the `available` decoders: TAESD when there is one, else the VAE.
    pub fn fastest(available: &[DecoderKind]) -> Option<DecoderKind> {
        [DecoderKind::Taesd, DecoderKind::Vae]
            .into_iter()
            .find(|kind| available.contains(kind))
    }
}
