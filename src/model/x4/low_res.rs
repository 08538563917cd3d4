//! The x4 upscaler's `low_res_scheduler`: a DDPM schedule used only to add noise to the
//! low-resolution picture, at the noise level the UNet is then told (its class label).

use candle_core::Tensor;

use crate::model::schedulers::{training_alphas_cumprod, SchedulerConfig};
use crate::model::{ModelError, Result};

/// diffusers' `DDPMScheduler.add_noise` at an integer noise level.
#[derive(Clone, Debug)]
pub struct LowResNoise {
    /// float32, as torch keeps them.
    alphas_cumprod: Vec<f32>,
}

impl LowResNoise {
    /// The schedule of a `low_res_scheduler/scheduler_config.json`.
    pub fn new(cfg: &SchedulerConfig) -> Result<Self> {
        Ok(Self {
            alphas_cumprod: training_alphas_cumprod(cfg)?,
        })
    }

    /// Noise levels the schedule has: `0..levels()`.
    pub fn levels(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// `sqrt(a) image + sqrt(1 - a) noise` with `a = alphas_cumprod[level]`, in float32 as
    /// torch computes it (`** 0.5` is a correctly rounded square root).
    pub fn add_noise(&self, image: &Tensor, noise: &Tensor, level: usize) -> Result<Tensor> {
        let a = *self.alphas_cumprod.get(level).ok_or_else(|| {
            ModelError::Invalid(format!(
                "noise level {level} is past the low-res schedule's {} levels",
                self.levels()
            ))
        })?;
        if image.dims() != noise.dims() {
            return Err(ModelError::Invalid(format!(
                "low-res image {:?} and its noise {:?} differ in shape",
                image.dims(),
                noise.dims()
            )));
        }
        let signal = image.affine(f64::from(a.sqrt()), 0.0)?;
        Ok((signal + noise.affine(f64::from((1.0 - a).sqrt()), 0.0)?)?)
    }
}
