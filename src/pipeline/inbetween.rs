//! Linear in-between frames at source resolution, before upscaling.

use crate::frame::RgbaImage;

/// Most in-betweens between two decoded frames.
pub const MAX_INBETWEENS: usize = 15;

/// In-between `j` (0-based) of `k` between `prev` and `next`:
/// `round((1-a)*prev + a*next)` per byte, `a = (j+1)/(k+1)`, rounding halves up.
///
/// Exact integer arithmetic: with `d = k+1`, the value is `((k-j)*p + (j+1)*n) / d`
/// rounded, i.e. `(2*((k-j)*p + (j+1)*n) + d) / (2*d)`. The division by the per-frame
/// constant `2d` is a multiply by its rounded-up reciprocal and a shift, exact for every
/// numerator this can produce (checked exhaustively in the tests; 2^19 keeps the
/// products inside u32), which lets the loop vectorise.
pub fn blend(prev: &RgbaImage, next: &RgbaImage, j: usize, k: usize) -> RgbaImage {
    assert_eq!(
        (prev.width, prev.height),
        (next.width, next.height),
        "in-betweens need frames of one size"
    );
    assert!(j < k && k <= MAX_INBETWEENS, "in-between {j} of {k}");
    let d = (k + 1) as u32;
    let (wp, wn) = ((k - j) as u32, (j + 1) as u32);
    const SHIFT: u32 = 19;
    let inv = (1u32 << SHIFT).div_ceil(2 * d);
    let pixels = prev
        .pixels
        .iter()
        .zip(&next.pixels)
        .map(|(&p, &n)| (((2 * (wp * p as u32 + wn * n as u32) + d) * inv) >> SHIFT) as u8)
        .collect();
    RgbaImage {
        width: prev.width,
        height: prev.height,
        pixels,
    }
}

/// How many in-betweens to insert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Inbetweens {
    Fixed(usize),
    /// Enough that the display never starves: see [`auto_inbetweens`].
    Auto,
}

impl Default for Inbetweens {
    fn default() -> Self {
        Inbetweens::Fixed(3)
    }
}

impl std::str::FromStr for Inbetweens {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(Inbetweens::Auto);
        }
        match s.parse::<usize>() {
            Ok(k) if k <= MAX_INBETWEENS => Ok(Inbetweens::Fixed(k)),
            _ => Err(format!(
                "expected a number of in-betweens from 0 to {MAX_INBETWEENS}, or `auto`"
            )),
        }
    }
}

/// The in-between count that makes `k+1` shown frames last as long as one decode:
/// `ceil(decode_time * fps) - 1`, clamped to `0..=15`.
pub fn auto_inbetweens(decode_ms: f64, target_fps: f64) -> usize {
    if !(decode_ms.is_finite() && decode_ms > 0.0 && target_fps > 0.0) {
        return 0;
    }
    let frames_per_decode = (decode_ms / 1000.0 * target_fps).ceil() as usize;
    frames_per_decode.saturating_sub(1).min(MAX_INBETWEENS)
}

impl Inbetweens {
    /// The count to use now, given the measured decode time.
    pub fn count(self, decode_ms: f64, target_fps: f64) -> usize {
        match self {
            Inbetweens::Fixed(k) => k.min(MAX_INBETWEENS),
            Inbetweens::Auto => auto_inbetweens(decode_ms, target_fps),
        }
    }
}
