//! A sampler step written as the few scalars a device without candle needs: DDIM (eta 0)
//! and non-ancestral Euler are linear in the latents and the model output, so a step is
//!
//! ```text
//! x0 = p x + q e                 (clamped to [-clamp, clamp] when the config clips)
//! x' = alpha x + beta x0 + gamma e
//! ```
//!
//! with `e` the (guided) model output, and the model input is `input_scale * x`. The GPU's
//! sampler (`gpu::sample`) runs this; [`LinearStep::apply`] runs it on the CPU, which is how
//! the tests hold each scheduler's coefficients to its own `step`.

use candle_core::Tensor;

use crate::model::Result;

/// One step's coefficients (f32, as the step arithmetic is done in f32).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearStep {
    /// What the latents are multiplied by to make the model's input.
    pub input_scale: f32,
    /// `x0 = p x + q e`.
    pub p: f32,
    /// See `p`.
    pub q: f32,
    /// `x0` is clamped to `[-clamp, clamp]` (DDIM's `clip_sample`).
    pub clamp: Option<f32>,
    /// `x' = alpha x + beta x0 + gamma e`.
    pub alpha: f32,
    /// See `alpha`.
    pub beta: f32,
    /// See `alpha`.
    pub gamma: f32,
}

impl LinearStep {
    /// The step on candle tensors: `sample` the latents, `output` the guided model output.
    pub fn apply(&self, output: &Tensor, sample: &Tensor) -> Result<Tensor> {
        let x0 =
            (sample.affine(f64::from(self.p), 0.0)? + output.affine(f64::from(self.q), 0.0)?)?;
        let x0 = match self.clamp {
            Some(r) => x0.clamp(-r, r)?,
            None => x0,
        };
        let next = ((sample.affine(f64::from(self.alpha), 0.0)?
            + x0.affine(f64::from(self.beta), 0.0)?)?
            + output.affine(f64::from(self.gamma), 0.0)?)?;
        Ok(next)
    }
}
