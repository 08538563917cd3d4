//! diffusers' img2img recipe (`StableDiffusionImg2ImgPipeline`): a picture's latents are
//! noised to the timestep `strength` of the way into the schedule and denoised from there,
//! so the picture keeps its layout and takes the model's look.
//!
//! ```text
//! set_timesteps(steps)
//! init_timestep = min(int(steps * strength), steps)
//! t_start       = steps - init_timestep          (the first step run)
//! latents       = scheduler.add_noise(image_latents, noise, timesteps[t_start])
//! for t in timesteps[t_start:]: the guided loop, as txt2img
//! ```

use candle_core::Tensor;

use super::sampler::denoise_from;
use super::{invalid, Scheduler};
use crate::model::Result;

/// The first step img2img runs for `strength` over `steps` steps: `steps -
/// min(int(steps x strength), steps)`, as diffusers' `get_timesteps` (Python's `int`
/// truncates, as `as` does). Equal to `steps` when no step would run.
pub fn img2img_first_step(steps: usize, strength: f64) -> usize {
    let init_timestep = ((steps as f64 * strength) as usize).min(steps);
    steps - init_timestep
}

/// img2img from `image_latents` (a picture encoded into the model's latent space) with
/// unit-variance `noise` of the same shape, at `strength` in (0, 1] over the scheduler's
/// steps. `predict` and `on_step` as in [`super::denoise`]; `on_step(i, n)` is called after
/// each step run, `i` counting from the schedule's first step, so the first call has `i =`
/// [`img2img_first_step`]. Refuses a strength that runs no step.
pub fn img2img(
    scheduler: &dyn Scheduler,
    image_latents: &Tensor,
    noise: &Tensor,
    strength: f64,
    guidance_scale: f64,
    predict: impl FnMut(&Tensor, f64) -> Result<Tensor>,
    on_step: impl FnMut(usize, usize),
) -> Result<Tensor> {
    let steps = scheduler.num_steps();
    let first_step = img2img_first_step(steps, strength);
    if !(strength > 0.0 && strength <= 1.0) || first_step >= steps {
        return Err(invalid(format!(
            "img2img strength {strength} over {steps} steps runs no step (it needs \
             steps x strength >= 1, strength at most 1)"
        )));
    }
    if image_latents.dims() != noise.dims() {
        return Err(invalid(format!(
            "img2img noise of shape {:?} for latents of shape {:?}",
            noise.dims(),
            image_latents.dims()
        )));
    }
    let noised = scheduler.add_noise(image_latents, noise, first_step)?;
    denoise_from(
        scheduler,
        &noised,
        first_step,
        guidance_scale,
        predict,
        on_step,
    )
}

#[cfg(test)]
mod tests {
    use super::img2img_first_step;

    #[test]
    fn first_step_truncates_as_diffusers() {
        assert_eq!(img2img_first_step(10, 1.0), 0);
        assert_eq!(img2img_first_step(10, 0.75), 3); // int(7.5) = 7 steps run
        assert_eq!(img2img_first_step(10, 0.3), 7); // 10 * 0.3 = 3.0000000000000004
        assert_eq!(img2img_first_step(10, 0.7), 3); // 10 * 0.7 = 7.000000000000001
        assert_eq!(img2img_first_step(4, 0.2), 4); // int(0.8) = 0: nothing runs
        assert_eq!(img2img_first_step(1, 1.0), 0);
        assert_eq!(img2img_first_step(25, 0.0), 25);
    }
}
