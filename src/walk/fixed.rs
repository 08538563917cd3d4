//! Latents fixed at places inside keyframe pairs (diffused in-betweens: positions sampled
//! for real instead of slerped). The walk then interpolates between the nearest fixed
//! latents on either side, not between the pair's keyframes: a keyframe and the diffused
//! positions of its pair are all "fixed", and the slerp fills the gaps between neighbours.

use std::collections::BTreeMap;

use candle_core::Tensor;

/// Latents fixed at a linear time `t` in a keyframe pair (0 < t < 1).
pub type FixedPlace = (f64, Tensor);

/// Fixed latents per keyframe pair, each at its linear time `t` in the pair (0 < t < 1).
#[derive(Clone, Debug, Default)]
pub struct FixedLatents {
    by_segment: BTreeMap<usize, Vec<FixedPlace>>,
}

/// Two places closer than this are one place (path positions are `j / steps_between`).
const SAME_PLACE: f64 = 1e-9;

impl FixedLatents {
    /// Fixes `latents` at linear time `t` of keyframe pair `segment`, replacing what was
    /// fixed at the same place.
    pub fn insert(&mut self, segment: usize, t: f64, latents: Tensor) {
        let places = self.by_segment.entry(segment).or_default();
        places.retain(|(known, _)| (known - t).abs() > SAME_PLACE);
        let at = places.partition_point(|(known, _)| *known < t);
        places.insert(at, (t, latents));
    }

    /// The fixed latents of pair `segment`, by time.
    pub fn in_segment(&self, segment: usize) -> &[FixedPlace] {
        self.by_segment.get(&segment).map_or(&[], Vec::as_slice)
    }

    /// How many places are fixed, over all pairs.
    pub fn len(&self) -> usize {
        self.by_segment.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The latents fixed exactly at `t` in pair `segment`, if any.
    pub fn at(&self, segment: usize, t: f64) -> Option<&Tensor> {
        self.in_segment(segment)
            .iter()
            .find(|(known, _)| (known - t).abs() <= SAME_PLACE)
            .map(|(_, latents)| latents)
    }

    /// The nearest fixed places strictly before and after `t` in pair `segment`: `None`
    /// on a side means the pair's keyframe there (t = 0 or 1).
    pub fn neighbours(&self, segment: usize, t: f64) -> (Option<&FixedPlace>, Option<&FixedPlace>) {
        let places = self.in_segment(segment);
        let before = places
            .iter()
            .rev()
            .find(|(known, _)| *known < t - SAME_PLACE);
        let after = places.iter().find(|(known, _)| *known > t + SAME_PLACE);
        (before, after)
    }
}
