//! From onsets to a walk's timing: the flux sampled once per video frame (the onset
//! envelope), then each frame's advance along the walk.

/// The share of the walk spread evenly over the frames, whatever the sound: the walk drifts
/// on through quiet passages. The rest follows the onset envelope, so it surges on beats.
pub const STEADY_SHARE: f64 = 0.25;

/// How fast a surge dies away, in seconds (the envelope's release: after an onset it falls
/// to 1/e in this time unless a new one lifts it). Short, so the walk's progress stays at the
/// onsets, yet not a one-frame jump.
pub const RELEASE_SECONDS: f64 = 0.04;

/// When each flux value happened: hop `j` at `j * hop_seconds - offset_seconds`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct HopTimes {
    pub hop_seconds: f64,
    pub offset_seconds: f64,
}

impl HopTimes {
    fn time(self, hop: usize) -> f64 {
        hop as f64 * self.hop_seconds - self.offset_seconds
    }

    /// The hop nearest `time`, of `hops`.
    fn nearest(self, time: f64, hops: usize) -> usize {
        let j = ((time + self.offset_seconds) / self.hop_seconds).round();
        (j.max(0.0) as usize).min(hops.saturating_sub(1))
    }
}

/// One value per video frame of `frames` at `fps`: the mean flux of the hops that fall in the
/// frame, held and released as [`RELEASE_SECONDS`] says.
pub(super) fn onset_envelope(flux: &[f32], times: HopTimes, frames: usize, fps: f64) -> Vec<f32> {
    let mut sums = vec![0f64; frames];
    let mut counts = vec![0u32; frames];
    for (j, &value) in flux.iter().enumerate() {
        let frame = (times.time(j) * fps).floor().max(0.0) as usize;
        if frame < frames {
            sums[frame] += f64::from(value);
            counts[frame] += 1;
        }
    }
    // At high frame rates a frame may hold no hop: it takes the nearest hop's flux.
    let nearest = |frame: usize| -> f64 {
        let time = (frame as f64 + 0.5) / fps;
        flux.get(times.nearest(time, flux.len()))
            .map_or(0.0, |&v| f64::from(v))
    };
    let release = (-1.0 / (RELEASE_SECONDS * fps)).exp();
    let mut held = 0f64;
    (0..frames)
        .map(|frame| {
            let level = match counts[frame] {
                0 => nearest(frame),
                n => sums[frame] / f64::from(n),
            };
            held = level.max(held * release);
            held as f32
        })
        .collect()
}

/// Each frame's share of the walk covered, from the envelope: frame `i` advances from frame
/// `i - 1` by [`STEADY_SHARE`] spread evenly plus the rest in proportion to the envelope at
/// `i` (the frame an onset falls in shows the surge). Starts at 0. An open walk ends at 1 on
/// its last frame; a `closed` one (a loop, played again from the start) ends one advance
/// short of 1, that last advance, back to the start, taken by frame 0's envelope (the sound's
/// start, as it loops too).
pub fn walk_progress(envelope: &[f32], closed: bool) -> Vec<f64> {
    let frames = envelope.len();
    if frames == 0 {
        return Vec::new();
    }
    // The advances taken: frames 1.. and, closing a loop, frame 0's back to the start.
    let takes = |i: usize| closed || i > 0;
    let steps = if closed { frames } else { frames - 1 };
    if steps == 0 {
        return vec![0.0];
    }
    let total: f64 = (0..frames)
        .filter(|&i| takes(i))
        .map(|i| f64::from(envelope[i].max(0.0)))
        .sum();
    let (steady, following) = if total > 0.0 && total.is_finite() {
        (STEADY_SHARE, 1.0 - STEADY_SHARE)
    } else {
        // No onset at all (a steady tone): an even walk.
        (1.0, 0.0)
    };
    let advance = |i: usize| {
        let onset = if following > 0.0 {
            f64::from(envelope[i].max(0.0)) / total
        } else {
            0.0
        };
        steady / steps as f64 + following * onset
    };
    let mut covered = 0.0;
    let mut progress = Vec::with_capacity(frames);
    progress.push(0.0);
    for i in 1..frames {
        covered += advance(i);
        progress.push(covered.min(1.0));
    }
    if !closed {
        // Rounding: the last frame is the walk's end exactly.
        if let Some(last) = progress.last_mut() {
            *last = 1.0;
        }
    }
    progress
}
