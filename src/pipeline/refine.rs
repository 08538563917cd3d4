//! Diffused in-betweens for one keyframe pair: positions of the walk sampled for real
//! (`Engine::diffused_latents`) instead of slerped, placed one at a time where the decoded
//! frames differ most ([`super::placement`]). A pair's refiner keeps the decoded frame of
//! each place it has fixed (the keyframes and each diffused position), so each new position
//! costs one sampling and one decode.
//!
//! A position's blend fraction is the walk's eased time there (`easing(step /
//! steps_between)`), so it replaces exactly the slerp it stands for; the places it is
//! chosen by depend only on the keyframes, the grid and the model, never on when it is
//! asked: the k-th position of a pair is the same for any count asked of k or more.

use std::time::Instant;

use candle_core::Tensor;

use super::placement::{mean_abs_diff, next_step};
use crate::frame::RgbaImage;
use crate::model::{DecoderKind, EndpointError, EndpointRequest, Engine, SamplingProgress};
use crate::walk::Easing;

/// The path grid diffused positions are placed on: a change to either moves every place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefineGrid {
    /// Walk positions from one keyframe to the next.
    pub steps_between: usize,
    /// The walk's easing: a position's blend fraction is the eased time.
    pub easing: Easing,
}

/// One diffused position of a keyframe pair.
#[derive(Clone, Debug)]
pub struct DiffusedPosition {
    /// The keyframe pair (`segment`, `segment + 1`, the first again for an endless loop's
    /// closing pair).
    pub segment: usize,
    /// Its place in the pair, 0 < step < `steps_between`.
    pub step: usize,
    /// The walk's linear time there, `step / steps_between`.
    pub t: f64,
    /// The blend fraction it was sampled at (the eased time).
    pub blend: f64,
    /// The gap it bisected: the mean absolute difference (0..=255) of the decoded frames
    /// of the fixed places on either side.
    pub gap: f64,
    /// Its latents.
    pub latents: Tensor,
    /// Seconds it took to sample (and decode, for the next placement).
    pub seconds: f64,
}

/// A place fixed in the pair: a keyframe or a diffused position.
struct FixedPlace {
    step: usize,
    frame: RgbaImage,
}

/// The decoder gaps are measured with: TAESD when the model has it (cheap), else its first.
pub fn measure_decoder(engine: &dyn Engine) -> Option<DecoderKind> {
    let decoders = engine.decoders();
    match decoders.contains(&DecoderKind::Taesd) {
        true => Some(DecoderKind::Taesd),
        false => decoders.first().copied(),
    }
}

/// Places and samples the diffused positions of one keyframe pair, one at a time.
pub struct SegmentRefiner {
    segment: usize,
    pair: (usize, usize),
    grid: RefineGrid,
    decoder: DecoderKind,
    fixed: Vec<FixedPlace>,
    made: Vec<DiffusedPosition>,
}

impl SegmentRefiner {
    /// A refiner for pair `segment` of a walk over `keyframes` (the latents sampled for
    /// them): its second keyframe is `segment + 1`, wrapping to the first. Decodes the
    /// pair's keyframes to measure with.
    pub fn new(
        engine: &dyn Engine,
        keyframes: &[Tensor],
        segment: usize,
        grid: RefineGrid,
    ) -> crate::model::Result<Self> {
        let count = keyframes.len();
        if count < 2 || segment >= count {
            return Err(crate::model::ModelError::Invalid(format!(
                "no keyframe pair {segment} in a walk of {count} keyframes"
            )));
        }
        let decoder = measure_decoder(engine).ok_or_else(|| {
            crate::model::ModelError::Invalid(format!("{} has no decoder", engine.name()))
        })?;
        let pair = (segment, (segment + 1) % count);
        let place = |step: usize, latents: &Tensor| -> crate::model::Result<FixedPlace> {
            Ok(FixedPlace {
                step,
                frame: engine.decode(latents, decoder)?,
            })
        };
        let fixed = vec![
            place(0, &keyframes[pair.0])?,
            place(grid.steps_between.max(1), &keyframes[pair.1])?,
        ];
        Ok(Self {
            segment,
            pair,
            grid,
            decoder,
            fixed,
            made: Vec::new(),
        })
    }

    /// The positions diffused so far, in the order they were chosen.
    pub fn made(&self) -> &[DiffusedPosition] {
        &self.made
    }

    pub fn grid(&self) -> RefineGrid {
        self.grid
    }

    /// The fixed steps (keyframes and diffused positions) in order, 0 and
    /// `steps_between` included.
    pub fn fixed_steps(&self) -> Vec<usize> {
        self.fixed.iter().map(|f| f.step).collect()
    }

    /// The step the next position goes to, with the gap it bisects; `None` when every
    /// position of the pair is fixed.
    pub fn next_place(&self) -> Option<(usize, f64)> {
        let gaps: Vec<f64> = self
            .fixed
            .windows(2)
            .map(|w| mean_abs_diff(&w[0].frame, &w[1].frame))
            .collect();
        let step = next_step(&self.fixed_steps(), &gaps)?;
        let after = self.fixed.iter().position(|f| f.step > step)?;
        Some((step, gaps[after - 1]))
    }

    /// Samples the next position (see [`Self::next_place`]) of `request` on `engine` and
    /// keeps it; `Ok(None)` when every position is fixed already. `progress` is the
    /// sampler's (a `false` cancels).
    pub fn diffuse_next(
        &mut self,
        engine: &dyn Engine,
        request: &EndpointRequest,
        progress: &mut dyn FnMut(SamplingProgress) -> bool,
    ) -> Result<Option<&DiffusedPosition>, EndpointError> {
        let Some((step, gap)) = self.next_place() else {
            return Ok(None);
        };
        let started = Instant::now();
        let t = step as f64 / self.grid.steps_between as f64;
        let blend = self.grid.easing.apply(t);
        let latents = engine.diffused_latents(request, self.pair, blend, progress)?;
        let frame = engine.decode(&latents, self.decoder)?;
        let at = self.fixed.partition_point(|f| f.step < step);
        self.fixed.insert(at, FixedPlace { step, frame });
        self.made.push(DiffusedPosition {
            segment: self.segment,
            step,
            t,
            blend,
            gap,
            latents,
            seconds: started.elapsed().as_secs_f64(),
        });
        Ok(self.made.last())
    }
}
