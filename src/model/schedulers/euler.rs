//! diffusers' `EulerDiscreteScheduler`, non-ancestral (no noise injected between steps):
//! SD-Turbo's one-step recipe.

use candle_core::{DType, Tensor};

use super::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use super::schedule::{numpy_linspace, trailing_timesteps, train_alphas_cumprod};
use super::{check_step, div_scalar, invalid, mul_scalar, LinearStep, Scheduler};
use crate::model::Result;

/// Euler (non-ancestral) set up for a number of steps.
#[derive(Debug, Clone)]
pub struct EulerScheduler {
    prediction_type: PredictionType,
    timesteps: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    init_noise_sigma: f32,
    /// sigma at each step, then the final sigma (`timesteps.len() + 1` values).
    sigmas: Vec<f32>,
}

impl EulerScheduler {
    /// The schedule of `cfg` for `num_steps` steps, as diffusers' `set_timesteps(num_steps)`
    /// does; `linspace` spacing when the config names none (`EulerDiscreteScheduler`'s
    /// default).
    pub fn new(cfg: &SchedulerConfig, num_steps: usize) -> Result<Self> {
        let n_train = cfg.num_train_timesteps;
        let mut alphas_cumprod = train_alphas_cumprod(cfg, num_steps)?;
        let spacing = cfg.timestep_spacing.unwrap_or(TimestepSpacing::Linspace);
        check_options(cfg)?;
        if cfg.rescale_betas_zero_snr {
            // diffusers: keeps the last sigma finite (alpha_cumprod 0 would give inf).
            if let Some(last) = alphas_cumprod.last_mut() {
                *last = 2f32.powi(-24);
            }
        }
        let timesteps = euler_timesteps(spacing, n_train, num_steps, cfg.steps_offset);
        let table: Vec<f32> = alphas_cumprod
            .iter()
            .map(|&a| ((1.0 - a) / a).sqrt())
            .collect();
        let mut sigmas: Vec<f32> = timesteps
            .iter()
            .map(|&t| interp(f64::from(t), &table) as f32)
            .collect();
        let final_sigma = match cfg.final_sigmas_type.as_deref() {
            Some("sigma_min") => table[0],
            _ => 0.0,
        };
        sigmas.push(final_sigma);
        let max_sigma = sigmas.iter().copied().fold(f32::MIN, f32::max);
        // diffusers: with linspace/trailing spacing the first step is the pure-noise
        // end, where x = sigma * noise; with leading it is sqrt(sigma^2 + 1).
        let init_noise_sigma = match spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max_sigma,
            TimestepSpacing::Leading => (max_sigma * max_sigma + 1.0).sqrt(),
        };
        let continuous = cfg.timestep_type.as_deref() == Some("continuous")
            && cfg.prediction_type == PredictionType::VPrediction;
        let timesteps = if continuous {
            sigmas[..num_steps]
                .iter()
                .map(|s| f64::from(0.25 * s.ln()))
                .collect()
        } else {
            timesteps.into_iter().map(f64::from).collect()
        };
        Ok(Self {
            prediction_type: cfg.prediction_type,
            timesteps,
            alphas_cumprod: alphas_cumprod.iter().map(|&a| f64::from(a)).collect(),
            init_noise_sigma,
            sigmas,
        })
    }
}

impl Scheduler for EulerScheduler {
    fn prediction_type(&self) -> PredictionType {
        self.prediction_type
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        f64::from(self.init_noise_sigma)
    }

    fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }

    fn sigmas(&self) -> Option<Vec<f64>> {
        Some(self.sigmas.iter().map(|&s| f64::from(s)).collect())
    }

    /// Euler divides the latents by `sqrt(sigma^2 + 1)`.
    fn scale_model_input(&self, x: &Tensor, step_index: usize) -> Result<Tensor> {
        check_step(step_index, self.timesteps.len())?;
        let sigma = self.sigmas[step_index];
        Ok(div_scalar(x, (sigma * sigma + 1.0).sqrt())?)
    }

    fn step(&self, model_output: &Tensor, step_index: usize, sample: &Tensor) -> Result<Tensor> {
        check_step(step_index, self.timesteps.len())?;
        let (sigma, sigma_next) = (self.sigmas[step_index], self.sigmas[step_index + 1]);
        let sample = sample.to_dtype(DType::F32)?;
        let x0 = match self.prediction_type {
            PredictionType::Epsilon => (&sample - mul_scalar(model_output, sigma)?)?,
            PredictionType::VPrediction => {
                let c_out = -sigma / (sigma * sigma + 1.0).sqrt();
                (mul_scalar(model_output, c_out)? + div_scalar(&sample, sigma * sigma + 1.0)?)?
            }
            PredictionType::Sample => model_output.clone(),
        };
        // The ODE derivative dx/dsigma, then one Euler step to the next sigma; written
        // as diffusers does so the float32 rounding is the same.
        let derivative = div_scalar(&(&sample - x0)?, sigma)?;
        Ok((&sample + mul_scalar(&derivative, sigma_next - sigma)?)?)
    }

    fn linear_step(&self, step_index: usize) -> Result<LinearStep> {
        check_step(step_index, self.timesteps.len())?;
        let (sigma, sigma_next) = (self.sigmas[step_index], self.sigmas[step_index + 1]);
        let (p, q) = match self.prediction_type {
            PredictionType::Epsilon => (1.0, -sigma),
            PredictionType::VPrediction => (
                1.0 / (sigma * sigma + 1.0),
                -sigma / (sigma * sigma + 1.0).sqrt(),
            ),
            PredictionType::Sample => (0.0, 1.0),
        };
        // x' = x + (x - x0) / sigma * (sigma_next - sigma) = (1 + d) x - d x0.
        let d = (sigma_next - sigma) / sigma;
        Ok(LinearStep {
            input_scale: 1.0 / (sigma * sigma + 1.0).sqrt(),
            p,
            q,
            clamp: None,
            alpha: 1.0 + d,
            beta: -d,
            gamma: 0.0,
        })
    }

    fn predicted_original(
        &self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
    ) -> Result<Tensor> {
        check_step(step_index, self.timesteps.len())?;
        let sigma = self.sigmas[step_index];
        let sample = sample.to_dtype(DType::F32)?;
        Ok(match self.prediction_type {
            PredictionType::Epsilon => (&sample - mul_scalar(model_output, sigma)?)?,
            PredictionType::VPrediction => {
                let c_out = -sigma / (sigma * sigma + 1.0).sqrt();
                (mul_scalar(model_output, c_out)? + div_scalar(&sample, sigma * sigma + 1.0)?)?
            }
            PredictionType::Sample => model_output.clone(),
        })
    }

    fn output_for_original(
        &self,
        original: &Tensor,
        step_index: usize,
        sample: &Tensor,
    ) -> Result<Tensor> {
        check_step(step_index, self.timesteps.len())?;
        let sigma = self.sigmas[step_index];
        let sample = sample.to_dtype(DType::F32)?;
        Ok(match self.prediction_type {
            // eps = (x - x0) / sigma
            PredictionType::Epsilon => div_scalar(&(&sample - original)?, sigma)?,
            // v = (x0 - x / (sigma^2 + 1)) / c_out
            PredictionType::VPrediction => {
                let c_out = -sigma / (sigma * sigma + 1.0).sqrt();
                let scaled = div_scalar(&sample, sigma * sigma + 1.0)?;
                div_scalar(&(original - scaled)?, c_out)?
            }
            PredictionType::Sample => original.clone(),
        })
    }

    /// diffusers' `EulerDiscreteScheduler.add_noise` with img2img's begin index (float32):
    /// `x + noise * sigma` at the step's sigma.
    fn add_noise(&self, original: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor> {
        check_step(step_index, self.timesteps.len())?;
        let sigma = self.sigmas[step_index];
        Ok((original.to_dtype(DType::F32)? + mul_scalar(noise, sigma)?)?)
    }
}

/// Refuses Euler settings that change the sigmas in ways not implemented here, rather than
/// sampling with silently different sigmas.
fn check_options(cfg: &SchedulerConfig) -> Result<()> {
    for (key, value) in [
        ("use_karras_sigmas", cfg.use_karras_sigmas),
        ("use_exponential_sigmas", cfg.use_exponential_sigmas),
        ("use_beta_sigmas", cfg.use_beta_sigmas),
    ] {
        if value == Some(true) {
            return Err(invalid(format!("Euler with `{key}` is not supported")));
        }
    }
    let allowed: [(&str, &Option<String>, &[&str]); 3] = [
        ("interpolation_type", &cfg.interpolation_type, &["linear"]),
        (
            "final_sigmas_type",
            &cfg.final_sigmas_type,
            &["zero", "sigma_min"],
        ),
        (
            "timestep_type",
            &cfg.timestep_type,
            &["discrete", "continuous"],
        ),
    ];
    for (key, value, supported) in allowed {
        if let Some(v) = value {
            if !supported.contains(&v.as_str()) {
                return Err(invalid(format!(
                    "Euler with {key} `{v}` is not supported (supported: {})",
                    supported.join(", ")
                )));
            }
        }
    }
    Ok(())
}

/// diffusers `EulerDiscreteScheduler.set_timesteps` (float32, noisiest first); unlike DDIM,
/// `linspace` timesteps are not rounded.
fn euler_timesteps(
    spacing: TimestepSpacing,
    n_train: usize,
    num_steps: usize,
    steps_offset: usize,
) -> Vec<f32> {
    match spacing {
        TimestepSpacing::Leading => {
            let ratio = n_train / num_steps;
            (0..num_steps)
                .rev()
                .map(|i| (i * ratio + steps_offset) as f32)
                .collect()
        }
        TimestepSpacing::Trailing => trailing_timesteps(n_train, num_steps)
            .into_iter()
            .map(|t| t as f32)
            .collect(),
        TimestepSpacing::Linspace => numpy_linspace(n_train, num_steps)
            .into_iter()
            .rev()
            .map(|t| t as f32)
            .collect(),
    }
}

/// `np.interp(t, arange(len(table)), table)`: linear between neighbours, clamped at the ends.
fn interp(t: f64, table: &[f32]) -> f64 {
    let last = table.len() - 1;
    if t <= 0.0 {
        return f64::from(table[0]);
    }
    if t >= last as f64 {
        return f64::from(table[last]);
    }
    let i = t.floor() as usize;
    let (lo, hi) = (f64::from(table[i]), f64::from(table[i + 1]));
    (hi - lo) * (t - i as f64) + lo
}
