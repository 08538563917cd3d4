//! Spectral flux, the onset measure: how much louder the spectrum got since the last hop,
//! summed over frequencies (rises only). A drum hit, a plucked note or a click raises many
//! bins at once and stands out; a held note or steady noise adds little.
//!
//! Streaming: samples go in as they are decoded, one flux value comes out per hop.

use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};

/// The analysis window's length in seconds (rounded to a power of two in samples: 1024 at
/// 44.1 or 48 kHz). About 23 ms: short enough that an onset lands in the right video frame
/// (a frame is 33 ms at 30 fps), long enough to resolve low notes' harmonics.
const WINDOW_SECONDS: f64 = 0.023;

/// Hops per window: a flux value every quarter window (5.8 ms at 44.1 kHz).
const HOPS_PER_WINDOW: usize = 4;

/// The log compression's gain: `ln(1 + GAIN * magnitude)` (magnitudes scaled so that a
/// full-scale sine peaks at 1). Compression lets a quiet onset count beside a loud one, as
/// it sounds; 100 is in the usual range (1..1000) of onset detectors.
const LOG_GAIN: f32 = 100.0;

/// Spectral flux of a stream of mono samples, one value per hop.
pub(super) struct FluxAnalyzer {
    window: usize,
    hop: usize,
    hann: Vec<f32>,
    fft: Arc<dyn RealToComplex<f32>>,
    /// Samples not yet consumed by a hop, starting with `window` zeros so that sound at the
    /// very start is an onset like any other.
    pending: Vec<f32>,
    input: Vec<f32>,
    spectrum: Vec<Complex<f32>>,
    scratch: Vec<Complex<f32>>,
    /// The previous hop's log magnitudes.
    previous: Vec<f32>,
    flux: Vec<f32>,
}

impl FluxAnalyzer {
    /// An analyzer for samples at `sample_rate`.
    pub(super) fn new(sample_rate: u32) -> Self {
        let window = window_len(sample_rate);
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(window);
        let hann: Vec<f32> = (0..window)
            .map(|i| {
                let phase = 2.0 * std::f64::consts::PI * i as f64 / window as f64;
                (0.5 - 0.5 * phase.cos()) as f32
            })
            .collect();
        let bins = window / 2 + 1;
        Self {
            window,
            hop: window / HOPS_PER_WINDOW,
            hann,
            input: fft.make_input_vec(),
            spectrum: fft.make_output_vec(),
            scratch: fft.make_scratch_vec(),
            fft,
            pending: vec![0.0; window],
            previous: vec![0.0; bins],
            flux: Vec::new(),
        }
    }

    /// Samples per analysis window.
    pub(super) fn window(&self) -> usize {
        self.window
    }

    /// Samples per hop (one flux value each).
    pub(super) fn hop(&self) -> usize {
        self.hop
    }

    /// Takes more samples, computing the flux of every hop they complete.
    pub(super) fn push(&mut self, samples: &[f32]) {
        self.pending.extend_from_slice(samples);
        let mut start = 0;
        while self.pending.len() - start >= self.window {
            self.hop_at(start);
            start += self.hop;
        }
        self.pending.drain(..start);
    }

    /// The flux of every hop, the last ones (the end of the sound leaving the window)
    /// flushed with silence. Hop `j`'s window ends at sample `j * hop` of the stream.
    pub(super) fn finish(mut self) -> Vec<f32> {
        let tail = vec![0.0; self.window];
        self.push(&tail);
        self.flux
    }

    fn hop_at(&mut self, start: usize) {
        let frame = &self.pending[start..start + self.window];
        for ((x, &s), &w) in self.input.iter_mut().zip(frame).zip(&self.hann) {
            *x = s * w;
        }
        // The lengths come from the plan itself, so this cannot fail.
        if self
            .fft
            .process_with_scratch(&mut self.input, &mut self.spectrum, &mut self.scratch)
            .is_err()
        {
            self.flux.push(0.0);
            return;
        }
        // A full-scale sine gives |X| = window/4 under a Hann window.
        let scale = 4.0 / self.window as f32;
        let mut flux = 0f32;
        for (bin, previous) in self.spectrum.iter().zip(self.previous.iter_mut()) {
            let level = (1.0 + LOG_GAIN * bin.norm() * scale).ln();
            flux += (level - *previous).max(0.0);
            *previous = level;
        }
        self.flux.push(flux);
    }
}

/// The window for `sample_rate`: the power of two nearest [`WINDOW_SECONDS`], 256 at least.
fn window_len(sample_rate: u32) -> usize {
    let samples = (f64::from(sample_rate.max(1)) * WINDOW_SECONDS).max(1.0);
    let power = samples.log2().round().clamp(8.0, 16.0) as u32;
    1 << power
}
