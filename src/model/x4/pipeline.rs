//! The x4 pipeline's steps: the conditioning (prompts and the noised low-res picture), the
//! tiled denoising of the latents, and the VAE decode to the 4x image.

use candle_core::{DType, Tensor};

use super::X4Upscaler;
use crate::frame::{RgbaImage, MAX_IMAGE_SIDE};
use crate::model::decoders::Tiling as DecodeTiling;
use crate::model::schedulers::{Sampler, SamplerKind};
use crate::model::sd::seeded_noise;
use crate::model::text::mix::embed_mixed;
use crate::model::tiled::{
    crop, denoise_tiled, NoiseStop, TileLayout, TileRect, TiledOutcome, TiledStep, Tiling,
};
use crate::model::{ModelError, Result};

/// The noise an upscale starts from.
#[derive(Clone, Debug)]
pub enum X4Noise {
    /// Drawn from a seed: the initial latents from `seed`, the low-res picture's noise from
    /// `seed + 1`.
    Seed(u64),
    /// Given tensors (another tool's run reproduced): the initial latents (1, 4, h, w) and
    /// the low-res picture's noise (1, 3, h, w).
    Given {
        /// Unit-variance initial latents.
        latents: Tensor,
        /// Unit-variance noise added to the low-res picture.
        image_noise: Tensor,
    },
}

/// One upscale: the picture, the prompts, the sampler settings, the tiling.
#[derive(Clone, Debug)]
pub struct X4Request {
    /// The low-res picture (1, 3, h, w), values in [0, 1].
    pub image: Tensor,
    /// What the picture shows (guides the details the upscaler adds).
    pub prompt: String,
    /// The negative prompt.
    pub negative: String,
    /// Sampler steps.
    pub steps: usize,
    /// Classifier-free guidance scale (1 or less: off).
    pub guidance: f64,
    /// Noise added to the low-res picture, 0 to the model's `max_noise_level`: more lets
    /// the model invent more.
    pub noise_level: usize,
    /// Where the noise comes from.
    pub noise: X4Noise,
    /// How the latent is cut into tiles.
    pub tiling: Tiling,
    /// When a tile stops refining; `None`: every tile runs every step.
    pub noise_stop: Option<NoiseStop>,
}

/// What the denoising is conditioned on, made once per picture and prompt.
#[derive(Clone, Debug)]
pub struct X4Conditioning {
    /// The text context: (2, tokens, dim) `[negative, prompt]` with guidance, else (1, ...).
    pub context: Tensor,
    /// The noised low-res picture (1, 3, h, w), in the UNet's [-1, 1] space.
    pub low_res: Tensor,
    /// Its noise level (the UNet's class label).
    pub noise_level: usize,
    /// Classifier-free guidance scale.
    pub guidance: f64,
}

/// An upscale's result.
#[derive(Clone, Debug)]
pub struct X4Output {
    /// The denoised latents (1, 4, h, w).
    pub latents: Tensor,
    /// The image (1, 3, 4h, 4w), values in [0, 1].
    pub image: Tensor,
    /// The tiles and what each did.
    pub layout: TileLayout,
    /// The loop's reports (steps and noise per tile, UNet calls).
    pub outcome: TiledOutcome,
}

impl X4Output {
    /// The image as 8-bit RGBA, `round(255 v)` as the pipeline's PIL conversion.
    pub fn to_rgba(&self) -> Result<RgbaImage> {
        rgba_of_unit(&self.image)
    }
}

/// A (1, 3, h, w) image in [0, 1] as 8-bit RGBA, `round(255 v)` as the pipeline's PIL
/// conversion.
pub fn rgba_of_unit(image: &Tensor) -> Result<RgbaImage> {
    let (_, _, h, w) = image.dims4()?;
    let planes = image.squeeze(0)?.to_dtype(DType::F32)?.to_vec3::<f32>()?;
    let mut rgba = RgbaImage::new(w as u32, h as u32);
    for (i, px) in rgba.pixels.chunks_exact_mut(4).enumerate() {
        let (y, x) = (i / w, i % w);
        for (c, plane) in planes.iter().enumerate() {
            px[c] = (plane[y][x].clamp(0.0, 1.0) * 255.0).round() as u8;
        }
    }
    Ok(rgba)
}

impl X4Upscaler {
    /// Checks what a person controls before any work: the picture's shape and size, the
    /// steps, the guidance, the noise level against `max_noise_level`, the tiling. The
    /// errors name the value.
    pub fn check(
        &self,
        image_dims: &[usize],
        steps: usize,
        guidance: f64,
        noise_level: usize,
        tiling: Tiling,
    ) -> Result<()> {
        let &[1, 3, h, w] = image_dims else {
            return Err(ModelError::Invalid(format!(
                "the low-res picture must be one RGB image (1, 3, h, w), got {image_dims:?}"
            )));
        };
        check_size(w, h, self.scale()).map_err(ModelError::Invalid)?;
        check_settings(steps, guidance, noise_level, self.max_noise_level, tiling)
    }

    /// The text context and the noised low-res picture for `image` (1, 3, h, w) in [0, 1].
    pub fn conditioning(
        &self,
        image: &Tensor,
        prompt: &str,
        negative: &str,
        guidance: f64,
        noise_level: usize,
        image_noise: &Tensor,
    ) -> Result<X4Conditioning> {
        let cond = self.prompt_embedding(prompt)?;
        self.conditioning_with(image, cond, negative, guidance, noise_level, image_noise)
    }

    /// [`Self::conditioning`] with the prompt's embedding (1, 77, hidden) given: two
    /// prompts' blended, for a diffused in-between of a hires walk.
    pub fn conditioning_with(
        &self,
        image: &Tensor,
        cond: Tensor,
        negative: &str,
        guidance: f64,
        noise_level: usize,
        image_noise: &Tensor,
    ) -> Result<X4Conditioning> {
        let context = if guidance > 1.0 {
            Tensor::cat(&[&self.encode_prompt(negative)?, &cond], 0)?
        } else {
            cond
        };
        let centred = image.to_dtype(DType::F32)?.affine(2.0, -1.0)?;
        let low_res = self
            .low_res_noise
            .add_noise(&centred, image_noise, noise_level)?;
        Ok(X4Conditioning {
            context,
            low_res,
            noise_level,
            guidance,
        })
    }

    /// The embedding of `prompt`, a plain prompt or a mix of weighted parts (`"a fox:0.7 |
    /// a wolf:0.3"`, blended as the walk's model blends them).
    pub fn prompt_embedding(&self, prompt: &str) -> Result<Tensor> {
        embed_mixed(prompt, |text| self.encode_prompt(text))
    }

    /// The prompt's CLIP embedding (1, 77, hidden).
    fn encode_prompt(&self, text: &str) -> Result<Tensor> {
        let ids = self.tokenizer.encode(text);
        let ids = Tensor::new(ids.as_slice(), &candle_core::Device::Cpu)?.unsqueeze(0)?;
        Ok(self.text_encoder.forward(&ids)?.last_hidden_state)
    }

    /// The UNet's guided-batch prediction on the tile `rect` of the latent: `x` (B, 4, th,
    /// tw) beside the same tile of the low-res picture, at timestep `t`, the noise level as
    /// class label. What [`crate::model::schedulers::denoise`] and the tiled loop call.
    pub fn predict(
        &self,
        conditioning: &X4Conditioning,
        rect: &TileRect,
        x: &Tensor,
        t: f64,
    ) -> Result<Tensor> {
        let batch = x.dim(0)?;
        let low_res = crop(&conditioning.low_res, rect)?;
        let low_res = Tensor::cat(&vec![&low_res; batch], 0)?;
        let input = Tensor::cat(&[x, &low_res], 1)?;
        let labels = Tensor::from_vec(
            vec![conditioning.noise_level as f32; batch],
            batch,
            x.device(),
        )?;
        self.unet
            .forward_with_class_labels(&input, t, &conditioning.context, Some(&labels))
    }

    /// The sampler the model's scheduler config names, for `steps` steps.
    pub fn sampler(&self, steps: usize) -> Result<Sampler> {
        Sampler::new(
            &self.scheduler,
            SamplerKind::default_for(&self.scheduler),
            steps,
        )
    }

    /// Denoises `init_latents` (1, 4, h, w; unit variance) given `conditioning`, over the
    /// tiles of `tiling`: the reusable heart of the pipeline. `on_step` sees each step.
    pub fn denoise(
        &self,
        conditioning: &X4Conditioning,
        init_latents: &Tensor,
        steps: usize,
        tiling: Tiling,
        noise_stop: Option<NoiseStop>,
        on_step: impl FnMut(&TiledStep),
    ) -> Result<(TiledOutcome, TileLayout)> {
        let (_, _, h, w) = init_latents.dims4()?;
        let low_res_hw = (conditioning.low_res.dim(2)?, conditioning.low_res.dim(3)?);
        if low_res_hw != (h, w) {
            return Err(ModelError::Invalid(format!(
                "initial latents {:?} do not match the low-res picture {:?}",
                init_latents.dims(),
                conditioning.low_res.dims()
            )));
        }
        let layout = TileLayout::new(tiling, (h, w))?;
        let sampler = self.sampler(steps)?;
        let outcome = denoise_tiled(
            &sampler,
            init_latents,
            conditioning.guidance,
            &layout,
            noise_stop,
            |rect, x, t| self.predict(conditioning, rect, x, t),
            on_step,
        )?;
        Ok((outcome, layout))
    }

    /// The VAE's image of `latents`, values in [0, 1] (the pipeline's `/ 2 + 0.5`, clamped).
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let decoded = self.vae.decode(latents)?;
        Ok(decoded.affine(0.5, 0.5)?.clamp(0f32, 1f32)?)
    }

    /// [`Self::decode`] with its memory bounded as `tiling` says (the same values within
    /// float rounding).
    pub fn decode_with(&self, latents: &Tensor, tiling: DecodeTiling) -> Result<Tensor> {
        let decoded = self.vae.decode_with(latents, tiling)?;
        Ok(decoded.affine(0.5, 0.5)?.clamp(0f32, 1f32)?)
    }

    /// The whole pipeline: checks the request, conditions, denoises, decodes.
    pub fn upscale(
        &self,
        request: &X4Request,
        on_step: impl FnMut(&TiledStep),
    ) -> Result<X4Output> {
        self.check(
            request.image.dims(),
            request.steps,
            request.guidance,
            request.noise_level,
            request.tiling,
        )?;
        if let Some(stop) = &request.noise_stop {
            stop.validate()?;
        }
        let (_, _, h, w) = request.image.dims4()?;
        let latent_channels = self.vae.config().latent_channels;
        let device = request.image.device();
        let (latents, image_noise) = match &request.noise {
            X4Noise::Seed(seed) => (
                seeded_noise(*seed, &[1, latent_channels, h, w], device)?,
                seeded_noise(seed.wrapping_add(1), &[1, 3, h, w], device)?,
            ),
            X4Noise::Given {
                latents,
                image_noise,
            } => {
                if latents.dims() != [1, latent_channels, h, w]
                    || image_noise.dims() != [1, 3, h, w]
                {
                    return Err(ModelError::Invalid(format!(
                        "given noise {:?} and {:?} does not fit a {w}x{h} picture",
                        latents.dims(),
                        image_noise.dims()
                    )));
                }
                (latents.clone(), image_noise.clone())
            }
        };
        let conditioning = self.conditioning(
            &request.image,
            &request.prompt,
            &request.negative,
            request.guidance,
            request.noise_level,
            &image_noise,
        )?;
        let (outcome, layout) = self.denoise(
            &conditioning,
            &latents,
            request.steps,
            request.tiling,
            request.noise_stop,
            on_step,
        )?;
        let image = self.decode(&outcome.latents)?;
        Ok(X4Output {
            latents: outcome.latents.clone(),
            image,
            layout,
            outcome,
        })
    }
}

/// Checks the sampler values a person gives against a model whose `max_noise_level` is
/// given: at least one step, a finite guidance, the noise level, the tiling. The errors
/// name the value.
pub fn check_settings(
    steps: usize,
    guidance: f64,
    noise_level: usize,
    max_noise_level: usize,
    tiling: Tiling,
) -> Result<()> {
    if steps == 0 {
        return Err(ModelError::Invalid(
            "sampler steps must be at least 1".into(),
        ));
    }
    if !guidance.is_finite() {
        return Err(ModelError::Invalid(format!(
            "guidance {guidance} is not a number"
        )));
    }
    if noise_level > max_noise_level {
        return Err(ModelError::Invalid(format!(
            "noise level {noise_level} is above this model's max_noise_level {max_noise_level}"
        )));
    }
    tiling.validate()
}

/// Whether a low-res picture of `w` x `h` fits the pipeline: at least
/// [`super::MIN_LOW_RES_SIDE`] on a side, and its `scale`-times upscale at most
/// [`MAX_IMAGE_SIDE`]; the reason when not.
pub(super) fn check_size(w: usize, h: usize, scale: usize) -> std::result::Result<(), String> {
    let min = super::MIN_LOW_RES_SIDE as usize;
    if w < min || h < min {
        return Err(format!(
            "a {w}x{h} picture is too small to upscale: at least {min} pixels on a side"
        ));
    }
    let max = MAX_IMAGE_SIDE as usize / scale.max(1);
    if w > max || h > max {
        return Err(format!(
            "a {w}x{h} picture is too large to upscale: {scale}x would be {}x{}, over the \
             {MAX_IMAGE_SIDE}-pixel limit (at most {max} pixels on a side)",
            w * scale,
            h * scale
        ));
    }
    Ok(())
}
