pub mod taesd;
pub mod vae;

pub use taesd::{ConvWeights, TaesdConfig, TaesdDecoder};
pub use vae::{AutoencoderKlConfig, VaeDecoder};
