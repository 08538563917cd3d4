//! A walk in the x4 upscaler's latent space (`render --hires x4`): each keyframe is sampled
//! by the walk's model as usual, decoded, and upscaled once by the x4 pipeline; the walk
//! slerps between those x4 latents, and every frame is decoded at 4x by the x4 VAE, by
//! tiles within a memory budget. So the frames carry the upscaler's detail (not a bicubic
//! blow-up of a small decode), and a walk step costs one x4 VAE decode, never a UNet call.
//!
//! ```text
//! keyframe i:  z_i   = base.keyframe_latents(i)                 (the walk's own sampler)
//!              img_i = base.decode(z_i, VAE)                    (8-bit, as a saved PNG)
//!              x4_i  = x4.denoise(img_i, prompt_i, seed)        (the upscaler's latents)
//! frame at t:  x4.VAE.decode(slerp(x4_i, x4_i+1, t))             (4x img_i's size)
//! ```
//!
//! A diffused in-between (`--diffuse`) is made the same way from the base model's diffused
//! position: its picture upscaled with the pair's prompt embeddings blended and the pair's
//! x4 noises slerped at its place, so it sits in the x4 space like a keyframe.
//!
//! Every keyframe starts the x4 denoising from the same seeded noise (the walk's seed, or
//! `seed + i` with `seed_per_keyframe`), so neighbouring keyframes' x4 latents share their
//! fine structure and the slerp between them stays on the upscaler's manifold.

use std::cell::Cell;
use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::pipeline::rgba_of_unit;
use super::{unit_tensor, X4Upscaler};
use crate::frame::RgbaImage;
use crate::model::decoders::{DecoderKind, Tiling as DecodeTiling};
use crate::model::engine::{EndpointError, EndpointRequest, Engine, ModelDefaults};
use crate::model::sd::seeded_noise;
use crate::model::text::mix::blend;
use crate::model::tiled::{denoise_tiled, NoiseStop, TileLayout, Tiling};
use crate::model::{ModelError, Result, SamplingProgress};
use crate::walk::slerp;

/// How the x4 pipeline upscales each keyframe, and how frames are decoded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HiresOptions {
    /// The x4 sampler's steps per keyframe.
    pub steps: usize,
    /// Its classifier-free guidance scale (1 or less: off).
    pub guidance: f64,
    /// Noise added to the keyframe's picture, 0 to the model's `max_noise_level`.
    pub noise_level: usize,
    /// How the x4 latent is cut into tiles while denoising.
    pub tiling: Tiling,
    /// When a tile stops refining; `None`: every tile runs every step.
    pub noise_stop: Option<NoiseStop>,
    /// How a frame's x4 VAE decode bounds its memory.
    pub decode: DecodeTiling,
}

impl Default for HiresOptions {
    /// diffusers' upscale pipeline defaults where it has them (guidance 9, noise level 20),
    /// 20 steps, blended tiles of 128, the decode within the default budget.
    fn default() -> Self {
        Self {
            steps: 20,
            guidance: 9.0,
            noise_level: 20,
            tiling: Tiling::Blended {
                tile: 128,
                overlap: 32,
            },
            noise_stop: None,
            decode: DecodeTiling::default(),
        }
    }
}

/// An [`Engine`] whose keyframes are `base`'s upscaled by `x4`, and whose frames are the x4
/// VAE's decodes of the walk's latents (see the module docs).
pub struct HiresEngine {
    base: Arc<dyn Engine>,
    x4: X4Upscaler,
    options: HiresOptions,
}

impl HiresEngine {
    /// Checks `options` against the x4 model (steps, guidance, noise level, tilings) before
    /// any work; the errors name the value.
    pub fn new(base: Arc<dyn Engine>, x4: X4Upscaler, options: HiresOptions) -> Result<Self> {
        super::check_settings(
            options.steps,
            options.guidance,
            options.noise_level,
            x4.max_noise_level(),
            options.tiling,
        )?;
        if let Some(stop) = &options.noise_stop {
            stop.validate()?;
        }
        options.decode.check()?;
        if !base.decoders().contains(&DecoderKind::Vae) {
            return Err(ModelError::Invalid(format!(
                "--hires x4 upscales each keyframe's full-VAE picture, and {} has no full VAE",
                base.name()
            )));
        }
        Ok(Self { base, x4, options })
    }

    /// The x4 upscaler's steps and settings.
    pub fn options(&self) -> &HiresOptions {
        &self.options
    }

    /// The x4 upscaler.
    pub fn upscaler(&self) -> &X4Upscaler {
        &self.x4
    }

    /// The picture of keyframe `index` as the walk's model makes it (its full VAE): what
    /// the x4 pipeline upscales.
    pub fn base_picture(
        &self,
        request: &EndpointRequest,
        index: usize,
        progress: &mut dyn FnMut(SamplingProgress) -> bool,
    ) -> std::result::Result<RgbaImage, EndpointError> {
        let extra = self.options.steps;
        let latents = self.base.keyframe_latents(request, index, &mut |p| {
            progress(SamplingProgress {
                steps: p.steps + extra,
                ..p
            })
        })?;
        Ok(self.base.decode(&latents, DecoderKind::Vae)?)
    }

    /// Keyframe `index`'s x4 noise for a base picture of `picture`'s size: the latents' (1,
    /// 4, h, w) and the low-res picture's (1, 3, h, w), from its seed.
    fn x4_noise(
        &self,
        request: &EndpointRequest,
        index: usize,
        picture: &RgbaImage,
    ) -> Result<(Tensor, Tensor)> {
        let (h, w) = (picture.height as usize, picture.width as usize);
        let seed = Self::x4_seed(request, index);
        Ok((
            seeded_noise(seed, &[1, 4, h, w], &Device::Cpu)?,
            seeded_noise(seed.wrapping_add(1), &[1, 3, h, w], &Device::Cpu)?,
        ))
    }

    /// The x4 latents of `picture` denoised from `noise` (latents, low-res picture's) with
    /// the prompt embedding `cond`, by tiles; progress counts on from the base's steps as
    /// keyframe `index`'s.
    fn upscale(
        &self,
        request: &EndpointRequest,
        index: usize,
        picture: &RgbaImage,
        cond: Tensor,
        (latents, image_noise): (Tensor, Tensor),
        progress: &mut dyn FnMut(SamplingProgress) -> bool,
    ) -> std::result::Result<Tensor, EndpointError> {
        let image = unit_tensor(picture)?;
        let (h, w) = (picture.height as usize, picture.width as usize);
        self.x4.check(
            image.dims(),
            self.options.steps,
            self.options.guidance,
            self.options.noise_level,
            self.options.tiling,
        )?;
        let conditioning = self.x4.conditioning_with(
            &image,
            cond,
            &request.negative,
            self.options.guidance,
            self.options.noise_level,
            &image_noise,
        )?;
        let layout = TileLayout::new(self.options.tiling, (h, w))?;
        let sampler = self.x4.sampler(self.options.steps)?;
        let base_steps = request.steps;
        let cancelled = Cell::new(false);
        let outcome = denoise_tiled(
            &sampler,
            &latents,
            self.options.guidance,
            &layout,
            self.options.noise_stop,
            |rect, x, t| match cancelled.get() {
                // The loop cannot be told to stop; a failing prediction ends it.
                true => Err(ModelError::Invalid("cancelled".into())),
                false => self.x4.predict(&conditioning, rect, x, t),
            },
            |step| {
                let go_on = progress(SamplingProgress {
                    keyframe: index,
                    keyframes: request.keyframes.len(),
                    step: base_steps + step.step,
                    steps: base_steps + step.steps,
                });
                if !go_on {
                    cancelled.set(true);
                }
            },
        );
        match outcome {
            _ if cancelled.get() => Err(EndpointError::Cancelled),
            Ok(outcome) => Ok(outcome.latents),
            Err(e) => Err(e.into()),
        }
    }

    /// The seed of keyframe `index`'s x4 noise: the walk's, as its base noise is chosen.
    fn x4_seed(request: &EndpointRequest, index: usize) -> u64 {
        match request.seed_per_keyframe {
            true => request.seed.wrapping_add(index as u64),
            false => request.seed,
        }
    }
}

impl Engine for HiresEngine {
    fn name(&self) -> String {
        format!("{} + x4 upscaler {}", self.base.name(), self.x4.name())
    }

    /// The x4 VAE: TAESD cannot decode the upscaler's latents.
    fn decoders(&self) -> Vec<DecoderKind> {
        vec![DecoderKind::Vae]
    }

    fn size_multiple(&self) -> u32 {
        self.base.size_multiple()
    }

    fn defaults(&self) -> ModelDefaults {
        self.base.defaults()
    }

    /// The x4 latents: 4 channels at the base picture's size.
    fn latent_shape(&self, image_size: (u32, u32)) -> [usize; 4] {
        let (w, h) = image_size;
        [1, 4, h as usize, w as usize]
    }

    fn keyframe_latents(
        &self,
        request: &EndpointRequest,
        index: usize,
        progress: &mut dyn FnMut(SamplingProgress) -> bool,
    ) -> std::result::Result<Tensor, EndpointError> {
        if request.init_latents.is_some() {
            return Err(ModelError::Invalid(
                "--init-latents sets the walk model's latents; with --hires x4 the walk runs \
                 in the upscaler's"
                    .into(),
            )
            .into());
        }
        let picture = self.base_picture(request, index, progress)?;
        let cond = self
            .x4
            .prompt_embedding(request.keyframes[index].prompt())?;
        let (latents, image_noise) = self.x4_noise(request, index, &picture)?;
        self.upscale(
            request,
            index,
            &picture,
            cond,
            (latents, image_noise),
            progress,
        )
    }

    fn can_diffuse(&self) -> bool {
        self.base.can_diffuse()
    }

    /// The base model's diffused position at `t` between the pair (its prompts' blend, its
    /// noises' slerp), decoded, and upscaled as a keyframe is, from the pair's prompts'
    /// embeddings blended at `t` and the pair's x4 noises slerped at `t`: at `t = 0` it is
    /// keyframe `pair.0`'s x4 latents, at 1 `pair.1`'s.
    fn diffused_latents(
        &self,
        request: &EndpointRequest,
        pair: (usize, usize),
        t: f64,
        progress: &mut dyn FnMut(SamplingProgress) -> bool,
    ) -> std::result::Result<Tensor, EndpointError> {
        let extra = self.options.steps;
        let latents = self.base.diffused_latents(request, pair, t, &mut |p| {
            progress(SamplingProgress {
                steps: p.steps + extra,
                ..p
            })
        })?;
        let picture = self.base.decode(&latents, DecoderKind::Vae)?;
        let embed = |i: usize| self.x4.prompt_embedding(request.keyframes[i].prompt());
        let cond = blend(&[(embed(pair.0)?, 1.0 - t), (embed(pair.1)?, t)])?;
        let (z0, i0) = self.x4_noise(request, pair.0, &picture)?;
        let (z1, i1) = self.x4_noise(request, pair.1, &picture)?;
        let noise = (slerp(t, &z0, &z1)?, slerp(t, &i0, &i1)?);
        self.upscale(request, pair.0, &picture, cond, noise, progress)
    }

    /// The x4 VAE's image of `latents`, 4x their size, by tiles within the decode budget.
    fn decode(&self, latents: &Tensor, _decoder: DecoderKind) -> Result<RgbaImage> {
        rgba_of_unit(&self.x4.decode_with(latents, self.options.decode)?)
    }

    fn decoded_size(&self, image_size: (u32, u32), _decoder: DecoderKind) -> (u32, u32) {
        let scale = self.x4.scale() as u32;
        (image_size.0 * scale, image_size.1 * scale)
    }

    fn prompt_tokens(&self, prompt: &str) -> Option<usize> {
        self.base.prompt_tokens(prompt)
    }

    fn check_image_encoder(&self) -> Result<()> {
        self.base.check_image_encoder()
    }

    fn sampler_description(&self) -> String {
        self.base.sampler_description()
    }

    fn decoder_description(&self, _decoder: DecoderKind) -> String {
        let budget = match self.options.decode {
            DecodeTiling::Off => "untiled".to_string(),
            DecodeTiling::Auto { budget_bytes } | DecodeTiling::Tiles { budget_bytes, .. } => {
                format!(
                    "within {:.1} GiB",
                    budget_bytes as f64 / (1u64 << 30) as f64
                )
            }
        };
        format!("x4 upscaler's VAE on the CPU ({budget})")
    }
}
