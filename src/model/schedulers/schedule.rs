//! The training noise schedule as diffusers computes it, and the timestep spacings both
//! samplers share. Everything here is float-for-float what torch/numpy do (see the module
//! docs of [`super`]): a one-ulp difference in a beta moves every sampled latent.

use super::config::{BetaSchedule, SchedulerConfig};
use super::invalid;
use crate::model::Result;

/// The float32 `alphas_cumprod` over the training timesteps (betas, rescaled to zero
/// terminal SNR when asked), after checking that `num_steps` sampling steps fit the
/// training schedule: the part of `set_timesteps` every sampler shares.
pub(super) fn train_alphas_cumprod(cfg: &SchedulerConfig, num_steps: usize) -> Result<Vec<f32>> {
    let n_train = cfg.num_train_timesteps;
    if n_train == 0 {
        return Err(invalid("num_train_timesteps must be at least 1"));
    }
    if num_steps == 0 {
        return Err(invalid("the number of sampling steps must be at least 1"));
    }
    if num_steps > n_train {
        return Err(invalid(format!(
            "{num_steps} sampling steps asked, but the model was trained with only \
                 {n_train} timesteps (num_train_timesteps)"
        )));
    }
    let betas = betas(cfg)?;
    let betas = if cfg.rescale_betas_zero_snr {
        rescale_zero_terminal_snr(&betas)
    } else {
        betas
    };
    Ok(cumprod(betas.iter().map(|b| 1.0 - b)))
}

/// The training betas, float32, as diffusers computes them.
fn betas(cfg: &SchedulerConfig) -> Result<Vec<f32>> {
    let n = cfg.num_train_timesteps;
    if let Some(trained) = &cfg.trained_betas {
        if trained.len() != n {
            return Err(invalid(format!(
                "trained_betas has {} values but num_train_timesteps is {n}",
                trained.len()
            )));
        }
        return Ok(trained.iter().map(|&b| b as f32).collect());
    }
    Ok(match cfg.beta_schedule {
        BetaSchedule::Linear => torch_linspace_f32(cfg.beta_start as f32, cfg.beta_end as f32, n),
        BetaSchedule::ScaledLinear => {
            let start = cfg.beta_start.sqrt() as f32;
            let end = cfg.beta_end.sqrt() as f32;
            torch_linspace_f32(start, end, n)
                .into_iter()
                .map(|s| s * s)
                .collect()
        }
        BetaSchedule::SquaredcosCapV2 => {
            // Computed in float64 by diffusers, then stored as float32.
            let alpha_bar = |t: f64| {
                ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                    .cos()
                    .powi(2)
            };
            (0..n)
                .map(|i| {
                    let t1 = i as f64 / n as f64;
                    let t2 = (i + 1) as f64 / n as f64;
                    (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
                })
                .collect()
        }
    })
}

/// torch's float32 CPU `linspace`: the first half counted up from `start`, the second half
/// down from `end`, each value one fused multiply-add (checked bit for bit against the betas
/// diffusers saved in the fixtures).
fn torch_linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((steps - 1 - i) as f32, end)
            }
        })
        .collect()
}

/// Cumulative product of float32 values accumulated in float64 and stored as float32 each
/// step, as torch's CPU `cumprod` does.
fn cumprod(values: impl Iterator<Item = f32>) -> Vec<f32> {
    let mut acc = 1f64;
    values
        .map(|v| {
            acc *= f64::from(v);
            acc as f32
        })
        .collect()
}

/// diffusers' `rescale_zero_terminal_snr`: shifts and scales sqrt(alpha_cumprod) so the last
/// timestep is pure noise while the first keeps its value (float32 throughout).
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let sqrt_acp: Vec<f32> = cumprod(betas.iter().map(|b| 1.0 - b))
        .into_iter()
        .map(f32::sqrt)
        .collect();
    let (first, last) = (sqrt_acp[0], sqrt_acp[sqrt_acp.len() - 1]);
    let scale = first / (first - last);
    let acp: Vec<f32> = sqrt_acp
        .iter()
        .map(|&s| {
            let s = (s - last) * scale;
            s * s
        })
        .collect();
    std::iter::once(1.0 - acp[0])
        .chain(acp.windows(2).map(|w| 1.0 - w[1] / w[0]))
        .collect()
}

/// numpy's `np.round` (half to even), which diffusers uses for timesteps.
pub(super) fn round_half_even(x: f64) -> f64 {
    x.round_ties_even()
}

/// `np.linspace(0, n_train - 1, num_steps)`: `i * step`, the last value exactly `n_train - 1`.
pub(super) fn numpy_linspace(n_train: usize, num_steps: usize) -> Vec<f64> {
    let stop = (n_train - 1) as f64;
    if num_steps == 1 {
        return vec![0.0];
    }
    let step = stop / (num_steps - 1) as f64;
    (0..num_steps)
        .map(|i| {
            if i + 1 == num_steps {
                stop
            } else {
                i as f64 * step
            }
        })
        .collect()
}

/// `np.arange(n_train, 0, -n_train / num_steps)`, rounded, minus one (trailing spacing).
pub(super) fn trailing_timesteps(n_train: usize, num_steps: usize) -> Vec<f64> {
    let ratio = n_train as f64 / num_steps as f64;
    (0..num_steps)
        .map(|i| round_half_even(n_train as f64 - i as f64 * ratio) - 1.0)
        .collect()
}
