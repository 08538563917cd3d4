//! The walk: keyframe latents and the path between them.
//!
//! A walk over `K` keyframes with `steps_between` steps per pair has `(K-1)*steps + 1`
//! positions on its forward path (both ends included). The loop mode turns that path into
//! an endless sequence of path indices; the decode stage caches by path index, so a
//! ping-pong loop decodes each position once. A timed walk ([`Timeline`]) instead places
//! each frame where its timeline says, one frame per position.

mod fixed;
mod timeline;

use candle_core::{DType, Tensor};

pub use fixed::{FixedLatents, FixedPlace};
pub use timeline::{Timeline, TimelineError};

/// How latents are interpolated between two keyframes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
pub enum Interp {
    /// Spherical: keeps the latents' norm, so mid-walk images stay as sharp as the ends.
    #[default]
    Slerp,
    /// Straight line: mid-walk latents shrink toward zero and images wash out.
    Lerp,
}

/// How walk time is spent inside each keyframe pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
pub enum Easing {
    #[default]
    Linear,
    /// Slow near each keyframe, fast in between (half a cosine).
    InOut,
}

impl Easing {
    /// Maps linear time in [0, 1] to eased time in [0, 1].
    pub fn apply(self, t: f64) -> f64 {
        match self {
            Easing::Linear => t,
            Easing::InOut => 0.5 - 0.5 * (std::f64::consts::PI * t).cos(),
        }
    }
}

/// What happens at the end of the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
pub enum LoopMode {
    /// Play the path once and stop.
    #[default]
    Once,
    /// Forward, backward, forward... forever, from the decode cache after the first pass.
    PingPong,
    /// Around the keyframes in a circle (last back to first), forever.
    Endless,
}

/// The cosine threshold above which slerp falls back to lerp (nearly parallel vectors:
/// the slerp weights become 0/0). Same value as stable-diffusion-videos.
pub const SLERP_DOT_THRESHOLD: f64 = 0.9995;

/// Spherical interpolation with one angle for the whole tensor, as stable-diffusion-videos
/// does; lerp when |cos| > [`SLERP_DOT_THRESHOLD`].
pub fn slerp(t: f64, v0: &Tensor, v1: &Tensor) -> candle_core::Result<Tensor> {
    let a = v0.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let b = v1.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    if a.len() != b.len() {
        candle_core::bail!("slerp: shapes {:?} and {:?} differ", v0.dims(), v1.dims());
    }
    // f64 accumulation: the f32 reference differs from exact by ~1e-7, well inside 1e-6.
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(&b) {
        let (x, y) = (x as f64, y as f64);
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    let cos = dot / (na.sqrt() * nb.sqrt());
    let (s0, s1) = if !cos.is_finite() || cos.abs() > SLERP_DOT_THRESHOLD {
        (1.0 - t, t)
    } else {
        let theta = cos.acos();
        let sin_theta = theta.sin();
        (
            (theta - theta * t).sin() / sin_theta,
            (theta * t).sin() / sin_theta,
        )
    };
    blend(v0, v1, s0, s1)
}

/// Linear interpolation `(1-t)*v0 + t*v1`.
pub fn lerp(t: f64, v0: &Tensor, v1: &Tensor) -> candle_core::Result<Tensor> {
    blend(v0, v1, 1.0 - t, t)
}

fn blend(v0: &Tensor, v1: &Tensor, s0: f64, s1: f64) -> candle_core::Result<Tensor> {
    (v0.affine(s0, 0.0)? + v1.affine(s1, 0.0)?)?.to_dtype(v0.dtype())
}

/// The walk settings that act live (no new endpoints needed).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct WalkSettings {
    /// Positions from one keyframe to the next (1 = jump straight to it).
    pub steps_between: usize,
    pub interp: Interp,
    pub easing: Easing,
    pub loop_mode: LoopMode,
}

impl Default for WalkSettings {
    fn default() -> Self {
        Self {
            steps_between: 24,
            interp: Interp::Slerp,
            easing: Easing::Linear,
            loop_mode: LoopMode::Once,
        }
    }
}

/// One position on the path: between keyframe `segment` and the next, at linear time `t`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WalkPosition {
    /// Index on the path (the decode cache key).
    pub path_index: usize,
    /// Keyframe pair `(segment, segment + 1)` (wrapping to 0 for the closing pair of an
    /// endless loop).
    pub segment: usize,
    /// Linear time in the pair, before easing, in [0, 1].
    pub t: f64,
}

/// Keyframe latents plus the path between them.
#[derive(Clone)]
pub struct Walk {
    keyframes: Vec<Tensor>,
    settings: WalkSettings,
    /// A timed walk's frames (then `steps_between` plays no part).
    timeline: Option<Timeline>,
    /// Latents sampled for real inside keyframe pairs (diffused in-betweens).
    fixed: FixedLatents,
}

impl Walk {
    /// A walk over at least one keyframe (a single keyframe is a still).
    pub fn new(keyframes: Vec<Tensor>, settings: WalkSettings) -> Self {
        assert!(!keyframes.is_empty(), "a walk needs a keyframe");
        let steps_between = settings.steps_between.max(1);
        Self {
            keyframes,
            settings: WalkSettings {
                steps_between,
                ..settings
            },
            timeline: None,
            fixed: FixedLatents::default(),
        }
    }

    /// This walk with latents fixed inside its keyframe pairs (diffused in-betweens): a
    /// position between fixed places is interpolated between the nearest ones, a fixed
    /// place is its latents as they are.
    pub fn with_fixed(mut self, fixed: FixedLatents) -> Self {
        self.fixed = fixed;
        self
    }

    /// The latents fixed inside keyframe pairs.
    pub fn fixed(&self) -> &FixedLatents {
        &self.fixed
    }

    /// This walk timed by `timeline` (or by steps again, for `None`): frame `i` is where the
    /// timeline's progress `i` says, along the path the loop mode draws (first to last
    /// keyframe for `Once`; around the circle for `Endless`; there and back for `PingPong`).
    /// The walk has as many frames as the timeline, each its own path index (no loop cache
    /// reuse, no laps).
    pub fn with_timeline(mut self, timeline: Option<Timeline>) -> Self {
        self.timeline = timeline;
        self
    }

    pub fn timeline(&self) -> Option<&Timeline> {
        self.timeline.as_ref()
    }

    pub fn settings(&self) -> &WalkSettings {
        &self.settings
    }

    pub fn keyframes(&self) -> &[Tensor] {
        &self.keyframes
    }

    fn segments(&self) -> usize {
        let k = self.keyframes.len();
        match self.settings.loop_mode {
            LoopMode::Endless if k > 1 => k,
            _ => k - 1,
        }
    }

    /// Number of distinct positions on the path (the cache keys `0..path_len`).
    pub fn path_len(&self) -> usize {
        if let Some(timeline) = &self.timeline {
            return timeline.len();
        }
        let steps = self.segments() * self.settings.steps_between;
        match self.settings.loop_mode {
            // The circle's end is its start: not a separate position.
            LoopMode::Endless if self.keyframes.len() > 1 => steps,
            _ => steps + 1,
        }
    }

    /// The position at a path index.
    pub fn position(&self, path_index: usize) -> WalkPosition {
        let n = self.settings.steps_between;
        let segments = self.segments();
        if segments == 0 {
            return WalkPosition {
                path_index,
                segment: 0,
                t: 0.0,
            };
        }
        if let Some(timeline) = &self.timeline {
            let place = self.place_at_progress(timeline.progress(path_index));
            let segment = (place.floor() as usize).min(segments - 1);
            return WalkPosition {
                path_index,
                segment,
                t: (place - segment as f64).clamp(0.0, 1.0),
            };
        }
        let segment = (path_index / n).min(segments - 1);
        let t = (path_index - segment * n) as f64 / n as f64;
        WalkPosition {
            path_index,
            segment,
            t,
        }
    }

    /// Where `progress` (a timeline's share of the walk, in [0, 1]) is, in keyframe pairs
    /// from the first keyframe: `segment + t`.
    fn place_at_progress(&self, progress: f64) -> f64 {
        let pairs = self.segments() as f64;
        match self.settings.loop_mode {
            LoopMode::Once | LoopMode::Endless => progress * pairs,
            // There and back: the far keyframe at half-way.
            LoopMode::PingPong => (1.0 - (2.0 * progress - 1.0).abs()) * pairs,
        }
    }

    /// The path index of the `sequence_index`-th frame of the walk, or `None` when a
    /// `Once` walk (or a timed one) has ended. Ping-pong bounces without repeating the end
    /// frames.
    pub fn path_index_at(&self, sequence_index: u64) -> Option<usize> {
        let len = self.path_len() as u64;
        if self.timeline.is_some() {
            return (sequence_index < len).then_some(sequence_index as usize);
        }
        match self.settings.loop_mode {
            LoopMode::Once => (sequence_index < len).then_some(sequence_index as usize),
            LoopMode::Endless => Some((sequence_index % len) as usize),
            LoopMode::PingPong => {
                if len == 1 {
                    return Some(0);
                }
                let period = 2 * (len - 1);
                let phase = sequence_index % period;
                Some(if phase < len { phase } else { period - phase } as usize)
            }
        }
    }

    /// Frames in `laps` laps of the walk: `Once` ends on the last keyframe, ping-pong back on
    /// the first; an endless loop's laps are whole, their last frame one step before the
    /// first keyframe, so the frames loop seamlessly (played again from the start, the step
    /// from the last frame to the first is a step like any other). A timed walk has its
    /// timeline's frames. Saturates at `u64::MAX` (a walk that long never ends in practice)
    /// instead of overflowing to a short count.
    pub fn frames_in_laps(&self, laps: u64) -> u64 {
        let len = self.path_len() as u64;
        if self.timeline.is_some() {
            return len;
        }
        match self.settings.loop_mode {
            LoopMode::Once => len,
            LoopMode::PingPong => 2u64
                .saturating_mul(len.saturating_sub(1))
                .saturating_mul(laps)
                .saturating_add(1),
            LoopMode::Endless => len.saturating_mul(laps),
        }
    }

    /// Whether the walk's `sequence_index`-th frame starts a lap of an endless loop (the first
    /// keyframe, where `frames_in_laps` counts from): the boundary a recording of a loop
    /// starts and ends on. Never for other walks.
    pub fn starts_lap(&self, sequence_index: u64) -> bool {
        self.timeline.is_none()
            && self.settings.loop_mode == LoopMode::Endless
            && self.keyframes.len() > 1
            && sequence_index.is_multiple_of(self.path_len() as u64)
    }

    /// Whether the frames after the last of [`Self::frames_in_laps`] wrap back to the start
    /// (an endless loop timed by steps): in-betweens then lead from the last frame toward the
    /// first, to close the loop.
    pub fn closes_loop(&self) -> bool {
        self.timeline.is_none()
            && self.settings.loop_mode == LoopMode::Endless
            && self.keyframes.len() > 1
    }

    /// The latents at a position: eased time, then slerp or lerp of the pair.
    pub fn latents_at(&self, position: &WalkPosition) -> candle_core::Result<Tensor> {
        let k = self.keyframes.len();
        if k == 1 {
            return Ok(self.keyframes[0].clone());
        }
        let segment = position.segment;
        if let Some(fixed) = self.fixed.at(segment, position.t) {
            return Ok(fixed.clone());
        }
        // Between the nearest fixed places (the pair's keyframes when none is fixed), at
        // the share of the eased time between them: with nothing fixed, the eased time.
        let ease = |t: f64| self.settings.easing.apply(t);
        let (before, after) = self.fixed.neighbours(segment, position.t);
        let (t0, v0) = before.map_or((0.0, &self.keyframes[segment]), |(t, v)| (*t, v));
        let (t1, v1) = after.map_or((1.0, &self.keyframes[(segment + 1) % k]), |(t, v)| (*t, v));
        let t = match before.is_none() && after.is_none() {
            true => ease(position.t),
            false => (ease(position.t) - ease(t0)) / (ease(t1) - ease(t0)),
        };
        match self.settings.interp {
            Interp::Slerp => slerp(t, v0, v1),
            Interp::Lerp => lerp(t, v0, v1),
        }
    }

    /// The path index `fraction` of the way along the walk's forward path (0: the first
    /// keyframe; 1: the last, or for an endless loop the first again), to seek to. It is
    /// also the sequence index that plays it next, in every loop mode.
    pub fn path_index_at_fraction(&self, fraction: f64) -> usize {
        let steps = self.segments() * self.settings.steps_between;
        let index = (fraction.clamp(0.0, 1.0) * steps as f64).round() as usize;
        index % self.path_len()
    }

    /// The path index nearest to the same place on a path with other settings, so a
    /// live change of steps keeps the walk where it is.
    pub fn carry_over(&self, path_index: usize, new: &Walk) -> usize {
        if self.timeline.is_some() || new.timeline.is_some() {
            // A timed walk's frames are its own: keep the frame index.
            return path_index.min(new.path_len().saturating_sub(1));
        }
        let pos = self.position(path_index);
        let place = pos.segment as f64 + pos.t;
        let index = (place * new.settings.steps_between as f64).round() as usize;
        index.min(new.path_len().saturating_sub(1))
    }
}
