//! A keyframe's sampling handed to a device (`device::SamplingDevice`): where the loop
//! starts ([`Start`]: noise, or a picture noised part way), the latents and per-step
//! scalars the device runs from ([`device_job`]), and the model's sampling slot made from
//! a loader while the weights load ([`device_slot`]). `sd.rs` runs the same loop on the CPU.

use candle_core::Tensor;

use super::device::{DeviceJob, DeviceLoader, DeviceWeights, SamplingSlot};
use super::schedulers::{img2img_first_step, LinearStep, Sampler, Scheduler};
use super::{ModelError, Result};

/// What a device's loop needs, owned (the latents it starts from are made here).
pub(super) struct PreparedJob {
    latents: Tensor,
    steps: Vec<(f64, LinearStep)>,
    first_step: usize,
    num_steps: usize,
    guidance: Option<f32>,
}

impl PreparedJob {
    pub(super) fn job<'a>(&'a self, context: &'a Tensor) -> DeviceJob<'a> {
        DeviceJob {
            latents: &self.latents,
            context,
            steps: self.steps.clone(),
            first_step: self.first_step,
            num_steps: self.num_steps,
            guidance: self.guidance,
        }
    }
}

/// The device's loop for `start`: the latents at its first step (as
/// [`super::schedulers::denoise`] and [`super::schedulers::img2img`] make them) and each step's scalars.
pub(super) fn device_job(
    sampler: &Sampler,
    start: &Start<'_>,
    context: &Tensor,
    guidance: f64,
) -> Result<PreparedJob> {
    let num_steps = sampler.num_steps();
    let (latents, first_step) = match start {
        Start::Noise(init) => (
            init.affine(f64::from(sampler.init_noise_sigma() as f32), 0.0)?,
            0,
        ),
        Start::Image {
            latents,
            noise,
            strength,
        } => {
            let first = img2img_first_step(num_steps, *strength);
            if !(*strength > 0.0 && *strength <= 1.0) || first >= num_steps {
                return Err(ModelError::Invalid(format!(
                    "img2img strength {strength} over {num_steps} steps runs no step (it needs \
                     steps x strength >= 1, strength at most 1)"
                )));
            }
            (sampler.add_noise(latents, noise, first)?, first)
        }
    };
    let steps = (first_step..num_steps)
        .map(|i| Ok((sampler.timesteps()[i], sampler.linear_step(i)?)))
        .collect::<Result<Vec<_>>>()?;
    let guided = guidance > 1.0 && context.dim(0)? == 2;
    Ok(PreparedJob {
        latents,
        steps,
        first_step,
        num_steps,
        guidance: guided.then_some(guidance as f32),
    })
}

/// The sampling slot for a model whose weights are `unet` and `text`: `loader`'s device,
/// or the CPU (with the loader's reason, when there was one).
pub(super) fn device_slot(
    loader: Option<&dyn DeviceLoader>,
    unet: candle_nn::VarBuilder<'static>,
    unet_config: &super::UNetConfig,
    text: candle_nn::VarBuilder<'static>,
    text_config: &super::text::ClipTextConfig,
) -> SamplingSlot {
    let Some(loader) = loader else {
        return SamplingSlot::default();
    };
    let weights = DeviceWeights {
        unet,
        unet_config,
        text,
        text_config,
    };
    match loader.load(weights) {
        Ok(device) => SamplingSlot::new(Some(device), None),
        Err(e) => {
            tracing::warn!("sampling on the CPU: {e}");
            SamplingSlot::new(None, Some(e.to_string()))
        }
    }
}

/// Where the sampling loop starts.
pub(super) enum Start<'a> {
    /// Unit-variance noise, scaled by the scheduler's `init_noise_sigma` (txt2img).
    Noise(&'a Tensor),
    /// A picture's latents, noised part way (img2img).
    Image {
        latents: &'a Tensor,
        noise: &'a Tensor,
        strength: f64,
    },
}
