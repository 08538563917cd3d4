//! What a user can change while the walk plays, and the one place that says whether a set of
//! values can run on a model. The command line, the window and the bench all build a
//! [`Settings`] and ask [`Settings::validate`] before anything starts, so the rules (and their
//! messages) cannot drift apart.

use std::path::PathBuf;

use crate::model::schedulers::img2img_first_step;
use crate::model::text::{MixError, PromptMix};
use crate::model::{DecoderKind, EndpointRequest, Engine, Keyframe};
use crate::upscale::UpscaleMode;
use crate::walk::WalkSettings;

use super::Inbetweens;

pub use crate::frame::MAX_IMAGE_SIDE;

/// The most sampler steps a keyframe may take (diffusers' schedulers train on 1000 steps).
pub const MAX_SAMPLER_STEPS: usize = 1000;

/// The largest guidance scale magnitude accepted: past a few tens the images are noise, and
/// much larger values overflow the sampler's f32 arithmetic.
pub const MAX_GUIDANCE: f64 = 100.0;

/// The most laps a headless render may ask for (a ping-pong or endless walk): enough for
/// days of video, small enough that frame counters cannot overflow.
pub const MAX_LAPS: u64 = 1_000_000;

/// Everything a user can change, live.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Prompts, seed, sampler steps, guidance, image size: a change samples new endpoints.
    pub endpoints: EndpointRequest,
    pub walk: WalkSettings,
    pub decoder: DecoderKind,
    pub inbetweens: Inbetweens,
    pub target_fps: f64,
    pub upscale: UpscaleMode,
    /// Output size (width, height) when upscaling.
    pub output_size: (u32, u32),
    /// Diffused in-betweens per keyframe pair: walk positions sampled for real (blended
    /// conditioning, slerped noise) instead of slerped, placed where the decoded frames
    /// differ most; 0 for none. Below `steps_between`, on a model that can, between prompt
    /// keyframes.
    pub diffuse: usize,
}

/// Why a set of [`Settings`] cannot run, in words a user can act on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SettingsError {
    #[error(
        "a walk needs two or more prompts (keyframes): give --prompt or --keyframe twice or more"
    )]
    TooFewPrompts,
    /// Which prompt, 1-based.
    #[error("prompt {0} is empty")]
    EmptyPrompt(usize),
    #[error("--steps-between must be at least 1")]
    NoStepsBetween,
    #[error("sampler steps must be between 1 and {MAX_SAMPLER_STEPS}, not {0}")]
    SamplerSteps(usize),
    #[error(
        "guidance must be a finite number between -{MAX_GUIDANCE} and {MAX_GUIDANCE}, not {0}"
    )]
    Guidance(f64),
    #[error("--laps must be between 1 and {MAX_LAPS}, not {0}")]
    Laps(u64),
    /// `--init-latents` of the wrong shape for the requested image size.
    #[error(
        "initial latents have shape {got:?}, but {}x{} images on this model need {expected:?} \
         (1, latent channels, height/{factor}, width/{factor})",
        size.0,
        size.1
    )]
    InitLatents {
        got: Vec<usize>,
        expected: [usize; 4],
        size: (u32, u32),
        factor: u32,
    },
    #[error("frame rate must be a positive number, not {0}")]
    TargetFps(f64),
    /// The decoded size (width, height) and the multiple this model needs.
    #[error(
        "source size {}x{}: both sides must be non-zero multiples of {multiple} for this model, \
         at most {MAX_IMAGE_SIDE}",
        size.0,
        size.1
    )]
    SourceSize { size: (u32, u32), multiple: u32 },
    #[error("output size {}x{}: both sides must be between 1 and {MAX_IMAGE_SIDE}", .0.0, .0.1)]
    OutputSize((u32, u32)),
    #[error("this model has no {} decoder", .0.label())]
    NoDecoder(DecoderKind),
    /// The model cannot encode pictures (no VAE encoder, no TAESD encoder): why.
    #[error("this model cannot turn pictures into keyframes: {0}")]
    ImageEncoder(String),
    /// A keyframe whose prompt is a mix that cannot run (`"a fox:0 | a wolf:0"`): which
    /// (1-based), its prompt, and which part or weight is wrong.
    #[error("keyframe {index} (\"{prompt}\"): {problem}")]
    PromptMix {
        index: usize,
        prompt: String,
        problem: MixError,
    },
    /// More diffused in-betweens per pair than the pair has positions between its keyframes.
    #[error(
        "--diffuse {diffuse}: a keyframe pair walked in {steps_between} steps has \
         {} positions between its keyframes, so --diffuse must be below --steps-between",
        steps_between.saturating_sub(1)
    )]
    DiffuseCount {
        diffuse: usize,
        steps_between: usize,
    },
    /// Diffused in-betweens asked of a model that cannot sample them (its name).
    #[error("--diffuse {diffuse}: {model} cannot sample in-betweens")]
    DiffuseModel { diffuse: usize, model: String },
    /// Diffused in-betweens next to a picture keyframe: which (1-based) and its file.
    #[error(
        "--diffuse {diffuse}: keyframe {index} is a picture ({}); in-betweens are diffused \
         only between prompt keyframes (a picture has no prompt to blend)",
        path.display()
    )]
    DiffusePicture {
        diffuse: usize,
        index: usize,
        path: PathBuf,
    },
    /// An image keyframe that cannot run: which (1-based), its file, and why.
    #[error("keyframe {index} ({}): {problem}", path.display())]
    ImageKeyframe {
        index: usize,
        path: PathBuf,
        problem: String,
    },
}

impl Settings {
    /// Checks every value against `engine` before any work starts: the first problem found.
    pub fn validate(&self, engine: &dyn Engine) -> Result<(), SettingsError> {
        let endpoints = &self.endpoints;
        if endpoints.keyframes.len() < 2 {
            return Err(SettingsError::TooFewPrompts);
        }
        let empty = |k: &Keyframe| matches!(k, Keyframe::Prompt(p) if p.trim().is_empty());
        if let Some(i) = endpoints.keyframes.iter().position(empty) {
            return Err(SettingsError::EmptyPrompt(i + 1));
        }
        check_prompt_mixes(endpoints)?;
        if self.walk.steps_between == 0 {
            return Err(SettingsError::NoStepsBetween);
        }
        if !(1..=MAX_SAMPLER_STEPS).contains(&endpoints.steps) {
            return Err(SettingsError::SamplerSteps(endpoints.steps));
        }
        if !(endpoints.guidance.is_finite() && endpoints.guidance.abs() <= MAX_GUIDANCE) {
            return Err(SettingsError::Guidance(endpoints.guidance));
        }
        check_image_keyframes(endpoints)?;
        if !(self.target_fps.is_finite() && self.target_fps > 0.0) {
            return Err(SettingsError::TargetFps(self.target_fps));
        }
        check_source_size(endpoints.image_size, engine.size_multiple())?;
        if let Some(init) = &endpoints.init_latents {
            let expected = engine.latent_shape(endpoints.image_size);
            if init.dims() != expected {
                let (w, h) = endpoints.image_size;
                return Err(SettingsError::InitLatents {
                    got: init.dims().to_vec(),
                    expected,
                    size: endpoints.image_size,
                    // The image's side over the latents' (the decoder's factor).
                    factor: (w as usize / expected[3].max(1)).max(h as usize / expected[2].max(1))
                        as u32,
                });
            }
        }
        let (w, h) = self.output_size;
        if !(1..=MAX_IMAGE_SIDE).contains(&w) || !(1..=MAX_IMAGE_SIDE).contains(&h) {
            return Err(SettingsError::OutputSize(self.output_size));
        }
        if !engine.decoders().contains(&self.decoder) {
            return Err(SettingsError::NoDecoder(self.decoder));
        }
        if endpoints.keyframes.iter().any(|k| k.image().is_some()) {
            engine
                .check_image_encoder()
                .map_err(|e| SettingsError::ImageEncoder(e.to_string()))?;
        }
        self.check_diffuse(engine)
    }

    /// The rules for diffused in-betweens: fewer per pair than its inner positions, on a
    /// model that can sample them, between prompt keyframes only.
    fn check_diffuse(&self, engine: &dyn Engine) -> Result<(), SettingsError> {
        let diffuse = self.diffuse;
        if diffuse == 0 {
            return Ok(());
        }
        if diffuse >= self.walk.steps_between {
            return Err(SettingsError::DiffuseCount {
                diffuse,
                steps_between: self.walk.steps_between,
            });
        }
        if !engine.can_diffuse() {
            return Err(SettingsError::DiffuseModel {
                diffuse,
                model: engine.name(),
            });
        }
        let keyframes = &self.endpoints.keyframes;
        if let Some((i, image)) = keyframes
            .iter()
            .enumerate()
            .find_map(|(i, k)| Some((i, k.image()?)))
        {
            return Err(SettingsError::DiffusePicture {
                diffuse,
                index: i + 1,
                path: image.path.clone(),
            });
        }
        Ok(())
    }
}

impl Settings {
    /// What will run but not as the user may think, one sentence each: prompts longer than
    /// the text encoder reads (CLIP reads 77 tokens, its start and end tokens included).
    /// Each part of a prompt mix is read on its own, so each is counted.
    pub fn warnings(&self, engine: &dyn Engine) -> Vec<String> {
        let limit = crate::model::MAX_PROMPT_TOKENS;
        self.endpoints
            .keyframes
            .iter()
            .enumerate()
            .filter_map(|(i, keyframe)| {
                let prompt = keyframe.prompt();
                let texts = match PromptMix::parse(prompt) {
                    Some(mix) => mix.parts.into_iter().map(|p| p.text).collect(),
                    None => vec![prompt.to_string()],
                };
                let tokens = texts
                    .iter()
                    .filter_map(|text| engine.prompt_tokens(text))
                    .max()?;
                (tokens > limit).then(|| {
                    format!(
                        "prompt {} is {tokens} tokens: the text encoder reads only the first \
                         {limit} (start and end tokens included), the rest is ignored",
                        i + 1
                    )
                })
            })
            .collect()
    }
}

/// The rules for prompt mixes (`"a fox:0.7 | a wolf:0.3"`): every part has text, every
/// weight is 0 or more, and they sum to more than 0. An image keyframe's prompt is checked
/// when it is used (strength above 0).
fn check_prompt_mixes(endpoints: &EndpointRequest) -> Result<(), SettingsError> {
    for (i, keyframe) in endpoints.keyframes.iter().enumerate() {
        let used = match keyframe {
            Keyframe::Prompt(_) => true,
            Keyframe::Image(image) => image.strength > 0.0,
        };
        let Some(mix) = PromptMix::parse(keyframe.prompt()).filter(|_| used) else {
            continue;
        };
        mix.check().map_err(|problem| SettingsError::PromptMix {
            index: i + 1,
            prompt: keyframe.prompt().to_string(),
            problem,
        })?;
    }
    Ok(())
}

/// The rules for image keyframes: a picture with pixels, a strength in [0, 1] that, above 0,
/// runs at least one sampler step (diffusers' img2img runs `int(steps x strength)`).
fn check_image_keyframes(endpoints: &EndpointRequest) -> Result<(), SettingsError> {
    for (i, keyframe) in endpoints.keyframes.iter().enumerate() {
        let Some(image) = keyframe.image() else {
            continue;
        };
        let problem = |problem: String| SettingsError::ImageKeyframe {
            index: i + 1,
            path: image.path.clone(),
            problem,
        };
        let (w, h) = (image.pixels.width, image.pixels.height);
        if w == 0 || h == 0 {
            return Err(problem(format!("an image of zero size ({w}x{h})")));
        }
        let strength = image.strength;
        if !(0.0..=1.0).contains(&strength) {
            return Err(problem(format!(
                "strength must be between 0 and 1, not {strength}"
            )));
        }
        let steps = endpoints.steps;
        if strength > 0.0 && img2img_first_step(steps, strength) >= steps {
            return Err(problem(format!(
                "strength {strength} with {steps} sampler steps runs no step (steps x strength \
                 must be at least 1): raise the strength or the steps, or use 0 for the \
                 picture as it is"
            )));
        }
    }
    Ok(())
}

/// The rule for a headless render's laps: 1 to [`MAX_LAPS`].
pub fn check_laps(laps: u64) -> Result<(), SettingsError> {
    if (1..=MAX_LAPS).contains(&laps) {
        Ok(())
    } else {
        Err(SettingsError::Laps(laps))
    }
}

/// The rule for a decoded (source) size: sides non-zero multiples of `multiple` (the
/// decoder's factor times the UNet's down-sampling), at most [`MAX_IMAGE_SIDE`].
pub fn check_source_size(size: (u32, u32), multiple: u32) -> Result<(), SettingsError> {
    let fits = |side: u32| side > 0 && side <= MAX_IMAGE_SIDE && side.is_multiple_of(multiple);
    if fits(size.0) && fits(size.1) {
        Ok(())
    } else {
        Err(SettingsError::SourceSize { size, multiple })
    }
}
