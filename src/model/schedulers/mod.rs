//! Samplers: DDIM (eta = 0; epsilon, v-prediction or sample models) and non-ancestral Euler
//! (the SD-Turbo recipe), reproducing diffusers' `DDIMScheduler` and `EulerDiscreteScheduler`
//! number for number, plus the classifier-free-guided denoising loop ([`denoise`]) and
//! diffusers' img2img start ([`img2img`]: a picture's latents noised part way, then denoised).
//!
//! Written here rather than taken from candle-transformers 0.11, whose DDIM step is right but
//! whose timesteps are not diffusers': its `trailing` spacing counts down by `N / n` in integers,
//! so when `N` is not a multiple of the step count it yields the wrong steps (3 steps:
//! `[999, 666, 333, 0]` where diffusers has `[999, 666, 332]`), its `linspace` spacing truncates
//! where diffusers rounds, and it has no non-ancestral Euler sampler at all.
//!
//! The schedules are computed the way diffusers computes them, down to float32 rounding: the
//! betas as torch's float32 `linspace` (which the compiler fuses into one multiply-add), the
//! cumulative product accumulated in float64 and stored as float32 (torch's CPU `cumprod`),
//! numpy's round-half-to-even for the timesteps.
//!
//! One file per scheduler behind the [`Scheduler`] trait; [`Sampler`] picks one by
//! [`SamplerKind`]. The shared training schedule is in `schedule.rs`, the config in
//! `config.rs`.

mod config;
mod ddim;
mod euler;
mod img2img;
mod linear;
mod sampler;
mod schedule;

use candle_core::Tensor;

use crate::model::{ModelError, Result};

pub use config::{BetaSchedule, PredictionType, SchedulerConfig, TimestepSpacing};
pub use ddim::DdimScheduler;
pub use euler::EulerScheduler;
pub use img2img::{img2img, img2img_first_step};
pub use linear::LinearStep;
pub use sampler::{denoise, denoise_from, guided_prediction, Sampler, SamplerKind};

/// A sampling method set up for a number of steps: what [`denoise`] needs to run it.
///
/// Step indices count the sampler's own steps (0 is the noisiest); every method refuses an
/// index past the last step rather than reading past its tables.
pub trait Scheduler: std::fmt::Debug + Send + Sync {
    /// What the model is expected to predict.
    fn prediction_type(&self) -> PredictionType;

    /// The timesteps to give the model, one per step, noisiest first. Integral for DDIM;
    /// Euler's can be fractional (`linspace` spacing), which the UNet embedding accepts.
    fn timesteps(&self) -> &[f64];

    /// Number of steps.
    fn num_steps(&self) -> usize {
        self.timesteps().len()
    }

    /// What initial unit-variance noise is multiplied by before the first step.
    fn init_noise_sigma(&self) -> f64;

    /// Cumulative products of `1 - beta` over the training timesteps (float32 values).
    fn alphas_cumprod(&self) -> &[f64];

    /// The sigma of each step, then the final one (0), for sigma-based methods (Euler);
    /// `None` for the others (DDIM).
    fn sigmas(&self) -> Option<Vec<f64>> {
        None
    }

    /// The model input at step `step_index`, from the latents there.
    fn scale_model_input(&self, x: &Tensor, step_index: usize) -> Result<Tensor>;

    /// One step: from `sample` at step `step_index` and the (guided) model output there, the
    /// latents at the next step (after the last step: the denoised latents).
    fn step(&self, model_output: &Tensor, step_index: usize, sample: &Tensor) -> Result<Tensor>;

    /// [`Self::scale_model_input`] and [`Self::step`] at `step_index` as the scalars of a
    /// [`LinearStep`], for devices that run the loop without candle (the GPU).
    fn linear_step(&self, step_index: usize) -> Result<LinearStep>;

    /// `original` (clean latents) noised with unit-variance `noise` to the noise level of step
    /// `step_index`, as diffusers' `add_noise` does where img2img starts sampling: the
    /// latents [`Self::step`] expects at that step.
    fn add_noise(&self, original: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor>;

    /// The clean sample that `model_output` at step `step_index` implies for `sample` (the
    /// latents there): diffusers' `pred_original_sample`, the quantity [`Self::step`] moves
    /// toward. Tiled denoising estimates each tile's remaining noise on it.
    fn predicted_original(
        &self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
    ) -> Result<Tensor>;

    /// The inverse of [`Self::predicted_original`]: the model output that implies `original`
    /// for `sample` at step `step_index`. Stepping with it carries `sample` toward `original`
    /// along the sampler's own path, which is how a tile that stopped refining keeps its
    /// clean estimate while the steps go on.
    fn output_for_original(
        &self,
        original: &Tensor,
        step_index: usize,
        sample: &Tensor,
    ) -> Result<Tensor>;
}

/// The training schedule's `alphas_cumprod` for `cfg` (float32, as diffusers computes them):
/// what a scheduler that only adds noise (the x4 upscaler's `low_res_scheduler`) needs.
pub fn training_alphas_cumprod(cfg: &SchedulerConfig) -> Result<Vec<f32>> {
    schedule::train_alphas_cumprod(cfg, 1)
}

/// Refuses a step index past the last of `num_steps` steps.
fn check_step(step_index: usize, num_steps: usize) -> Result<()> {
    if step_index >= num_steps {
        return Err(invalid(format!(
            "step index {step_index} out of range: the sampler has {num_steps} steps"
        )));
    }
    Ok(())
}

fn invalid(message: impl Into<String>) -> ModelError {
    ModelError::Invalid(message.into())
}

/// `x * s` with a float32 scalar, as torch multiplies by a 0-d float32 tensor.
fn mul_scalar(x: &Tensor, s: f32) -> candle_core::Result<Tensor> {
    x.affine(f64::from(s), 0.0)
}

/// `x / s`, a true division (candle's `x / f64` multiplies by the reciprocal, which can differ
/// from torch in the last bit).
fn div_scalar(x: &Tensor, s: f32) -> candle_core::Result<Tensor> {
    x.broadcast_div(&Tensor::new(s, x.device())?.to_dtype(x.dtype())?)
}
