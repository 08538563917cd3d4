//! Picking the scheduler a model folder asks for, and the guided denoising loop that runs
//! any of them.

use std::sync::Arc;

use candle_core::Tensor;

use super::config::{PredictionType, SchedulerConfig};
use super::ddim::DdimScheduler;
use super::euler::EulerScheduler;
use super::{invalid, mul_scalar, LinearStep, Scheduler};
use crate::model::Result;

/// Which sampling method runs the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplerKind {
    /// Deterministic DDIM (eta = 0).
    Ddim,
    /// Euler, non-ancestral (no noise injected), as diffusers' `EulerDiscreteScheduler`.
    Euler,
}

impl SamplerKind {
    /// The sampler a model folder asks for: Euler when its scheduler is an
    /// `EulerDiscreteScheduler` (SD-Turbo), DDIM for everything else (DDIM, PNDM, ...).
    pub fn default_for(cfg: &SchedulerConfig) -> Self {
        match cfg.class_name.as_deref() {
            Some("EulerDiscreteScheduler") => Self::Euler,
            _ => Self::Ddim,
        }
    }
}

/// A scheduler of the chosen [`SamplerKind`], set up for a number of steps: the timesteps to
/// feed the model, and how to step the latents from one to the next.
///
/// The one place that maps a kind to its scheduler type, so callers pick a method by value
/// (from the model folder or a test) and never name the scheduler types.
#[derive(Debug, Clone)]
pub struct Sampler {
    kind: SamplerKind,
    scheduler: Arc<dyn Scheduler>,
}

impl Sampler {
    /// Sets up `kind` with the schedule of `cfg` for `num_steps` steps, as diffusers'
    /// `set_timesteps(num_steps)` does.
    ///
    /// Without `timestep_spacing` in the config, DDIM uses `leading` and Euler `linspace`,
    /// each scheduler class's default in diffusers.
    pub fn new(cfg: &SchedulerConfig, kind: SamplerKind, num_steps: usize) -> Result<Self> {
        let scheduler: Arc<dyn Scheduler> = match kind {
            SamplerKind::Ddim => Arc::new(DdimScheduler::new(cfg, num_steps)?),
            SamplerKind::Euler => Arc::new(EulerScheduler::new(cfg, num_steps)?),
        };
        Ok(Self { kind, scheduler })
    }

    /// The sampling method.
    pub fn kind(&self) -> SamplerKind {
        self.kind
    }
}

impl Scheduler for Sampler {
    fn prediction_type(&self) -> PredictionType {
        self.scheduler.prediction_type()
    }

    fn timesteps(&self) -> &[f64] {
        self.scheduler.timesteps()
    }

    fn num_steps(&self) -> usize {
        self.scheduler.num_steps()
    }

    fn init_noise_sigma(&self) -> f64 {
        self.scheduler.init_noise_sigma()
    }

    fn alphas_cumprod(&self) -> &[f64] {
        self.scheduler.alphas_cumprod()
    }

    fn sigmas(&self) -> Option<Vec<f64>> {
        self.scheduler.sigmas()
    }

    fn scale_model_input(&self, x: &Tensor, step_index: usize) -> Result<Tensor> {
        self.scheduler.scale_model_input(x, step_index)
    }

    fn step(&self, model_output: &Tensor, step_index: usize, sample: &Tensor) -> Result<Tensor> {
        self.scheduler.step(model_output, step_index, sample)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor> {
        self.scheduler.add_noise(original, noise, step_index)
    }

    fn linear_step(&self, step_index: usize) -> Result<LinearStep> {
        self.scheduler.linear_step(step_index)
    }

    fn predicted_original(
        &self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
    ) -> Result<Tensor> {
        self.scheduler
            .predicted_original(model_output, step_index, sample)
    }

    fn output_for_original(
        &self,
        original: &Tensor,
        step_index: usize,
        sample: &Tensor,
    ) -> Result<Tensor> {
        self.scheduler
            .output_for_original(original, step_index, sample)
    }
}

/// The sampling loop of diffusers' Stable Diffusion pipeline, for any model.
///
/// `init_latents` (unit-variance noise) is scaled by the scheduler's `init_noise_sigma`; then
/// for each step the model is asked for its prediction through `predict(input, timestep)`.
/// With `guidance_scale > 1` the input is the batch `cat([x, x])` and `predict` must pair its
/// first half with the unconditional context and its second half with the prompt's; the two
/// halves of the output are combined as `uncond + g * (cond - uncond)`. `on_step(i, n)` is
/// called after step `i` of `n` (for progress display). Returns the denoised latents.
pub fn denoise(
    scheduler: &dyn Scheduler,
    init_latents: &Tensor,
    guidance_scale: f64,
    predict: impl FnMut(&Tensor, f64) -> Result<Tensor>,
    on_step: impl FnMut(usize, usize),
) -> Result<Tensor> {
    // An f32 widened to f64: `mul_scalar` of the f32 gives the same bits.
    let x = mul_scalar(init_latents, scheduler.init_noise_sigma() as f32)?;
    denoise_from(scheduler, &x, 0, guidance_scale, predict, on_step)
}

/// [`denoise`]'s loop from step `first_step` on, starting from `latents` as they are at that
/// step (not scaled by `init_noise_sigma`): img2img's second half. `on_step(i, n)` is
/// called after each step run, `i` counting from the schedule's first step.
pub fn denoise_from(
    scheduler: &dyn Scheduler,
    latents: &Tensor,
    first_step: usize,
    guidance_scale: f64,
    mut predict: impl FnMut(&Tensor, f64) -> Result<Tensor>,
    mut on_step: impl FnMut(usize, usize),
) -> Result<Tensor> {
    let num_steps = scheduler.num_steps();
    let mut x = latents.clone();
    for (step_index, &t) in scheduler.timesteps().iter().enumerate().skip(first_step) {
        let input = scheduler.scale_model_input(&x, step_index)?;
        let output = guided_prediction(&input, t, guidance_scale, &mut predict)?;
        x = scheduler.step(&output, step_index, &x)?;
        on_step(step_index, num_steps);
    }
    Ok(x)
}

/// One classifier-free-guided model output, as [`denoise`] makes it at every step: with
/// `guidance_scale > 1` the model sees the batch `cat([input, input])` (its first half
/// paired with the unconditional context) and the halves are combined as
/// `uncond + g * (cond - uncond)`; otherwise it sees `input` alone.
pub fn guided_prediction(
    input: &Tensor,
    t: f64,
    guidance_scale: f64,
    predict: &mut impl FnMut(&Tensor, f64) -> Result<Tensor>,
) -> Result<Tensor> {
    if guidance_scale <= 1.0 {
        return predict(input, t);
    }
    let batch = input.dim(0)?;
    let out = predict(&Tensor::cat(&[input, input], 0)?, t)?;
    if out.dim(0)? != 2 * batch {
        return Err(invalid(format!(
            "guided prediction returned a batch of {}, expected {}",
            out.dim(0)?,
            2 * batch
        )));
    }
    let uncond = out.narrow(0, 0, batch)?;
    let cond = out.narrow(0, batch, batch)?;
    Ok((&uncond + ((&cond - &uncond)? * guidance_scale)?)?)
}
