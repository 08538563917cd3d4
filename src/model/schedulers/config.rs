//! The `scheduler_config.json` of a diffusers model folder and the choices it names: how the
//! betas grow, what the model predicts, where the inference timesteps sit.

use serde::Deserialize;

use crate::model::Result;

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
/// `None` when absent because its default depends on the sampler (see
/// [`Sampler::new`](super::Sampler::new)).
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
