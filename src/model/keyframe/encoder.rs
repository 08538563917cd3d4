//! Which network turns a keyframe's picture into latents, loaded the first time a walk has
//! an image keyframe (a walk of prompts never pays for it): the model's AutoencoderKL
//! encoder when it has one, as diffusers' img2img, else the TAESD encoder, whose latents
//! live in the same space (TAESD was trained to match the scaled VAE latents).

use candle_core::{Device, Tensor};
use parking_lot::Mutex;
use std::sync::Arc;

use crate::frame::RgbaImage;
use crate::model::decoders::{TaesdEncoder, VaeEncoder};
use crate::model::Result;

/// An encoder of pictures into the diffusion model's latent space.
#[derive(Debug)]
pub enum ImageEncoder {
    /// The AutoencoderKL's mean, times its scaling factor.
    Vae(Box<VaeEncoder>),
    /// TAESD's raw latents (its scaling factor is 1).
    Taesd(Box<TaesdEncoder>),
}

impl ImageEncoder {
    /// The latents (1, C, H/f, W/f) of a (1, 3, H, W) image in [-1, 1].
    pub fn encode(&self, image: &Tensor) -> Result<Tensor> {
        match self {
            ImageEncoder::Vae(vae) => vae.encode(image),
            ImageEncoder::Taesd(taesd) => taesd.encode(image),
        }
    }

    /// Image pixels per latent pixel along each side.
    pub fn downscale_factor(&self) -> usize {
        match self {
            ImageEncoder::Vae(vae) => vae.downscale_factor(),
            ImageEncoder::Taesd(taesd) => taesd.downscale_factor(),
        }
    }
}

/// How to load a model's image encoder when it is first needed.
pub type EncoderLoader = Box<dyn Fn() -> Result<ImageEncoder> + Send + Sync>;

/// A model's image encoder, loaded on first use and kept.
pub(crate) struct LazyEncoder {
    load: EncoderLoader,
    loaded: Mutex<Option<Arc<ImageEncoder>>>,
}

impl LazyEncoder {
    pub(crate) fn new(load: EncoderLoader) -> Self {
        Self {
            load,
            loaded: Mutex::new(None),
        }
    }

    /// The encoder, loaded now if it was not yet. A failed load is tried again next time
    /// (the file may have been fixed meanwhile).
    pub(crate) fn get(&self) -> Result<Arc<ImageEncoder>> {
        let mut loaded = self.loaded.lock();
        if let Some(encoder) = &*loaded {
            return Ok(Arc::clone(encoder));
        }
        let encoder = Arc::new((self.load)()?);
        *loaded = Some(Arc::clone(&encoder));
        Ok(encoder)
    }
}

/// An RGBA image as the (1, 3, H, W) tensor in [-1, 1] the encoders take: `byte / 255 * 2
/// - 1`, as diffusers' `VaeImageProcessor` prepares a picture for img2img.
pub fn image_tensor(image: &RgbaImage) -> Result<Tensor> {
    let (w, h) = (image.width as usize, image.height as usize);
    let mut planes = vec![0f32; 3 * w * h];
    for (i, p) in image.pixels.chunks_exact(4).enumerate() {
        for c in 0..3 {
            planes[c * w * h + i] = f32::from(p[c]) / 255.0 * 2.0 - 1.0;
        }
    }
    Ok(Tensor::from_vec(planes, (1, 3, h, w), &Device::Cpu)?)
}
