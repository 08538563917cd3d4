//! Catmull-Rom filter taps along one axis, in the fixed point fast_image_resize uses.
//!
//! The fast kernel in [`super::avx2`] must give the same bytes as fast_image_resize's
//! `Convolution(CatmullRom)` (the GPU shader and the recorder are checked against those
//! bytes), so the weights are made the same way: the support window around each output
//! pixel's centre, clipped to the image, zero weights trimmed from both ends, normalised to
//! sum 1 in f64; then one precision for the whole axis (the most fraction bits that keep the
//! largest weight below 2^15) and each weight rounded to i16. `tests/upscale.rs` compares
//! the two byte for byte.

/// Catmull-Rom (a = -0.5), written in the same Horner form as fast_image_resize so the f64
/// weights agree to the last bit.
fn catmull_rom(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.) * x - (A + 3.)) * x * x + 1.
    } else if x < 2.0 {
        (((x - 5.) * x + 8.) * x - 4.) * A
    } else {
        0.0
    }
}

/// The filter's half-width in source pixels at scale 1.
const SUPPORT: f64 = 2.0;
/// Fraction bits stop where the accumulator (8-bit value, 2 bits of headroom) fills an i32.
const MAX_PRECISION: u8 = 32 - 8 - 2;

/// Taps per output pixel in the fast kernel.
pub(crate) const TAPS: usize = 4;

/// Four taps per output pixel: `weights[i][t]` multiplies source pixel `starts[i] + t`;
/// the sum plus `1 << (precision - 1)`, shifted right by `precision` and clamped to 0..=255,
/// is the output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Taps {
    pub starts: Vec<u32>,
    pub weights: Vec<[i16; TAPS]>,
    pub precision: u8,
}

impl Taps {
    /// The taps that bring `in_size` pixels to `out_size`, or `None` when some output pixel
    /// needs more than four of them (shrinking widens the window) or the source is narrower
    /// than four pixels.
    pub(crate) fn new(in_size: u32, out_size: u32) -> Option<Self> {
        if in_size < TAPS as u32 || out_size == 0 {
            return None;
        }
        let scale = in_size as f64 / out_size as f64;
        // Shrinking stretches the kernel over `scale` source pixels (no aliasing).
        let filter_scale = scale.max(1.0);
        let radius = SUPPORT * filter_scale;
        let recip_filter_scale = 1.0 / filter_scale;

        let mut windows: Vec<(u32, Vec<f64>)> = Vec::with_capacity(out_size as usize);
        for out_x in 0..out_size {
            let in_center = (out_x as f64 + 0.5) * scale;
            let x_min = (in_center - radius).floor().max(0.) as u32;
            let x_max = (in_center + radius).ceil().min(in_size as f64) as u32;
            let center = in_center - 0.5;
            let mut start = x_min;
            let mut weights = Vec::with_capacity(TAPS + 1);
            let mut sum = 0.0;
            for x in x_min..x_max {
                let w = catmull_rom((x as f64 - center) * recip_filter_scale);
                if x == start && w == 0. {
                    start += 1;
                } else {
                    weights.push(w);
                    sum += w;
                }
            }
            while weights.last() == Some(&0.) {
                weights.pop();
            }
            if sum != 0.0 {
                weights.iter_mut().for_each(|w| *w /= sum);
            }
            windows.push((start, weights));
        }

        // Zero weights (trimmed, or padding up to the window) take part in the maximum too.
        let max_weight = windows
            .iter()
            .flat_map(|(_, w)| w.iter().copied())
            .fold(0.0f64, f64::max);
        let mut precision = 0u8;
        for p in 0..MAX_PRECISION {
            precision = p;
            let next = (max_weight * (1i64 << (p + 1)) as f64).round() as i32;
            if next >= 1 << 15 {
                break;
            }
        }
        let unit = (1i64 << precision) as f64;

        let mut starts = Vec::with_capacity(windows.len());
        let mut fixed = Vec::with_capacity(windows.len());
        for (start, weights) in windows {
            if weights.len() > TAPS {
                return None;
            }
            // Pad to four taps, sliding the window left at the right edge; the extra taps
            // weigh zero, so the sums are unchanged.
            let padded_start = start.min(in_size - TAPS as u32);
            let shift = (start - padded_start) as usize;
            let mut taps = [0i16; TAPS];
            for (t, w) in weights.iter().enumerate() {
                taps[shift + t] = (w * unit).round() as i16;
            }
            starts.push(padded_start);
            fixed.push(taps);
        }
        Some(Self {
            starts,
            weights: fixed,
            precision,
        })
    }

    /// The rounding term added before the shift.
    pub(crate) fn half(&self) -> i32 {
        1 << (self.precision - 1)
    }
}

/// One output value from four source values (the scalar form of the SIMD kernels).
#[inline(always)]
pub(crate) fn apply(weights: &[i16; TAPS], values: [u8; TAPS], half: i32, precision: u8) -> u8 {
    let sum = weights
        .iter()
        .zip(values)
        .fold(half, |acc, (&w, v)| acc + w as i32 * v as i32);
    (sum >> precision).clamp(0, 255) as u8
}
