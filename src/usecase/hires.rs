//! `render --hires x4`: the walk's engine wrapped so that its keyframes are upscaled once by
//! the SD x4 upscaler and every frame is decoded at 4x by the upscaler's VAE
//! ([`HiresEngine`]). The settings are checked against the x4 model's folder before any
//! weights load.

use std::sync::Arc;

use crate::model::x4::{
    check_settings, read_max_noise_level, HiresEngine, HiresOptions, X4Upscaler,
};
use crate::model::{Engine, ModelError};

/// The x4 upscaler a walk runs through, and how.
#[derive(Clone, Debug, PartialEq)]
pub struct HiresSource {
    /// A diffusers folder of the x4 upscaler, or its Hugging Face id in the local cache.
    pub model: String,
    pub options: HiresOptions,
}

impl HiresSource {
    /// The Hugging Face id of the x4 upscaler, looked up in the cache when no folder is
    /// given.
    pub const DEFAULT_MODEL: &'static str = "stabilityai/stable-diffusion-x4-upscaler";

    /// Checks the options against the x4 model's `max_noise_level` (read from its
    /// `model_index.json`, no weights loaded): the errors name the value or the file.
    pub fn check(&self) -> Result<(), ModelError> {
        let max_noise_level = read_max_noise_level(&self.model)?;
        let options = &self.options;
        check_settings(
            options.steps,
            options.guidance,
            options.noise_level,
            max_noise_level,
            options.tiling,
        )?;
        if let Some(stop) = &options.noise_stop {
            stop.validate()?;
        }
        options.decode.check()
    }
}

/// `engine` walking in the x4 upscaler's latent space: [`HiresSource::check`], then the
/// upscaler's weights loaded.
pub fn with_hires(
    engine: Arc<dyn Engine>,
    hires: &HiresSource,
) -> Result<Arc<dyn Engine>, ModelError> {
    hires.check()?;
    let x4 = X4Upscaler::load(&hires.model)?;
    Ok(Arc::new(HiresEngine::new(engine, x4, hires.options)?))
}
