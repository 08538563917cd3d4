//! Catmull-Rom filter taps along one axis, in the fixed point fast_image_resize uses: the
//! [`FilterTable`] the GPU shader reads (`gpu::filter_table` lays it out as a texture) and
//! the four-tap [`Taps`] of the AVX2 kernel are the same weights.
//!
//! The fast kernel in [`super::avx2`] must give the same bytes as fast_image_resize's
//! `Convolution(CatmullRom)` (the GPU shader and the recorder are checked against those
//! bytes), so the weights are made the same way: the support window around each output
//! pixel's centre, clipped to the image, zero weights trimmed from both ends, normalised to
//! sum 1 in f64; then one precision for the whole axis (the most fraction bits that keep the
//! largest weight below 2^15) and each weight rounded to i16. `tests/it/upscale.rs` compares
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

/// The weights of one 1-D resampling pass, one row per output pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FilterTable {
    /// Fractional bits of the fixed-point weights.
    pub precision: u32,
    /// The most taps any output pixel uses.
    pub max_taps: usize,
    /// Per output pixel: the first input pixel and the i16 weights from there on.
    pub rows: Vec<(u32, Vec<i16>)>,
}

const CATMULL_ROM_SUPPORT: f64 = 2.0;
/// i32 sums of u8 * i16 need 8 bits for the value and 2 for overshoot of the kernel.
const MAX_PRECISION: u32 = 32 - 8 - 2;
/// Weights are stored as i16.
const MAX_WEIGHT_BITS: u32 = 15;

impl FilterTable {
    /// The weights that resample `in_size` pixels to `out_size` pixels (both > 0).
    pub fn catmull_rom(in_size: u32, out_size: u32) -> Self {
        let in_start = 0.0f64;
        let scale = (in_size as f64 - in_start) / out_size as f64;
        let filter_scale = scale.max(1.0);
        let radius = CATMULL_ROM_SUPPORT * filter_scale;
        let recip_filter_scale = 1.0 / filter_scale;

        let mut float_rows: Vec<(u32, Vec<f64>)> = Vec::with_capacity(out_size as usize);
        for out_index in 0..out_size {
            let in_center = in_start + (out_index as f64 + 0.5) * scale;
            let first = (in_center - radius).floor().max(0.) as u32;
            let end = (in_center + radius).ceil().min(in_size as f64) as u32;
            // Input pixel i sits at i + 0.5; subtracting 0.5 from the center once instead.
            let center = in_center - 0.5;

            let mut start = first;
            let mut weights = Vec::with_capacity((end - first) as usize);
            let mut sum = 0.0f64;
            for i in first..end {
                let w = catmull_rom((i as f64 - center) * recip_filter_scale);
                if i == start && w == 0.0 {
                    start += 1;
                } else {
                    weights.push(w);
                    sum += w;
                }
            }
            while weights.last() == Some(&0.0) {
                weights.pop();
            }
            if sum != 0.0 {
                weights.iter_mut().for_each(|w| *w /= sum);
            }
            float_rows.push((start, weights));
        }

        // The reference takes the maximum over its padded table, whose padding is 0.0.
        let max_weight = float_rows
            .iter()
            .flat_map(|(_, w)| w.iter().copied())
            .fold(0.0f64, f64::max);
        let mut precision = 0;
        for candidate in 0..MAX_PRECISION {
            precision = candidate;
            let next = (max_weight * (1u32 << (candidate + 1)) as f64).round() as i32;
            if next >= 1 << MAX_WEIGHT_BITS {
                break;
            }
        }

        let one = (1u32 << precision) as f64;
        let rows: Vec<(u32, Vec<i16>)> = float_rows
            .into_iter()
            .map(|(start, w)| (start, w.iter().map(|&w| (w * one).round() as i16).collect()))
            .collect();
        let max_taps = rows.iter().map(|(_, w)| w.len()).max().unwrap_or(0);
        Self {
            precision,
            max_taps,
            rows,
        }
    }
}

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
        let table = FilterTable::catmull_rom(in_size, out_size);
        if table.max_taps > TAPS {
            return None;
        }
        let mut starts = Vec::with_capacity(table.rows.len());
        let mut fixed = Vec::with_capacity(table.rows.len());
        for (start, weights) in table.rows {
            // Pad to four taps, sliding the window left at the right edge; the extra taps
            // weigh zero, so the sums are unchanged.
            let padded_start = start.min(in_size - TAPS as u32);
            let shift = (start - padded_start) as usize;
            let mut taps = [0i16; TAPS];
            taps[shift..shift + weights.len()].copy_from_slice(&weights);
            starts.push(padded_start);
            fixed.push(taps);
        }
        Some(Self {
            starts,
            weights: fixed,
            precision: table.precision as u8,
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
