//! A whole Stable Diffusion model: prompts in, keyframe latents out, latents to pixels.
//!
//! One type for real weights (a diffusers folder or the Hugging Face cache) and the
//! built-in demo model (`demo.rs`): they differ only in where weights and configs come from.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::decoders::{DecoderKind, TaesdDecoder, TaesdEncoder, VaeDecoder, VaeEncoder};
use super::device::{DeviceError, DeviceLoader, SamplingSlot};
use super::device_job::{device_job, device_slot, Start};
use super::engine::{EndpointError, EndpointRequest, Engine, ModelDefaults, SamplingProgress};
use super::keyframe::encoder::{EncoderLoader, ImageEncoder, LazyEncoder};
use super::keyframe::{fit_image, image_tensor, ImageKeyframe, Keyframe};
use super::lora::{Component, LoraSet};
use super::schedulers::{denoise, img2img, Sampler, SamplerKind, SchedulerConfig};
use super::text::mix::embed_mixed;
use super::text::{ClipTextEncoder, ClipTokenizer};
use super::tiled::{denoise_tiled, NoiseStop, TileLayout, TiledOutcome, TiledStep, Tiling};
use super::unet::UNet2DConditionModel;
use super::{ModelError, Result};
use crate::frame::RgbaImage;

/// The parts of a Stable Diffusion pipeline, ready to run on the CPU.
pub struct StableDiffusion {
    pub(super) name: String,
    pub(super) device: Device,
    pub(super) tokenizer: ClipTokenizer,
    pub(super) text_encoder: ClipTextEncoder,
    pub(super) unet: UNet2DConditionModel,
    pub(super) scheduler: SchedulerConfig,
    pub(super) vae: Option<VaeDecoder>,
    pub(super) taesd: Option<TaesdDecoder>,
    /// For image keyframes: loaded the first time a walk has one.
    pub(super) image_encoder: LazyEncoder,
    pub(super) defaults: ModelDefaults,
    /// Where keyframes are sampled: a GPU when one was given and works, else the CPU.
    pub(super) sampling: SamplingSlot,
}

/// A model's loaded parts, for [`StableDiffusion::assemble`].
pub(super) struct Parts<'a> {
    pub name: String,
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextEncoder,
    pub unet: UNet2DConditionModel,
    pub scheduler: SchedulerConfig,
    pub vae: VaeDecoder,
    pub taesd: Option<&'a Path>,
    /// Loads the VAE's encoder when an image keyframe first needs it.
    pub image_encoder: EncoderLoader,
    /// Where keyframes are sampled ([`device_slot`]).
    pub sampling: SamplingSlot,
}

/// Pipelines whose folders this loader understands (SD 1.x, 2.x, SD-Turbo all save as
/// `StableDiffusionPipeline`).
const SUPPORTED_PIPELINES: [&str; 2] =
    ["StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"];

impl StableDiffusion {
    /// Loads a diffusers folder, or a Hugging Face id (`org/name`) from the local cache.
    /// `taesd` adds a TAESD decoder; without it, `madebyollin/taesd` is used when cached.
    pub fn load(model: &str, taesd: Option<&Path>) -> Result<Self> {
        Self::load_with_loras(model, taesd, &LoraSet::default())
    }

    /// [`Self::load`] with `loras` merged into the UNet and text-encoder weights.
    pub fn load_with_loras(model: &str, taesd: Option<&Path>, loras: &LoraSet) -> Result<Self> {
        Self::load_on(model, taesd, loras, None)
    }

    /// [`Self::load_with_loras`], sampling on the device `loader` makes from the weights
    /// (the CPU, with a note, when it cannot).
    pub fn load_on(
        model: &str,
        taesd: Option<&Path>,
        loras: &LoraSet,
        loader: Option<&dyn DeviceLoader>,
    ) -> Result<Self> {
        let dir = resolve_model(model)?;
        let index_path = dir.join("model_index.json");
        let index: serde_json::Value = super::weights::read_config(&index_path)?;
        let class = index
            .get("_class_name")
            .and_then(|c| c.as_str())
            .unwrap_or("");
        if class == super::x4::X4_PIPELINE {
            return Err(ModelError::Config {
                path: index_path,
                key: "_class_name".into(),
                message: format!(
                    "`{class}` is the x4 upscaler, not a model to walk: upscale pictures with \
                     it by `dreamwalk upscale --model {model} --image IN.png --out OUT.png`"
                ),
            });
        }
        if !SUPPORTED_PIPELINES.contains(&class) {
            return Err(ModelError::Config {
                path: index_path,
                key: "_class_name".into(),
                message: format!(
                    "unknown model family `{class}`: dreamwalk runs Stable Diffusion 1.x, 2.x and SD-Turbo ({})",
                    SUPPORTED_PIPELINES.join(", ")
                ),
            });
        }
        let device = Device::Cpu;
        let tokenizer = ClipTokenizer::from_folder(&dir.join("tokenizer"))?;
        // The patched weights are kept (a cheap handle) while a device copies them.
        let (mut text_vb, mut unet_vb) = (None, None);
        let text_encoder =
            ClipTextEncoder::load_patched(&dir.join("text_encoder"), &device, |vb| {
                let vb = loras.patch(vb, Component::TextEncoder);
                text_vb = Some(vb.clone());
                vb
            })?;
        let unet = UNet2DConditionModel::load_patched(&dir.join("unet"), &device, |vb| {
            let vb = loras.patch(vb, Component::Unet);
            unet_vb = Some(vb.clone());
            vb
        })?;
        loras.check_matched()?;
        let sampling = match (text_vb, unet_vb) {
            (Some(text), Some(unet_weights)) => device_slot(
                loader,
                unet_weights,
                unet.config(),
                ClipTextEncoder::text_model_root(text),
                text_encoder.config(),
            ),
            _ => SamplingSlot::default(),
        };
        let scheduler =
            SchedulerConfig::load(&dir.join("scheduler").join("scheduler_config.json"))?;
        let vae = VaeDecoder::load(&dir.join("vae"), &device)?;
        let vae_dir = dir.join("vae");
        let image_encoder: EncoderLoader = Box::new(move || {
            Ok(ImageEncoder::Vae(Box::new(VaeEncoder::load(
                &vae_dir,
                &Device::Cpu,
            )?)))
        });
        let name = Path::new(model)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|_| Path::new(model).exists())
            .unwrap_or_else(|| model.to_string());
        Self::assemble(Parts {
            name: with_loras(name, loras),
            tokenizer,
            text_encoder,
            unet,
            scheduler,
            vae,
            taesd,
            image_encoder,
            sampling,
        })
    }

    /// The model from its loaded parts; `parts.taesd` adds a TAESD decoder, else
    /// `madebyollin/taesd` is used when cached. Defaults follow the model: its native size,
    /// SD-Turbo's one Euler step without guidance, or DDIM 25 steps at 7.5.
    pub(super) fn assemble(parts: Parts<'_>) -> Result<Self> {
        let Parts {
            name,
            tokenizer,
            text_encoder,
            unet,
            scheduler,
            vae,
            taesd,
            image_encoder,
            sampling,
        } = parts;
        let (taesd, taesd_path) = match taesd {
            Some(path) => (Some(TaesdDecoder::load(path)?), Some(path.to_path_buf())),
            None => {
                let cached = find_cached("madebyollin/taesd", "config.json")
                    .and_then(|p| Some(p.parent()?.to_path_buf()));
                let decoder = cached.as_deref().and_then(|p| TaesdDecoder::load(p).ok());
                (decoder, cached)
            }
        };
        let image_encoder = LazyEncoder::new(Box::new(move || {
            // No VAE encoder (a decoder-only VAE file): TAESD's encoder, when its weights
            // are beside its decoder's, makes latents in the same space.
            image_encoder().or_else(|vae_error| {
                match taesd_path.as_deref().map(TaesdEncoder::load) {
                    Some(Ok(taesd)) => Ok(ImageEncoder::Taesd(Box::new(taesd))),
                    _ => Err(vae_error),
                }
            })
        }));
        let factor = vae.upscale_factor() as u32;
        // 64 for SD 1.5 (512 px), 96 for SD 2.1-768.
        let sample = unet.config().sample_size.unwrap_or(64) as u32;
        let few_step = SamplerKind::default_for(&scheduler) == SamplerKind::Euler;
        let defaults = ModelDefaults {
            image_size: (sample * factor, sample * factor),
            // SD-Turbo's recipe: one Euler step, no guidance; others: DDIM 25, 7.5.
            steps: if few_step { 1 } else { 25 },
            guidance: if few_step { 0.0 } else { 7.5 },
        };
        Ok(Self {
            name,
            device: Device::Cpu,
            tokenizer,
            text_encoder,
            unet,
            scheduler,
            vae: Some(vae),
            taesd,
            image_encoder,
            defaults,
            sampling,
        })
    }

    /// Replaces the TAESD decoder with one loaded from `path`.
    pub fn set_taesd(&mut self, path: &Path) -> Result<()> {
        self.taesd = Some(TaesdDecoder::load(path)?);
        Ok(())
    }

    /// The prompt's CLIP embedding (1, 77, hidden), of the text as it is.
    pub fn encode_prompt(&self, text: &str) -> Result<Tensor> {
        let ids = self.tokenizer.encode(text);
        if let Some(device) = self.sampling.device() {
            match device.encode_text(&ids) {
                Ok(embedding) => return Ok(embedding),
                Err(e) => self.sampling.failed(&e.to_string()),
            }
        }
        let ids = Tensor::new(ids.as_slice(), &self.device)?.unsqueeze(0)?;
        Ok(self.text_encoder.forward(&ids)?.last_hidden_state)
    }

    /// What the UNet is conditioned on for a keyframe's `prompt` (1, 77, hidden): its
    /// embedding, or for a mix (`"a fox:0.7 | a wolf:0.3"`, see [`PromptMix`](super::text::PromptMix)) the blend
    /// of its parts' embeddings. A mix whose weights cannot run is refused, naming them.
    pub fn conditioning(&self, prompt: &str) -> Result<Tensor> {
        embed_mixed(prompt, |text| self.encode_prompt(text))
    }

    /// Latent (height, width) for an image size, checked against the model's multiples.
    pub fn latent_hw(&self, image_size: (u32, u32)) -> Result<(usize, usize)> {
        let m = self.size_multiple();
        let (w, h) = image_size;
        if w == 0 || h == 0 || w % m != 0 || h % m != 0 {
            return Err(ModelError::Invalid(format!(
                "image size {w}x{h}: both sides must be positive multiples of {m} for this model"
            )));
        }
        let f = self.decoder_factor();
        Ok(((h / f) as usize, (w / f) as usize))
    }

    fn decoder_factor(&self) -> u32 {
        match (&self.vae, &self.taesd) {
            (Some(vae), _) => vae.upscale_factor() as u32,
            (None, Some(taesd)) => taesd.upscale_factor() as u32,
            (None, None) => 8,
        }
    }

    /// Samples latents for one prompt (or prompt mix) from `init` noise with the model's
    /// scheduler.
    pub fn sample(
        &self,
        prompt: &str,
        negative: &str,
        init: &Tensor,
        steps: usize,
        guidance: f64,
        on_step: impl FnMut(usize, usize) -> bool,
    ) -> std::result::Result<Tensor, EndpointError> {
        let cond = self.conditioning(prompt)?;
        self.sample_conditioned(&cond, negative, init, steps, guidance, on_step)
    }

    /// [`Self::sample`] from a conditioning already made (1, 77, hidden): a prompt's
    /// embedding, or any blend of them. The negative prompt is encoded as it is.
    pub fn sample_conditioned(
        &self,
        cond: &Tensor,
        negative: &str,
        init: &Tensor,
        steps: usize,
        guidance: f64,
        on_step: impl FnMut(usize, usize) -> bool,
    ) -> std::result::Result<Tensor, EndpointError> {
        self.run_sampler(cond, negative, Start::Noise(init), steps, guidance, on_step)
    }

    /// img2img: `image_latents` (a picture encoded) noised with `noise` `strength` of the
    /// way into the schedule and denoised with `prompt` from there (see
    /// [`super::schedulers::img2img`]). `on_step(i, n)` counts from the schedule's start, so
    /// its first call has `i` above 1 when strength is below 1.
    #[allow(clippy::too_many_arguments)]
    pub fn sample_image(
        &self,
        prompt: &str,
        negative: &str,
        image_latents: &Tensor,
        noise: &Tensor,
        strength: f64,
        steps: usize,
        guidance: f64,
        on_step: impl FnMut(usize, usize) -> bool,
    ) -> std::result::Result<Tensor, EndpointError> {
        let start = Start::Image {
            latents: image_latents,
            noise,
            strength,
        };
        let cond = self.conditioning(prompt)?;
        self.run_sampler(&cond, negative, start, steps, guidance, on_step)
    }

    /// The UNet's text context: `[negative, cond]` with guidance, else `cond` alone.
    fn context(&self, cond: &Tensor, negative: &str, guidance: f64) -> Result<Tensor> {
        Ok(match guidance > 1.0 {
            true => Tensor::cat(&[&self.encode_prompt(negative)?, cond], 0)?,
            false => cond.clone(),
        })
    }

    /// [`Self::sample`] over tiles of the latent (see [`super::tiled`]): each step the UNet
    /// predicts every tile of `tiling` on its own and the predictions are blended; with
    /// `noise_stop`, a tile whose predicted clean latents look clean stops refining.
    /// With one tile covering the latent the result is [`Self::sample`]'s.
    #[allow(clippy::too_many_arguments)]
    pub fn sample_tiled(
        &self,
        prompt: &str,
        negative: &str,
        init: &Tensor,
        steps: usize,
        guidance: f64,
        tiling: Tiling,
        noise_stop: Option<NoiseStop>,
        on_step: impl FnMut(&TiledStep),
    ) -> Result<(TiledOutcome, TileLayout)> {
        let context = self.context(&self.conditioning(prompt)?, negative, guidance)?;
        let sampler = Sampler::new(
            &self.scheduler,
            SamplerKind::default_for(&self.scheduler),
            steps,
        )?;
        let (_, _, h, w) = init.dims4()?;
        let layout = TileLayout::new(tiling, (h, w))?;
        let outcome = denoise_tiled(
            &sampler,
            init,
            guidance,
            &layout,
            noise_stop,
            |_, x, t| self.unet.forward(x, t, &context),
            on_step,
        )?;
        Ok((outcome, layout))
    }

    /// The guided sampling loop from `start`, conditioned on `cond`, cancelled when
    /// `on_step` returns `false`. Guidance's unconditional half is `negative`'s embedding.
    fn run_sampler(
        &self,
        cond: &Tensor,
        negative: &str,
        start: Start<'_>,
        steps: usize,
        guidance: f64,
        mut on_step: impl FnMut(usize, usize) -> bool,
    ) -> std::result::Result<Tensor, EndpointError> {
        let context = self.context(cond, negative, guidance)?;
        let kind = SamplerKind::default_for(&self.scheduler);
        let sampler = Sampler::new(&self.scheduler, kind, steps)?;
        if let Some(device) = self.sampling.device() {
            let job = device_job(&sampler, &start, &context, guidance)?;
            match device.denoise(&job.job(&context), &mut on_step) {
                Ok(latents) => return Ok(latents),
                Err(DeviceError::Cancelled) => return Err(EndpointError::Cancelled),
                // The keyframe is sampled again on the CPU: nothing is lost but time.
                Err(DeviceError::Failed(why)) => self.sampling.failed(&why),
            }
        }
        let cancelled = std::cell::Cell::new(false);
        let predict = |x: &Tensor, t: f64| {
            if cancelled.get() {
                // Stop at the next step: the loop passes the error straight up.
                return Err(ModelError::Invalid("cancelled".into()));
            }
            self.unet.forward(x, t, &context)
        };
        let stepped = |i: usize, n: usize| cancelled.set(!on_step(i + 1, n));
        let result = match start {
            Start::Noise(init) => denoise(&sampler, init, guidance, predict, stepped),
            Start::Image {
                latents,
                noise,
                strength,
            } => img2img(
                &sampler, latents, noise, strength, guidance, predict, stepped,
            ),
        };
        match result {
            Err(_) if cancelled.get() => Err(EndpointError::Cancelled),
            other => Ok(other?),
        }
    }

    /// The latents of a picture keyframe: fitted to the request's size, encoded, and (with
    /// a strength above 0) re-noised and denoised with its prompt. `noise` is what img2img
    /// noises with.
    fn image_latents(
        &self,
        image: &ImageKeyframe,
        request: &EndpointRequest,
        shape: &[usize; 4],
        noise: impl FnOnce() -> Result<Tensor>,
        mut on_step: impl FnMut(usize, usize) -> bool,
    ) -> std::result::Result<Tensor, EndpointError> {
        let path = image.path.display();
        if image.pixels.width == 0 || image.pixels.height == 0 {
            return Err(ModelError::Invalid(format!("{path}: an image of zero size")).into());
        }
        let fitted = fit_image(&image.pixels, request.image_size, image.fit);
        let encoder = self.image_encoder.get()?;
        let latents = encoder.encode(&image_tensor(&fitted)?)?;
        if latents.dims() != shape {
            return Err(ModelError::Invalid(format!(
                "{path}: the image encoder made latents of shape {:?}, the UNet takes {shape:?}",
                latents.dims()
            ))
            .into());
        }
        if image.strength <= 0.0 {
            // Used as it is: one report, which may still cancel.
            return match on_step(request.steps, request.steps) {
                true => Ok(latents),
                false => Err(EndpointError::Cancelled),
            };
        }
        self.sample_image(
            &image.prompt,
            &request.negative,
            &latents,
            &noise()?,
            image.strength,
            request.steps,
            request.guidance,
            on_step,
        )
    }

    /// The noise keyframe `keyframe` starts from: the request's initial latents, else
    /// seeded noise (`seed + keyframe` with `seed_per_keyframe`).
    pub(super) fn initial_noise(
        &self,
        request: &EndpointRequest,
        shape: &[usize; 4],
        keyframe: usize,
    ) -> Result<Tensor> {
        match &request.init_latents {
            Some(init) if init.dims() != shape => Err(ModelError::Invalid(format!(
                "initial latents have shape {:?}, but {}x{} images need {:?}",
                init.dims(),
                request.image_size.0,
                request.image_size.1,
                shape
            ))),
            Some(init) => Ok(init.clone()),
            None => {
                let seed = if request.seed_per_keyframe {
                    request.seed.wrapping_add(keyframe as u64)
                } else {
                    request.seed
                };
                seeded_noise(seed, shape, &self.device)
            }
        }
    }
}

/// Unit-variance noise from a seeded generator: the same seed gives the same latents on
/// every run and machine (candle's CPU `set_seed` is not usable for this).
pub fn seeded_noise(seed: u64, shape: &[usize], device: &Device) -> Result<Tensor> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let count = shape.iter().product();
    let values: Vec<f32> = (0..count)
        .map(|_| rng.sample(rand_distr::StandardNormal))
        .collect();
    Ok(Tensor::from_vec(values, shape, device)?)
}

/// Reads `init_latents` from a safetensors file (as `--init-latents` takes it).
pub fn load_init_latents(path: &Path) -> Result<Tensor> {
    if !path.is_file() {
        return Err(ModelError::Missing {
            path: path.to_path_buf(),
        });
    }
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| ModelError::bad_file(path, format!("not a valid safetensors file: {e}")))?;
    let latents = tensors
        .get("init_latents")
        .ok_or_else(|| ModelError::bad_file(path, "no tensor named `init_latents`"))?;
    if latents.rank() != 4 || latents.dim(0)? != 1 {
        return Err(ModelError::bad_file(
            path,
            format!(
                "`init_latents` has shape {:?}, expected (1, channels, h, w)",
                latents.dims()
            ),
        ));
    }
    Ok(latents.to_dtype(DType::F32)?)
}

/// Converts a decoder's (1, 3, H, W) output in [-1, 1] to RGBA bytes, as the SD pipeline
/// does: `(x / 2 + 0.5).clamp(0, 1)`, then `* 255` rounded.
pub fn image_from_decoded(decoded: &Tensor) -> Result<RgbaImage> {
    let (_, c, h, w) = decoded.dims4()?;
    if c != 3 {
        return Err(ModelError::Invalid(format!(
            "decoder gave {c} channels, expected 3"
        )));
    }
    let planes = decoded.squeeze(0)?.to_dtype(DType::F32)?.to_vec3::<f32>()?;
    let mut image = RgbaImage::new(w as u32, h as u32);
    for (i, px) in image.pixels.chunks_exact_mut(4).enumerate() {
        let (y, x) = (i / w, i % w);
        for ch in 0..3 {
            let v = (planes[ch][y][x] / 2.0 + 0.5).clamp(0.0, 1.0);
            px[ch] = (v * 255.0).round() as u8;
        }
    }
    Ok(image)
}

/// The model's name with its LoRAs: "sd-turbo + LoRA style.safetensors x0.6".
pub(super) fn with_loras(name: String, loras: &LoraSet) -> String {
    if loras.is_empty() {
        name
    } else {
        format!("{name} + LoRA {}", super::lora::describe(loras.files()))
    }
}

/// A model folder from a path, or a Hugging Face id looked up in the local cache.
pub(super) fn resolve_model(model: &str) -> Result<PathBuf> {
    let path = Path::new(model);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let looks_like_id = model.split('/').count() == 2 && !model.starts_with(['.', '/']);
    if looks_like_id {
        if let Some(index) = find_cached(model, "model_index.json") {
            if let Some(dir) = index.parent() {
                return Ok(dir.to_path_buf());
            }
        }
        let cache = hf_hub::Cache::from_env();
        return Err(ModelError::Invalid(format!(
            "`{model}` is neither a folder nor in the Hugging Face cache at {} (download it there first, e.g. `huggingface-cli download {model}`)",
            cache.path().display()
        )));
    }
    Err(ModelError::Missing {
        path: path.to_path_buf(),
    })
}

/// A file of a cached Hugging Face repo (no network: the cache's snapshot of `main`).
pub(super) fn find_cached(repo: &str, file: &str) -> Option<PathBuf> {
    hf_hub::Cache::from_env().model(repo.to_string()).get(file)
}

impl Engine for StableDiffusion {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn decoders(&self) -> Vec<DecoderKind> {
        let mut kinds = Vec::new();
        if self.taesd.is_some() {
            kinds.push(DecoderKind::Taesd);
        }
        if self.vae.is_some() {
            kinds.push(DecoderKind::Vae);
        }
        kinds
    }

    fn size_multiple(&self) -> u32 {
        let levels = self.unet.config().block_out_channels.len().max(1) as u32;
        self.decoder_factor() * (1 << (levels - 1))
    }

    fn defaults(&self) -> ModelDefaults {
        self.defaults
    }

    fn latent_shape(&self, (w, h): (u32, u32)) -> [usize; 4] {
        let f = self.decoder_factor();
        [
            1,
            self.unet.in_channels(),
            (h / f) as usize,
            (w / f) as usize,
        ]
    }

    fn keyframe_latents(
        &self,
        request: &EndpointRequest,
        keyframe: usize,
        progress: &mut dyn FnMut(SamplingProgress) -> bool,
    ) -> std::result::Result<Tensor, EndpointError> {
        let keyframes = request.keyframes.len();
        let Some(source) = request.keyframes.get(keyframe) else {
            return Err(ModelError::Invalid(format!(
                "no keyframe {keyframe} in a request of {keyframes}"
            ))
            .into());
        };
        if request.steps == 0 {
            return Err(ModelError::Invalid("sampler steps must be at least 1".into()).into());
        }
        let (h, w) = self.latent_hw(request.image_size)?;
        let shape = [1, self.unet.in_channels(), h, w];
        let report = |step, steps| {
            progress(SamplingProgress {
                keyframe,
                keyframes,
                step,
                steps,
            })
        };
        match source {
            Keyframe::Prompt(prompt) => {
                let init = self.initial_noise(request, &shape, keyframe)?;
                self.sample(
                    prompt,
                    &request.negative,
                    &init,
                    request.steps,
                    request.guidance,
                    report,
                )
            }
            Keyframe::Image(image) => self.image_latents(
                image,
                request,
                &shape,
                || self.initial_noise(request, &shape, keyframe),
                report,
            ),
        }
    }

    fn can_diffuse(&self) -> bool {
        true
    }

    fn diffused_latents(
        &self,
        request: &EndpointRequest,
        pair: (usize, usize),
        t: f64,
        progress: &mut dyn FnMut(SamplingProgress) -> bool,
    ) -> std::result::Result<Tensor, EndpointError> {
        self.sample_diffused(request, pair, t, progress)
    }

    fn sampler_description(&self) -> String {
        self.sampling.description()
    }

    fn decoded_size(&self, image_size: (u32, u32), decoder: DecoderKind) -> (u32, u32) {
        let [_, _, h, w] = self.latent_shape(image_size);
        let factor = match decoder {
            DecoderKind::Taesd => self.taesd.as_ref().map(|t| t.upscale_factor()),
            DecoderKind::Vae => self.vae.as_ref().map(|v| v.upscale_factor()),
        };
        match factor {
            Some(f) => ((w * f) as u32, (h * f) as u32),
            None => image_size,
        }
    }

    fn prompt_tokens(&self, prompt: &str) -> Option<usize> {
        Some(self.tokenizer.token_count(prompt))
    }

    fn check_image_encoder(&self) -> Result<()> {
        self.image_encoder.get().map(|_| ())
    }

    fn taesd(&self) -> Option<&TaesdDecoder> {
        self.taesd.as_ref()
    }

    fn decode(&self, latents: &Tensor, decoder: DecoderKind) -> Result<RgbaImage> {
        match decoder {
            DecoderKind::Taesd => {
                let taesd = self.taesd.as_ref().ok_or_else(|| {
                    ModelError::Invalid("no TAESD decoder loaded (give --taesd)".into())
                })?;
                let mut images = taesd.decode_rgba(latents)?;
                images
                    .pop()
                    .ok_or_else(|| ModelError::Invalid("TAESD decoded no image".into()))
            }
            DecoderKind::Vae => {
                let vae = self
                    .vae
                    .as_ref()
                    .ok_or_else(|| ModelError::Invalid("this model has no full VAE".into()))?;
                image_from_decoded(&vae.decode(latents)?)
            }
        }
    }
}
