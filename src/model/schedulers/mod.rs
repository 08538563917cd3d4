//! Samplers: DDIM (eta = 0; epsilon, v-prediction or sample models) and non-ancestral Euler
//! (the SD-Turbo recipe), reproducing diffusers' `DDIMScheduler` and `EulerDiscreteScheduler`
//! number for number, plus the classifier-free-guided denoising loop ([`denoise`]).
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

use candle_core::{DType, Tensor};
use serde::Deserialize;

use crate::model::{ModelError, Result};

/// How beta (the noise added per training step) grows from `beta_start` to `beta_end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// Betas evenly spaced from `beta_start` to `beta_end`.
    #[default]
    Linear,
    /// Square roots of the betas evenly spaced (Stable Diffusion).
    ScaledLinear,
    /// The cosine schedule of "Improved DDPM", capped at 0.999.
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredcosCapV2,
}

/// What the denoising model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    /// The noise that was added (SD 1.x, SD 2.x base, SD-Turbo).
    #[default]
    Epsilon,
    /// The velocity `sqrt(a) * noise - sqrt(1 - a) * x0` (SD 2.x 768, the x4 upscaler).
    VPrediction,
    /// The clean sample itself.
    Sample,
}

/// Where the inference timesteps sit among the training timesteps (table 2 of
/// "Common Diffusion Noise Schedules and Sample Steps are Flawed").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    /// Multiples of `N / n` from 0, plus `steps_offset` (diffusers' DDIM default).
    Leading,
    /// Counted down from `N - 1` in strides of `N / n` (SD-Turbo).
    Trailing,
    /// Evenly spaced over `[0, N - 1]` (diffusers' Euler default).
    Linspace,
}

/// A diffusers `scheduler_config.json`, of any of the schedulers SD repos ship (DDIM, PNDM,
/// Euler, Euler ancestral, DPM-Solver, ...): they share these keys; others are ignored.
///
/// Defaults are those of `DDIMScheduler`, so a PNDM file (SD 1.5) read here behaves as
/// `DDIMScheduler.from_config(pndm_config)` does in diffusers; `timestep_spacing` is left
/// `None` when absent because its default depends on the sampler (see [`Sampler::new`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SchedulerConfig {
    /// The diffusers class that wrote the file, e.g. `EulerDiscreteScheduler`.
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    /// Number of diffusion steps the model was trained with (`N`).
    #[serde(default = "default_num_train_timesteps")]
    pub num_train_timesteps: usize,
    /// First beta of the schedule.
    #[serde(default = "default_beta_start")]
    pub beta_start: f64,
    /// Last beta of the schedule.
    #[serde(default = "default_beta_end")]
    pub beta_end: f64,
    /// How the betas go from `beta_start` to `beta_end`.
    #[serde(default)]
    pub beta_schedule: BetaSchedule,
    /// Explicit betas, overriding the three keys above.
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
    /// What the model predicts.
    #[serde(default)]
    pub prediction_type: PredictionType,
    /// Timestep placement; `None`: the sampler's diffusers default.
    #[serde(default)]
    pub timestep_spacing: Option<TimestepSpacing>,
    /// Added to every timestep with `leading` spacing (1 in SD repos).
    #[serde(default)]
    pub steps_offset: usize,
    /// DDIM: whether the step after the last one has alpha_cumprod 1 (else `alphas_cumprod[0]`).
    #[serde(default = "default_true")]
    pub set_alpha_to_one: bool,
    /// DDIM: clamp the predicted clean sample to `±clip_sample_range`.
    #[serde(default = "default_true")]
    pub clip_sample: bool,
    /// DDIM: the bound of `clip_sample`.
    #[serde(default = "default_clip_sample_range")]
    pub clip_sample_range: f64,
    /// DDIM: dynamic thresholding (Imagen); not supported, refused when set.
    #[serde(default)]
    pub thresholding: bool,
    /// Rescale the betas so the last timestep has zero SNR.
    #[serde(default)]
    pub rescale_betas_zero_snr: bool,
    /// Euler: Karras sigmas; not supported, refused when set.
    #[serde(default)]
    pub use_karras_sigmas: Option<bool>,
    /// Euler: exponential sigmas; not supported, refused when set.
    #[serde(default)]
    pub use_exponential_sigmas: Option<bool>,
    /// Euler: beta sigmas; not supported, refused when set.
    #[serde(default)]
    pub use_beta_sigmas: Option<bool>,
    /// Euler: how sigmas are interpolated between timesteps; only `linear` is supported.
    #[serde(default)]
    pub interpolation_type: Option<String>,
    /// Euler: the sigma after the last step, `zero` (default) or `sigma_min`.
    #[serde(default)]
    pub final_sigmas_type: Option<String>,
    /// Euler: `discrete` (default) or `continuous` (timesteps `0.25 ln sigma` for v-prediction).
    #[serde(default)]
    pub timestep_type: Option<String>,
}

fn default_num_train_timesteps() -> usize {
    1000
}
fn default_beta_start() -> f64 {
    0.0001
}
fn default_beta_end() -> f64 {
    0.02
}
fn default_true() -> bool {
    true
}
fn default_clip_sample_range() -> f64 {
    1.0
}

impl Default for SchedulerConfig {
    /// diffusers' `DDIMScheduler()` defaults.
    fn default() -> Self {
        Self {
            class_name: None,
            num_train_timesteps: default_num_train_timesteps(),
            beta_start: default_beta_start(),
            beta_end: default_beta_end(),
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: None,
            steps_offset: 0,
            set_alpha_to_one: true,
            clip_sample: true,
            clip_sample_range: default_clip_sample_range(),
            thresholding: false,
            rescale_betas_zero_snr: false,
            use_karras_sigmas: None,
            use_exponential_sigmas: None,
            use_beta_sigmas: None,
            interpolation_type: None,
            final_sigmas_type: None,
            timestep_type: None,
        }
    }
}

impl SchedulerConfig {
    /// The Stable Diffusion 1.x/2.x schedule as SD repos configure it: scaled-linear betas
    /// 0.00085..0.012 over 1000 steps, `steps_offset` 1, no clipping, no final alpha of one.
    pub fn stable_diffusion(prediction_type: PredictionType) -> Self {
        Self {
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            prediction_type,
            steps_offset: 1,
            set_alpha_to_one: false,
            clip_sample: false,
            ..Self::default()
        }
    }

    /// Reads a `scheduler_config.json`; errors name the file.
    pub fn load(path: &std::path::Path) -> Result<Self> {
        crate::model::weights::read_config(path)
    }
}

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

/// Per-method state of a [`Sampler`].
#[derive(Debug, Clone)]
enum Method {
    Ddim {
        /// `N / n` in integers: diffusers' DDIM steps back by this from any timestep.
        step_ratio: usize,
        /// alpha_cumprod used after the last step.
        final_alpha_cumprod: f32,
        /// Bound of the x0 clamp, when clipping.
        clip_sample_range: Option<f32>,
    },
    Euler {
        /// sigma at each step, then the final sigma (`timesteps.len() + 1` values).
        sigmas: Vec<f32>,
    },
}

/// A sampler set up for a number of steps: the timesteps to feed the model, and how to step
/// the latents from one to the next.
#[derive(Debug, Clone)]
pub struct Sampler {
    kind: SamplerKind,
    prediction_type: PredictionType,
    timesteps: Vec<f64>,
    alphas_cumprod_f64: Vec<f64>,
    alphas_cumprod: Vec<f32>,
    init_noise_sigma: f32,
    method: Method,
}

impl Sampler {
    /// Sets up `kind` with the schedule of `cfg` for `num_steps` steps, as diffusers'
    /// `set_timesteps(num_steps)` does.
    ///
    /// Without `timestep_spacing` in the config, DDIM uses `leading` and Euler `linspace`,
    /// each scheduler class's default in diffusers.
    pub fn new(cfg: &SchedulerConfig, kind: SamplerKind, num_steps: usize) -> Result<Self> {
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
        let mut alphas_cumprod = cumprod(betas.iter().map(|b| 1.0 - b));
        let spacing = cfg.timestep_spacing.unwrap_or(match kind {
            SamplerKind::Ddim => TimestepSpacing::Leading,
            SamplerKind::Euler => TimestepSpacing::Linspace,
        });

        let (timesteps, method, init_noise_sigma) = match kind {
            SamplerKind::Ddim => {
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
                let method = Method::Ddim {
                    step_ratio: n_train / num_steps,
                    final_alpha_cumprod: if cfg.set_alpha_to_one {
                        1.0
                    } else {
                        alphas_cumprod[0]
                    },
                    clip_sample_range: cfg.clip_sample.then_some(cfg.clip_sample_range as f32),
                };
                let timesteps = timesteps.into_iter().map(|t| t as f64).collect();
                (timesteps, method, 1.0)
            }
            SamplerKind::Euler => {
                check_euler_options(cfg)?;
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
                (timesteps, Method::Euler { sigmas }, init_noise_sigma)
            }
        };
        Ok(Self {
            kind,
            prediction_type: cfg.prediction_type,
            timesteps,
            alphas_cumprod_f64: alphas_cumprod.iter().map(|&a| f64::from(a)).collect(),
            alphas_cumprod,
            init_noise_sigma,
            method,
        })
    }

    /// The sampling method.
    pub fn kind(&self) -> SamplerKind {
        self.kind
    }

    /// What the model is expected to predict.
    pub fn prediction_type(&self) -> PredictionType {
        self.prediction_type
    }

    /// The timesteps to give the model, one per step, noisiest first. Integral for DDIM;
    /// Euler's can be fractional (`linspace` spacing), which the UNet embedding accepts.
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// Number of steps.
    pub fn num_steps(&self) -> usize {
        self.timesteps.len()
    }

    /// What initial unit-variance noise is multiplied by before the first step.
    pub fn init_noise_sigma(&self) -> f64 {
        f64::from(self.init_noise_sigma)
    }

    /// Cumulative products of `1 - beta` over the training timesteps (float32 values).
    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod_f64
    }

    /// Euler's sigmas: one per step, then the final one (0); `None` for DDIM.
    pub fn sigmas(&self) -> Option<Vec<f64>> {
        match &self.method {
            Method::Euler { sigmas } => Some(sigmas.iter().map(|&s| f64::from(s)).collect()),
            Method::Ddim { .. } => None,
        }
    }

    /// The model input at step `step_index`: DDIM uses the latents as they are, Euler divides
    /// them by `sqrt(sigma^2 + 1)`.
    pub fn scale_model_input(&self, x: &Tensor, step_index: usize) -> Result<Tensor> {
        self.check_step(step_index)?;
        match &self.method {
            Method::Ddim { .. } => Ok(x.clone()),
            Method::Euler { sigmas } => {
                let sigma = sigmas[step_index];
                Ok(div_scalar(x, (sigma * sigma + 1.0).sqrt())?)
            }
        }
    }

    /// One step: from `sample` at step `step_index` and the (guided) model output there, the
    /// latents at the next step (after the last step: the denoised latents).
    pub fn step(
        &self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
    ) -> Result<Tensor> {
        self.check_step(step_index)?;
        match &self.method {
            Method::Ddim {
                step_ratio,
                final_alpha_cumprod,
                clip_sample_range,
            } => {
                let t = self.timesteps[step_index] as usize;
                // As diffusers: the previous timestep is t - N/n even with trailing spacing,
                // where it is not always the next timestep of the list.
                let a_t = self.alphas_cumprod[t];
                let a_prev = match t.checked_sub(*step_ratio) {
                    Some(prev) => self.alphas_cumprod[prev],
                    None => *final_alpha_cumprod,
                };
                let (sqrt_a, sqrt_b) = (a_t.sqrt(), (1.0 - a_t).sqrt());
                let (x0, eps) = match self.prediction_type {
                    PredictionType::Epsilon => {
                        let x0 =
                            div_scalar(&(sample - mul_scalar(model_output, sqrt_b)?)?, sqrt_a)?;
                        (x0, model_output.clone())
                    }
                    PredictionType::Sample => {
                        let eps =
                            div_scalar(&(sample - mul_scalar(model_output, sqrt_a)?)?, sqrt_b)?;
                        (model_output.clone(), eps)
                    }
                    PredictionType::VPrediction => {
                        let x0 = (mul_scalar(sample, sqrt_a)? - mul_scalar(model_output, sqrt_b)?)?;
                        let eps =
                            (mul_scalar(model_output, sqrt_a)? + mul_scalar(sample, sqrt_b)?)?;
                        (x0, eps)
                    }
                };
                let x0 = match clip_sample_range {
                    Some(r) => x0.clamp(-r, *r)?,
                    None => x0,
                };
                // eta = 0: no noise term, the direction to x_t takes all of 1 - a_prev.
                let direction = mul_scalar(&eps, (1.0 - a_prev).sqrt())?;
                Ok((mul_scalar(&x0, a_prev.sqrt())? + direction)?)
            }
            Method::Euler { sigmas } => {
                let (sigma, sigma_next) = (sigmas[step_index], sigmas[step_index + 1]);
                let sample = sample.to_dtype(DType::F32)?;
                let x0 = match self.prediction_type {
                    PredictionType::Epsilon => (&sample - mul_scalar(model_output, sigma)?)?,
                    PredictionType::VPrediction => {
                        let c_out = -sigma / (sigma * sigma + 1.0).sqrt();
                        (mul_scalar(model_output, c_out)?
                            + div_scalar(&sample, sigma * sigma + 1.0)?)?
                    }
                    PredictionType::Sample => model_output.clone(),
                };
                // The ODE derivative dx/dsigma, then one Euler step to the next sigma; written
                // as diffusers does so the float32 rounding is the same.
                let derivative = div_scalar(&(&sample - x0)?, sigma)?;
                Ok((&sample + mul_scalar(&derivative, sigma_next - sigma)?)?)
            }
        }
    }

    fn check_step(&self, step_index: usize) -> Result<()> {
        if step_index >= self.timesteps.len() {
            return Err(invalid(format!(
                "step index {step_index} out of range: the sampler has {} steps",
                self.timesteps.len()
            )));
        }
        Ok(())
    }
}

/// The sampling loop of diffusers' Stable Diffusion pipeline, for any model.
///
/// `init_latents` (unit-variance noise) is scaled by the sampler's `init_noise_sigma`; then for
/// each step the model is asked for its prediction through `predict(input, timestep)`. With
/// `guidance_scale > 1` the input is the batch `cat([x, x])` and `predict` must pair its first
/// half with the unconditional context and its second half with the prompt's; the two halves
/// of the output are combined as `uncond + g * (cond - uncond)`. `on_step(i, n)` is called after
/// step `i` of `n` (for progress display). Returns the denoised latents.
pub fn denoise(
    sampler: &Sampler,
    init_latents: &Tensor,
    guidance_scale: f64,
    mut predict: impl FnMut(&Tensor, f64) -> Result<Tensor>,
    mut on_step: impl FnMut(usize, usize),
) -> Result<Tensor> {
    let guided = guidance_scale > 1.0;
    let num_steps = sampler.num_steps();
    let mut x = mul_scalar(init_latents, sampler.init_noise_sigma)?;
    for (step_index, &t) in sampler.timesteps().iter().enumerate() {
        let input = sampler.scale_model_input(&x, step_index)?;
        let output = if guided {
            let batch = input.dim(0)?;
            let out = predict(&Tensor::cat(&[&input, &input], 0)?, t)?;
            if out.dim(0)? != 2 * batch {
                return Err(invalid(format!(
                    "guided prediction returned a batch of {}, expected {}",
                    out.dim(0)?,
                    2 * batch
                )));
            }
            let uncond = out.narrow(0, 0, batch)?;
            let cond = out.narrow(0, batch, batch)?;
            (&uncond + ((&cond - &uncond)? * guidance_scale)?)?
        } else {
            predict(&input, t)?
        };
        x = sampler.step(&output, step_index, &x)?;
        on_step(step_index, num_steps);
    }
    Ok(x)
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

/// Refuses Euler settings that change the sigmas in ways not implemented here, rather than
/// sampling with silently different sigmas.
fn check_euler_options(cfg: &SchedulerConfig) -> Result<()> {
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
fn round_half_even(x: f64) -> f64 {
    x.round_ties_even()
}

/// `np.linspace(0, n_train - 1, num_steps)`: `i * step`, the last value exactly `n_train - 1`.
fn numpy_linspace(n_train: usize, num_steps: usize) -> Vec<f64> {
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
fn trailing_timesteps(n_train: usize, num_steps: usize) -> Vec<f64> {
    let ratio = n_train as f64 / num_steps as f64;
    (0..num_steps)
        .map(|i| round_half_even(n_train as f64 - i as f64 * ratio) - 1.0)
        .collect()
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
