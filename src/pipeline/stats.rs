//! Live pipeline figures, shared by every stage and read by the window and the CLI.

use parking_lot::Mutex;

/// A copy of the figures at one moment.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct StatsSnapshot {
    /// Time to decode one frame (exponential moving average).
    pub decode_ms: f64,
    pub inbetween_ms: f64,
    pub upscale_ms: f64,
    pub frames_decoded: u64,
    /// Decoded frames served from the loop cache instead of decoded again.
    pub frames_from_cache: u64,
    /// Frames that entered the ring buffer (decoded + in-betweens).
    pub frames_produced: u64,
    pub frames_shown: u64,
    /// Display deadlines met with no new frame while the walk was playing.
    pub underruns: u64,
    pub buffer_fill: usize,
    pub buffer_capacity: usize,
    /// Measured display rate over the last second.
    pub shown_fps: f64,
    /// In-betweens used for the last decoded frame (the `auto` choice, when auto).
    pub inbetweens: usize,
    /// What the pipeline does now, for a status line ("sampling keyframe 1/2, step 3/20").
    pub phase: String,
    /// `(done, total)` of the current endpoint sampling, in UNet steps over all keyframes.
    pub endpoint_progress: Option<(usize, usize)>,
    /// Seconds per keyframe of the last finished sampling (text encoding and every sampler
    /// step).
    pub keyframe_seconds: Option<f64>,
    /// Keyframes sampled since the pipeline started (those whose inputs did not change
    /// are reused, not sampled again).
    pub keyframes_sampled: u64,
    /// `(made, asked)` diffused in-betweens of the current walk (`None`: none asked).
    pub refined: Option<(usize, usize)>,
    /// Diffused in-betweens sampled since the pipeline started.
    pub positions_diffused: u64,
    /// Mean seconds per diffused in-between (sampling and the decode that places the next).
    pub diffuse_seconds: Option<f64>,
    /// Keyframe pair and eased-before time of the last decoded frame.
    pub position: (usize, f64),
    pub generation: u64,
    /// The latest error, shown to the user until the next success.
    pub last_error: Option<String>,
    /// The walk is producing frames (not paused, not waiting for endpoints, not ended).
    pub playing: bool,
}

/// Shared, locked figures.
#[derive(Default)]
pub struct Stats {
    inner: Mutex<StatsSnapshot>,
}

/// Weight of the newest sample in the moving averages.
const EWMA_WEIGHT: f64 = 0.2;

fn ewma(old: f64, sample: f64) -> f64 {
    if old == 0.0 {
        sample
    } else {
        old + EWMA_WEIGHT * (sample - old)
    }
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        self.inner.lock().clone()
    }

    /// Changes the figures under the lock.
    pub fn update(&self, f: impl FnOnce(&mut StatsSnapshot)) {
        f(&mut self.inner.lock());
    }

    pub fn record_decode(&self, ms: f64) {
        self.update(|s| {
            s.decode_ms = ewma(s.decode_ms, ms);
            s.frames_decoded += 1;
        });
    }

    pub fn record_inbetween(&self, ms: f64) {
        self.update(|s| s.inbetween_ms = ewma(s.inbetween_ms, ms));
    }

    pub fn record_upscale(&self, ms: f64) {
        self.update(|s| s.upscale_ms = ewma(s.upscale_ms, ms));
    }

    pub fn set_phase(&self, phase: impl Into<String>) {
        let phase = phase.into();
        self.update(|s| s.phase = phase);
    }
}
