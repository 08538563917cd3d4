//! diffusers' `DDIMScheduler` with eta = 0: deterministic steps for epsilon, v-prediction
//! and sample models; the sampler of SD 1.x/2.x folders (whatever scheduler class they name).

use candle_core::Tensor;

use super::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use super::schedule::{numpy_linspace, round_half_even, trailing_timesteps, train_alphas_cumprod};
use super::{check_step, div_scalar, invalid, mul_scalar, LinearStep, Scheduler};
use crate::model::Result;

/// DDIM (eta = 0) set up for a number of steps.
#[derive(Debug, Clone)]
pub struct DdimScheduler {
    prediction_type: PredictionType,
    timesteps: Vec<f64>,
    alphas_cumprod: Vec<f32>,
    alphas_cumprod_f64: Vec<f64>,
    /// `N / n` in integers: diffusers' DDIM steps back by this from any timestep.
    step_ratio: usize,
    /// alpha_cumprod used after the last step.
    final_alpha_cumprod: f32,
    /// Bound of the x0 clamp, when clipping.
    clip_sample_range: Option<f32>,
}

impl DdimScheduler {
    /// `(a_t, a_prev)` at step `step_index`: the cumulative alpha of its timestep and of the
    /// one the step goes to. As diffusers, the previous timestep is t - N/n even with
    /// trailing spacing, where it is not always the next timestep of the list.
    fn alphas_at(&self, step_index: usize) -> Result<(f32, f32)> {
        check_step(step_index, self.timesteps.len())?;
        let t = self.timesteps[step_index] as usize;
        let a_prev = match t.checked_sub(self.step_ratio) {
            Some(prev) => self.alphas_cumprod[prev],
            None => self.final_alpha_cumprod,
        };
        Ok((self.alphas_cumprod[t], a_prev))
    }

    /// The schedule of `cfg` for `num_steps` steps, as diffusers' `set_timesteps(num_steps)`
    /// does; `leading` spacing when the config names none (`DDIMScheduler`'s default).
    pub fn new(cfg: &SchedulerConfig, num_steps: usize) -> Result<Self> {
        let n_train = cfg.num_train_timesteps;
        let alphas_cumprod = train_alphas_cumprod(cfg, num_steps)?;
        let spacing = cfg.timestep_spacing.unwrap_or(TimestepSpacing::Leading);
        if cfg.thresholding {
            return Err(invalid(
                "DDIM with `thresholding` (dynamic thresholding) is not supported",
            ));
        }
        let timesteps = ddim_timesteps(spacing, n_train, num_steps, cfg.steps_offset);
        if let Some(&t) = timesteps.iter().find(|&&t| t >= n_train) {
            return Err(invalid(format!(
                "timestep {t} is past the last training timestep {} (steps_offset {} \
                         too large for {num_steps} steps)",
                n_train - 1,
                cfg.steps_offset
            )));
        }
        Ok(Self {
            prediction_type: cfg.prediction_type,
            timesteps: timesteps.into_iter().map(|t| t as f64).collect(),
            alphas_cumprod_f64: alphas_cumprod.iter().map(|&a| f64::from(a)).collect(),
            step_ratio: n_train / num_steps,
            final_alpha_cumprod: if cfg.set_alpha_to_one {
                1.0
            } else {
                alphas_cumprod[0]
            },
            clip_sample_range: cfg.clip_sample.then_some(cfg.clip_sample_range as f32),
            alphas_cumprod,
        })
    }
}

impl Scheduler for DdimScheduler {
    fn prediction_type(&self) -> PredictionType {
        self.prediction_type
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod_f64
    }

    /// DDIM feeds the model the latents as they are.
    fn scale_model_input(&self, x: &Tensor, step_index: usize) -> Result<Tensor> {
        check_step(step_index, self.timesteps.len())?;
        Ok(x.clone())
    }

    fn step(&self, model_output: &Tensor, step_index: usize, sample: &Tensor) -> Result<Tensor> {
        let (a_t, a_prev) = self.alphas_at(step_index)?;
        let (sqrt_a, sqrt_b) = (a_t.sqrt(), (1.0 - a_t).sqrt());
        let (x0, eps) = match self.prediction_type {
            PredictionType::Epsilon => {
                let x0 = div_scalar(&(sample - mul_scalar(model_output, sqrt_b)?)?, sqrt_a)?;
                (x0, model_output.clone())
            }
            PredictionType::Sample => {
                let eps = div_scalar(&(sample - mul_scalar(model_output, sqrt_a)?)?, sqrt_b)?;
                (model_output.clone(), eps)
            }
            PredictionType::VPrediction => {
                let x0 = (mul_scalar(sample, sqrt_a)? - mul_scalar(model_output, sqrt_b)?)?;
                let eps = (mul_scalar(model_output, sqrt_a)? + mul_scalar(sample, sqrt_b)?)?;
                (x0, eps)
            }
        };
        let x0 = match self.clip_sample_range {
            Some(r) => x0.clamp(-r, r)?,
            None => x0,
        };
        // eta = 0: no noise term, the direction to x_t takes all of 1 - a_prev.
        let direction = mul_scalar(&eps, (1.0 - a_prev).sqrt())?;
        Ok((mul_scalar(&x0, a_prev.sqrt())? + direction)?)
    }

    fn linear_step(&self, step_index: usize) -> Result<LinearStep> {
        let (a_t, a_prev) = self.alphas_at(step_index)?;
        let (sqrt_a, sqrt_b) = (a_t.sqrt(), (1.0 - a_t).sqrt());
        // x' = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps, with x0 and eps as `step` has them.
        let (beta, c) = (a_prev.sqrt(), (1.0 - a_prev).sqrt());
        let (p, q, alpha, gamma) = match self.prediction_type {
            // x0 = (x - sqrt_b e) / sqrt_a, eps = e
            PredictionType::Epsilon => (1.0 / sqrt_a, -sqrt_b / sqrt_a, 0.0, c),
            // x0 = e, eps = (x - sqrt_a e) / sqrt_b
            PredictionType::Sample => (0.0, 1.0, c / sqrt_b, -c * sqrt_a / sqrt_b),
            // x0 = sqrt_a x - sqrt_b e, eps = sqrt_a e + sqrt_b x
            PredictionType::VPrediction => (sqrt_a, -sqrt_b, c * sqrt_b, c * sqrt_a),
        };
        Ok(LinearStep {
            input_scale: 1.0,
            p,
            q,
            clamp: self.clip_sample_range,
            alpha,
            beta,
            gamma,
        })
    }

    fn predicted_original(
        &self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
    ) -> Result<Tensor> {
        let (sqrt_a, sqrt_b) = self.signal_and_noise(step_index)?;
        Ok(match self.prediction_type {
            PredictionType::Epsilon => {
                div_scalar(&(sample - mul_scalar(model_output, sqrt_b)?)?, sqrt_a)?
            }
            PredictionType::Sample => model_output.clone(),
            PredictionType::VPrediction => {
                (mul_scalar(sample, sqrt_a)? - mul_scalar(model_output, sqrt_b)?)?
            }
        })
    }

    fn output_for_original(
        &self,
        original: &Tensor,
        step_index: usize,
        sample: &Tensor,
    ) -> Result<Tensor> {
        let (sqrt_a, sqrt_b) = self.signal_and_noise(step_index)?;
        Ok(match self.prediction_type {
            // eps = (x - sqrt(a) x0) / sqrt(1 - a)
            PredictionType::Epsilon => {
                div_scalar(&(sample - mul_scalar(original, sqrt_a)?)?, sqrt_b)?
            }
            PredictionType::Sample => original.clone(),
            // v = (sqrt(a) x - x0) / sqrt(1 - a)
            PredictionType::VPrediction => {
                div_scalar(&(mul_scalar(sample, sqrt_a)? - original)?, sqrt_b)?
            }
        })
    }

    /// diffusers' `DDIMScheduler.add_noise` (float32): `sqrt(a_t) x + sqrt(1 - a_t) noise`
    /// at the step's timestep `t`.
    fn add_noise(&self, original: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor> {
        check_step(step_index, self.timesteps.len())?;
        let a_t = self.alphas_cumprod[self.timesteps[step_index] as usize];
        let signal = mul_scalar(original, a_t.sqrt())?;
        Ok((signal + mul_scalar(noise, (1.0 - a_t).sqrt())?)?)
    }
}

impl DdimScheduler {
    /// `(sqrt(a_t), sqrt(1 - a_t))` at step `step_index`: how much of the clean sample and
    /// of the noise the latents there hold.
    fn signal_and_noise(&self, step_index: usize) -> Result<(f32, f32)> {
        check_step(step_index, self.timesteps.len())?;
        let a_t = self.alphas_cumprod[self.timesteps[step_index] as usize];
        Ok((a_t.sqrt(), (1.0 - a_t).sqrt()))
    }
}

/// diffusers `DDIMScheduler.set_timesteps`, noisiest first.
fn ddim_timesteps(
    spacing: TimestepSpacing,
    n_train: usize,
    num_steps: usize,
    steps_offset: usize,
) -> Vec<usize> {
    match spacing {
        TimestepSpacing::Leading => {
            let ratio = n_train / num_steps;
            (0..num_steps)
                .rev()
                .map(|i| i * ratio + steps_offset)
                .collect()
        }
        TimestepSpacing::Trailing => trailing_timesteps(n_train, num_steps)
            .into_iter()
            .map(|t| t as usize)
            .collect(),
        TimestepSpacing::Linspace => numpy_linspace(n_train, num_steps)
            .into_iter()
            .rev()
            .map(|t| round_half_even(t) as usize)
            .collect(),
    }
}
