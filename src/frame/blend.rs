//! Blending two frames' bytes: the in-between arithmetic, shared by the CPU path and the
//! read-back of in-betweens the GPU drew.

use super::RgbaImage;

/// Most in-betweens between two decoded frames.
pub const MAX_INBETWEENS: usize = 15;

/// In-between `j` (0-based) of `k` between `prev` and `next`:
/// `round((1-a)*prev + a*next)` per byte, `a = (j+1)/(k+1)`, rounding halves up.
///
/// Exact integer arithmetic: with `d = k+1`, the value is `((k-j)*p + (j+1)*n) / d`
/// rounded, i.e. `t / (2d)` with `t = 2*((k-j)*p + (j+1)*n) + d`. `t` is below 2^13, so
/// everything fits 16-bit lanes: the division by the per-frame constant `2d` is a high-half
/// multiply by its rounded-up reciprocal and a shift ([`Divider`]), which the compiler turns
/// into `pmullw`/`pmulhuw` on 8 or 16 bytes at a time.
pub fn blend(prev: &RgbaImage, next: &RgbaImage, j: usize, k: usize) -> RgbaImage {
    assert_eq!(
        (prev.width, prev.height),
        (next.width, next.height),
        "in-betweens need frames of one size"
    );
    assert!(j < k && k <= MAX_INBETWEENS, "in-between {j} of {k}");
    let d = (k + 1) as u16;
    let (wp, wn) = ((k - j) as u16, (j + 1) as u16);
    let divider = Divider::new(2 * d, 2 * 255 * d + d);
    let mut pixels = Vec::with_capacity(prev.pixels.len());
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present (checked just above).
        #[allow(unsafe_code)]
        unsafe {
            blend_avx2(
                &prev.pixels,
                &next.pixels,
                (wp, wn, d),
                divider,
                &mut pixels,
            )
        };
    }
    if pixels.is_empty() {
        blend_bytes(
            &prev.pixels,
            &next.pixels,
            (wp, wn, d),
            divider,
            &mut pixels,
        );
    }
    RgbaImage {
        width: prev.width,
        height: prev.height,
        pixels,
    }
}

/// The blend loop, written so that it vectorises: 16-bit lanes throughout.
#[inline(always)]
fn blend_bytes(
    prev: &[u8],
    next: &[u8],
    (wp, wn, d): (u16, u16, u16),
    divider: Divider,
    out: &mut Vec<u8>,
) {
    out.extend(
        prev.iter()
            .zip(next)
            .map(|(&p, &n)| divider.divide(2 * (wp * p as u16 + wn * n as u16) + d) as u8),
    );
}

/// [`blend_bytes`] compiled for AVX2: 16 bytes per instruction instead of SSE2's 8.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(unsafe_code)]
unsafe fn blend_avx2(
    prev: &[u8],
    next: &[u8],
    weights: (u16, u16, u16),
    divider: Divider,
    out: &mut Vec<u8>,
) {
    blend_bytes(prev, next, weights, divider, out);
}

/// `t / divisor` (rounded down) as `((t * multiplier) >> 16) >> shift` in 16-bit lanes,
/// exact for every `t <= max_numerator`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Divider {
    multiplier: u16,
    shift: u32,
}

impl Divider {
    /// The smallest shift whose rounded-up reciprocal fits 16 bits and is exact: with
    /// `m = ceil(2^(16+s) / D)` and `e = m*D - 2^(16+s)`, `floor(t*m / 2^(16+s))` equals
    /// `floor(t / D)` whenever `t * e < 2^(16+s)` (the error stays under one step of
    /// `t / D`). For `D` up to 32 and `t` below 2^13, `s = 2` always qualifies (`D = 4`
    /// takes `s = 0`, an exact power of two).
    ///
    /// # Panics
    /// When `divisor` is 0 or no 16-bit multiplier is exact up to `max_numerator`.
    pub fn new(divisor: u16, max_numerator: u16) -> Self {
        assert!(divisor > 0, "division by zero");
        let divisor = divisor as u64;
        (0..16)
            .find_map(|shift| {
                let unit = 1u64 << (16 + shift);
                let multiplier = unit.div_ceil(divisor);
                let error = multiplier * divisor - unit;
                (multiplier < 1 << 16 && max_numerator as u64 * error < unit).then_some(Self {
                    multiplier: multiplier as u16,
                    shift,
                })
            })
            .expect("a 16-bit reciprocal exists for small divisors")
    }

    /// `t / divisor`, rounded down (for `t` up to the `max_numerator` it was made for).
    #[inline(always)]
    pub fn divide(self, t: u16) -> u16 {
        ((t as u32 * self.multiplier as u32) >> 16) as u16 >> self.shift
    }
}

#[cfg(test)]
mod tests {
    use super::Divider;

    /// Every divisor blends use (2d for d = 2..=16) and then some, every numerator up to
    /// the bound: the multiply-shift equals integer division.
    #[test]
    fn divider_is_exact_for_every_numerator() {
        for divisor in 2..=64u16 {
            let max = 2 * 255 * 16 + 16;
            let divider = Divider::new(divisor, max);
            for t in 0..=max {
                assert_eq!(divider.divide(t), t / divisor, "{t} / {divisor}");
            }
        }
    }
}
