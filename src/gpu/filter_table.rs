//! The fixed-point Catmull-Rom weights the GPU passes read, computed exactly as the CPU
//! reference (fast_image_resize 6, `ResizeAlg::Convolution(FilterType::CatmullRom)` on
//! `U8x4`) computes them, so the GPU result is the CPU result bit for bit.
//!
//! What fast_image_resize 6.1 does (read in `convolution/mod.rs`, `filters.rs`,
//! `optimisations.rs`, `u8x4/*.rs`, `vertical_u8/*.rs`, `resizer.rs`):
//!
//! * Kernel: Catmull-Rom with a = -0.5, support 2. `Convolution` (unlike `Interpolation`)
//!   widens the kernel by the scale when downscaling (`filter_scale = max(in/out, 1)`); for
//!   upscaling the kernel stays 4 taps wide.
//! * Coordinates: pixel centers. Output pixel `o` maps to `c = (o + 0.5) * in / out` in the
//!   input; input pixel `i` gets weight `k((i + 0.5 - c) / filter_scale)`.
//! * Borders: the window `[floor(c - r), ceil(c + r))` is clipped to the image and the
//!   remaining weights are renormalized to sum to 1 (no coordinate clamping, so edge pixels
//!   are not repeated). Zero weights at either end of the window are dropped.
//! * Fixed point: all weights of one pass share a precision `p`, the largest (at most 21)
//!   such that `round(max_weight * 2^(p + 1)) < 2^15`, i.e. the biggest weight just fits an
//!   i16 (p = 14 when a weight is 1.0). Each weight becomes `round(w * 2^p)` as i16. A pixel
//!   is `clamp((2^(p-1) + sum(k * v)) >> p, 0, 255)` with an i32 sum and an arithmetic
//!   shift; the SIMD paths (AVX2 `madd_epi16`, `srai`, saturating packs) compute the same.
//! * Order: for u8 images, when both axes change, the VERTICAL pass runs first (source ->
//!   `src_width x dst_height`), its result rounded and clamped to u8, then the horizontal
//!   pass. An axis whose size does not change is skipped; our identity pass for such an axis
//!   (one weight 2^14 at offset 0) reproduces the input exactly, so always running both passes
//!   gives the same bytes. `use_alpha(false)` means no alpha premultiplication.

pub(crate) use crate::upscale::taps::FilterTable;

/// Texels before the weights in a row of the table texture: start, tap count, precision.
pub(crate) const TABLE_HEADER_TEXELS: usize = 3;

/// The table as the shader reads it.
impl FilterTable {
    /// Width in texels of the R32Sint table texture (header, then the weights).
    pub fn texture_width(&self) -> u32 {
        (TABLE_HEADER_TEXELS + self.max_taps) as u32
    }

    /// The table as R32Sint texels, one texture row per output pixel, zero-padded.
    pub fn texels(&self) -> Vec<i32> {
        let width = self.texture_width() as usize;
        let mut texels = vec![0i32; width * self.rows.len()];
        for ((start, weights), row) in self.rows.iter().zip(texels.chunks_exact_mut(width)) {
            row[0] = *start as i32;
            row[1] = weights.len() as i32;
            row[2] = self.precision as i32;
            for (texel, &w) in row[TABLE_HEADER_TEXELS..].iter_mut().zip(weights) {
                *texel = i32::from(w);
            }
        }
        texels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_identity() {
        let table = FilterTable::catmull_rom(7, 7);
        assert_eq!(table.precision, 14);
        for (i, (start, weights)) in table.rows.iter().enumerate() {
            assert_eq!((*start, weights.as_slice()), (i as u32, &[1i16 << 14][..]));
        }
    }

    #[test]
    fn rows_sum_to_one_and_stay_inside() {
        for (n, m) in [
            (16, 32),
            (7, 23),
            (37, 100),
            (64, 240),
            (1024, 3840),
            (1, 5),
        ] {
            let table = FilterTable::catmull_rom(n, m);
            assert_eq!(table.rows.len(), m as usize);
            assert!(table.max_taps <= 5, "{n}->{m}: {} taps", table.max_taps);
            for (start, weights) in &table.rows {
                assert!(*start as usize + weights.len() <= n as usize);
                let sum: i32 = weights.iter().map(|&w| i32::from(w)).sum();
                // Each weight is rounded on its own: up to half a unit off per tap.
                assert!(
                    (sum - (1 << table.precision)).abs() <= 3,
                    "{n}->{m}: sum {sum}"
                );
            }
        }
    }
}
