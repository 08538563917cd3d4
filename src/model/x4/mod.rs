//! The Stable Diffusion x4 upscaler (diffusers' `StableDiffusionUpscalePipeline`), matched
//! against diffusers on the `tiny-x4/` fixture.
//!
//! ```text
//! context  = CLIP(tokens([negative, prompt]))                          (uncond first)
//! low_res  = low_res_scheduler.add_noise(2 image - 1, noise, level)    (DDPM, `low_res`)
//! latents  = init_noise_sigma * noise                                  (the low-res size)
//! each step: v = UNet(cat([latents, low_res], channels), t, context, class = level),
//!            guided, then the scheduler's step (DDIM, v-prediction)
//! image    = VAE.decode(latents / 0.08333) / 2 + 0.5                   (4x the low-res size)
//! ```
//!
//! The denoising runs over tiles ([`crate::model::tiled`]): one tile for the whole latent,
//! or overlapping tiles blended every step, so images larger than the UNet was trained on
//! take bounded memory. [`X4Upscaler::denoise`] is the reusable piece (a walk can upscale a
//! keyframe's decoded picture with it); [`X4Upscaler::upscale`] is the whole pipeline.
//!
//! Files: `hires` (a walk in the x4 latent space: [`HiresEngine`]), `load` (the diffusers folder: `model_index.json`'s `max_noise_level`, the UNet's
//! class embedding and 7 input channels, `low_res_scheduler`), `low_res` (the DDPM noise
//! of the low-res picture), `pipeline` (conditioning, denoising, decoding), `input`
//! (reading and checking the picture a person gives).

mod hires;
mod input;
mod load;
mod low_res;
mod pipeline;

use crate::model::decoders::VaeDecoder;
use crate::model::schedulers::SchedulerConfig;
use crate::model::text::{ClipTextEncoder, ClipTokenizer};
use crate::model::unet::UNet2DConditionModel;

pub use hires::{HiresEngine, HiresOptions};
pub use input::{read_low_res, unit_tensor, LowResPicture, MAX_LOW_RES_SIDE, MIN_LOW_RES_SIDE};
pub use load::{read_max_noise_level, X4_PIPELINE};
pub use low_res::LowResNoise;
pub use pipeline::{check_settings, rgba_of_unit, X4Conditioning, X4Noise, X4Output, X4Request};

/// The x4 upscaler's parts, ready to run on the CPU.
pub struct X4Upscaler {
    name: String,
    tokenizer: ClipTokenizer,
    text_encoder: ClipTextEncoder,
    unet: UNet2DConditionModel,
    scheduler: SchedulerConfig,
    low_res_noise: LowResNoise,
    vae: VaeDecoder,
    max_noise_level: usize,
}

impl X4Upscaler {
    /// How the model is named in messages: its folder's name or its Hugging Face id.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The highest noise level the pipeline accepts (`model_index.json`'s
    /// `max_noise_level`, 350 for the real model).
    pub fn max_noise_level(&self) -> usize {
        self.max_noise_level
    }

    /// Image pixels per latent pixel along a side: the VAE's factor (4).
    pub fn scale(&self) -> usize {
        self.vae.upscale_factor()
    }

    /// The UNet.
    pub fn unet(&self) -> &UNet2DConditionModel {
        &self.unet
    }
}
