//! What the pipeline needs from a model, as a trait, with the request and progress types
//! that cross the boundary: the pipeline and the viewer depend on this, not on a model.

use super::decoders::{DecoderKind, TaesdDecoder};
use super::keyframe::Keyframe;
use super::{ModelError, Result};

/// Everything that decides the keyframe latents: a change to any of it means sampling
/// the endpoints again.
#[derive(Clone, Debug)]
pub struct EndpointRequest {
    /// The keyframes in walk order (two or more for a walk): prompts, pictures.
    pub keyframes: Vec<Keyframe>,
    /// The negative prompt (the "unconditional" side of classifier-free guidance).
    pub negative: String,
    /// Seed of the initial noise: the same seed and prompts give the same keyframes.
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
    /// another tool's run); an image keyframe's img2img noise is these too.
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
        self.keyframes == other.keyframes
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
    /// Sampler steps per keyframe.
    pub steps: usize,
    /// Classifier-free guidance scale (0 for few-step models such as SD-Turbo).
    pub guidance: f64,
}

/// Sampling progress, reported after each sampler step. An img2img keyframe starts part
/// way: its first report has `step` above 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SamplingProgress {
    /// 0-based keyframe being sampled, of `keyframes`.
    pub keyframe: usize,
    /// Keyframes in the request.
    pub keyframes: usize,
    /// Steps done for this keyframe, of `steps`.
    pub step: usize,
    /// Steps per keyframe.
    pub steps: usize,
}

/// Why sampling stopped early.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The caller asked to stop (a newer request, or shutdown).
    #[error("cancelled")]
    Cancelled,
    /// The model failed (a bad request or a bad file).
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
/// Implemented by [`StableDiffusion`](super::StableDiffusion) for real weights and the
/// built-in demo model alike; tests may implement it with something simpler.
pub trait Engine: Send + Sync + 'static {
    /// A name for the window and the logs ("demo model (random weights)" for the demo).
    fn name(&self) -> String;
    /// The decoders this model has.
    fn decoders(&self) -> Vec<DecoderKind>;
    /// Image sides must be multiples of this (decoder factor x UNet down-sampling).
    fn size_multiple(&self) -> u32;
    /// What a walk on this model starts from.
    fn defaults(&self) -> ModelDefaults;
    /// The shape (1, latent channels, h/f, w/f) of one keyframe's latents for an image of
    /// `image_size` (width, height), `f` the decoder's factor: what `--init-latents` must be.
    fn latent_shape(&self, image_size: (u32, u32)) -> [usize; 4];
    /// Samples the latents of keyframe `index` of `request` alone: the tensor
    /// [`Self::endpoints`] gives for it (its noise is `seed + index` with
    /// `seed_per_keyframe`), so a walk whose other keyframes did not change samples only
    /// this one. `progress` is called after each sampler step (once for a picture used as it
    /// is), with `keyframe: index`, and returns `false` to cancel.
    fn keyframe_latents(
        &self,
        request: &EndpointRequest,
        index: usize,
        progress: &mut dyn FnMut(SamplingProgress) -> bool,
    ) -> Result<candle_core::Tensor, EndpointError>;
    /// Samples one latent per keyframe, in walk order ([`Self::keyframe_latents`] for each).
    /// `progress` is called after each sampler step and returns `false` to cancel.
    fn endpoints(
        &self,
        request: &EndpointRequest,
        progress: &mut dyn FnMut(SamplingProgress) -> bool,
    ) -> Result<Vec<candle_core::Tensor>, EndpointError> {
        if request.keyframes.is_empty() {
            return Err(ModelError::Invalid("no keyframe to sample".into()).into());
        }
        (0..request.keyframes.len())
            .map(|index| self.keyframe_latents(request, index, progress))
            .collect()
    }
    /// Whether [`Self::diffused_latents`] can run on this model (`render --diffuse`, the
    /// viewer's Refine).
    fn can_diffuse(&self) -> bool {
        false
    }
    /// Samples a walk position between keyframes `pair.0` and `pair.1` of `request` at
    /// fraction `t` (0 is `pair.0`, 1 is `pair.1`), as a keyframe is sampled: the two
    /// prompts' conditioning blended (weights `1 - t`, `t`), the two keyframes' initial
    /// noises slerped at `t`, then the model's own sampler, steps and guidance.
    /// `progress` is called after each sampler step with `keyframe: pair.0` and returns
    /// `false` to cancel. Models that cannot say so (the default).
    fn diffused_latents(
        &self,
        _request: &EndpointRequest,
        _pair: (usize, usize),
        _t: f64,
        _progress: &mut dyn FnMut(SamplingProgress) -> bool,
    ) -> Result<candle_core::Tensor, EndpointError> {
        Err(ModelError::Invalid(format!(
            "{} cannot sample in-betweens (diffused positions)",
            self.name()
        ))
        .into())
    }
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
    /// The size (width, height) of the frames `decoder` makes for a request of `image_size`:
    /// the latents' size times the decoder's own factor, which may differ from the factor
    /// the latents were sized by (a TAESD on a model whose VAE scales by 2).
    fn decoded_size(&self, image_size: (u32, u32), _decoder: DecoderKind) -> (u32, u32) {
        image_size
    }
    /// How many tokens the text encoder makes of `prompt` (start and end included) before
    /// it cuts to [`crate::model::MAX_PROMPT_TOKENS`]; `None` when the engine has no tokenizer.
    fn prompt_tokens(&self, _prompt: &str) -> Option<usize> {
        None
    }
    /// Loads what turns pictures into latents (once; later calls are free), so that a walk
    /// with picture keyframes is refused before it starts when the model cannot encode
    /// them. The error names the file. Engines without pictures' support say `Ok`.
    fn check_image_encoder(&self) -> Result<()> {
        Ok(())
    }
    /// The TAESD weights, for decoders elsewhere (the GPU's); `None` when there is none.
    fn taesd(&self) -> Option<&TaesdDecoder> {
        None
    }
    /// Where keyframes are sampled, for the window ("sampling on the CPU").
    fn sampler_description(&self) -> String {
        "sampling on the CPU".to_string()
    }
    /// Which decoder runs and where, for the window ("TAESD on the CPU").
    fn decoder_description(&self, decoder: DecoderKind) -> String {
        format!("{} on the CPU", decoder.label())
    }
}
