//! Diffused in-betweens: what a walk position between two keyframes is sampled from when it
//! is sampled for real rather than slerped (`render --diffuse`, the viewer's Refine).
//!
//! The position at fraction `t` between keyframes `a` and `b` is a keyframe of its own whose
//! conditioning is the two prompts' blended with weights `1 - t` and `t` (the prompt mix's
//! [`blend`]: a slerp, as the walk slerps latents), and whose initial noise is the slerp at
//! `t` of the two keyframes' initial noises; the model's sampler, steps and guidance then run
//! as for any keyframe. At `t = 0` it is keyframe `a` exactly (and `b` at 1).
//!
//! Pictures have no prompt of their own to blend (and a picture used as it is has no noise
//! at all): a position next to a picture keyframe is refused with an error naming it, and
//! `Settings::validate` refuses such a walk before it starts.

use candle_core::Tensor;

use super::engine::{EndpointError, EndpointRequest, SamplingProgress};
use super::keyframe::Keyframe;
use super::sd::StableDiffusion;
use super::text::mix::blend;
use super::{ModelError, Result};

/// The conditioning (1, 77, hidden) and initial noise of a diffused position.
#[derive(Clone, Debug)]
pub struct DiffusedInputs {
    /// The two prompts' conditioning blended at `t`.
    pub conditioning: Tensor,
    /// The two keyframes' initial noise slerped at `t` (unit variance, before the
    /// scheduler's `init_noise_sigma`).
    pub noise: Tensor,
}

impl StableDiffusion {
    /// What the position at `t` between keyframes `pair.0` and `pair.1` of `request` is
    /// sampled from (see the module docs). A picture keyframe on either side is refused.
    pub fn diffused_inputs(
        &self,
        request: &EndpointRequest,
        pair: (usize, usize),
        t: f64,
    ) -> Result<DiffusedInputs> {
        if !(0.0..=1.0).contains(&t) {
            return Err(ModelError::Invalid(format!(
                "a diffused position's fraction must be between 0 and 1, not {t}"
            )));
        }
        let prompt = |index: usize| match request.keyframes.get(index) {
            Some(Keyframe::Prompt(prompt)) => Ok(prompt.as_str()),
            Some(Keyframe::Image(image)) => Err(ModelError::Invalid(format!(
                "keyframe {} is a picture ({}): in-betweens can be diffused only between \
                 prompt keyframes",
                index + 1,
                image.path.display()
            ))),
            None => Err(ModelError::Invalid(format!(
                "no keyframe {index} in a request of {}",
                request.keyframes.len()
            ))),
        };
        let (first, second) = (prompt(pair.0)?, prompt(pair.1)?);
        let (h, w) = self.latent_hw(request.image_size)?;
        let shape = [1, self.unet.in_channels(), h, w];
        let conditioning = blend(&[
            (self.conditioning(first)?, 1.0 - t),
            (self.conditioning(second)?, t),
        ])?;
        let noise = crate::walk::slerp(
            t,
            &self.initial_noise(request, &shape, pair.0)?,
            &self.initial_noise(request, &shape, pair.1)?,
        )?;
        Ok(DiffusedInputs {
            conditioning,
            noise,
        })
    }

    /// Samples the position at `t` between keyframes `pair.0` and `pair.1` (see
    /// [`crate::model::Engine::diffused_latents`]).
    pub(super) fn sample_diffused(
        &self,
        request: &EndpointRequest,
        pair: (usize, usize),
        t: f64,
        progress: &mut dyn FnMut(SamplingProgress) -> bool,
    ) -> std::result::Result<Tensor, EndpointError> {
        if request.steps == 0 {
            return Err(ModelError::Invalid("sampler steps must be at least 1".into()).into());
        }
        let inputs = self.diffused_inputs(request, pair, t)?;
        let keyframes = request.keyframes.len();
        self.sample_conditioned(
            &inputs.conditioning,
            &request.negative,
            &inputs.noise,
            request.steps,
            request.guidance,
            |step, steps| {
                progress(SamplingProgress {
                    keyframe: pair.0,
                    keyframes,
                    step,
                    steps,
                })
            },
        )
    }
}
