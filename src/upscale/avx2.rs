//! The AVX2 bicubic kernel: one output row at a time, the vertical pass into a row in L1
//! then the horizontal pass straight into the frame.
//!
//! fast_image_resize runs the vertical pass over the whole image into an 8.8 MB buffer
//! (1024x2160 at 4K) and reads it back for the horizontal pass; here each intermediate row
//! is made just before it is used and stays in cache. The integer arithmetic is the same
//! (i16 weights, i32 sums, `>> precision`, clamp), so the bytes are the same.
//!
//! Intrinsics need `unsafe`: every function here that uses them is only reachable through
//! [`Avx2`], which exists only after runtime detection, and the safe wrappers check every
//! slice length the raw loads and stores rely on.
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use super::taps::{apply, Taps, TAPS};

/// Proof that the CPU has AVX2 (made only by [`Avx2::detect`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2(());

impl Avx2 {
    pub(crate) fn detect() -> Option<Self> {
        is_x86_feature_detected!("avx2").then_some(Self(()))
    }
}

/// Weights of four taps for two output pixels in one 256-bit register: lane 0 for pixel
/// `x + j`, lane 1 for `x + 4 + j` (that pairing makes the final packs land in order).
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct LanePair([i16; 16]);

/// The horizontal weights of 8 output pixels: taps 0-1 and 2-3 of 4 pixel pairs.
#[derive(Clone, Copy)]
#[repr(C)]
struct Group {
    taps01: [LanePair; 4],
    taps23: [LanePair; 4],
}

/// Horizontal taps laid out for the kernel.
pub(crate) struct RowKernel {
    taps: Taps,
    groups: Vec<Group>,
}

impl RowKernel {
    pub(crate) fn new(taps: Taps) -> Self {
        let pair = |a: &[i16; TAPS], b: &[i16; TAPS], t: usize| {
            let mut v = [0i16; 16];
            for i in 0..4 {
                v[2 * i] = a[t];
                v[2 * i + 1] = a[t + 1];
                v[8 + 2 * i] = b[t];
                v[8 + 2 * i + 1] = b[t + 1];
            }
            LanePair(v)
        };
        let groups = taps
            .weights
            .chunks_exact(8)
            .map(|w| Group {
                taps01: std::array::from_fn(|j| pair(&w[j], &w[4 + j], 0)),
                taps23: std::array::from_fn(|j| pair(&w[j], &w[4 + j], 2)),
            })
            .collect();
        Self { taps, groups }
    }
}

impl Avx2 {
    /// `out[i] = clamp((half + sum_t weights[t] * rows[t][i]) >> precision)` for every byte.
    pub(crate) fn vertical_row(
        self,
        rows: [&[u8]; TAPS],
        weights: &[i16; TAPS],
        precision: u8,
        out: &mut [u8],
    ) {
        assert!(rows.iter().all(|r| r.len() >= out.len()));
        assert!((1..16).contains(&precision));
        // SAFETY: AVX2 was detected (`self`); every row holds at least `out.len()` bytes.
        unsafe { vertical_row(rows, weights, precision, out) }
    }

    /// One row of the horizontal pass: `out` (RGBA, one pixel per tap set) from `src`
    /// (RGBA, the source width). With `stream`, whole groups are written with
    /// non-temporal stores (when `out` is 16-byte aligned): a frame far larger than the
    /// caches is not read in just to be overwritten. Call [`fence`](Self::fence) before
    /// handing streamed rows to another thread.
    pub(crate) fn horizontal_row(
        self,
        kernel: &RowKernel,
        src: &[u8],
        out: &mut [u8],
        stream: bool,
    ) {
        let taps = &kernel.taps;
        assert_eq!(out.len(), taps.starts.len() * 4);
        assert!(taps
            .starts
            .last()
            .is_none_or(|&s| (s as usize + TAPS) * 4 <= src.len()));
        assert!((1..16).contains(&taps.precision));
        let stream = stream && (out.as_ptr() as usize).is_multiple_of(16);
        // SAFETY: AVX2 was detected; the starts are non-decreasing (so the last one is the
        // largest) and every 16-byte load at `start * 4` lies within `src`; `out` has room
        // for every output pixel, and streamed stores are 16-byte aligned (`out` is, and
        // groups are 32 bytes).
        unsafe { horizontal_row(kernel, src, out, stream) }
    }

    /// Orders earlier non-temporal stores before every later store (`sfence`).
    pub(crate) fn fence(self) {
        // SAFETY: SSE is part of x86_64.
        unsafe { _mm_sfence() }
    }
}

#[target_feature(enable = "avx2")]
unsafe fn vertical_row(rows: [&[u8]; TAPS], weights: &[i16; TAPS], precision: u8, out: &mut [u8]) {
    let pair = |a: i16, b: i16| ((b as u16 as u32) << 16 | a as u16 as u32) as i32;
    let k01 = _mm256_set1_epi32(pair(weights[0], weights[1]));
    let k23 = _mm256_set1_epi32(pair(weights[2], weights[3]));
    let half = 1i32 << (precision - 1);
    let half_v = _mm256_set1_epi32(half);
    let shift = _mm_cvtsi32_si128(precision as i32);
    let zero = _mm256_setzero_si256();
    let n = out.len();
    let [r0, r1, r2, r3] = rows.map(|r| r.as_ptr());
    let dst = out.as_mut_ptr();
    let mut i = 0;
    while i + 32 <= n {
        let a = _mm256_loadu_si256(r0.add(i) as *const __m256i);
        let b = _mm256_loadu_si256(r1.add(i) as *const __m256i);
        let c = _mm256_loadu_si256(r2.add(i) as *const __m256i);
        let d = _mm256_loadu_si256(r3.add(i) as *const __m256i);
        // Interleave rows (0,1) and (2,3) so each i16 pair meets its pair of weights.
        let ab = [_mm256_unpacklo_epi8(a, b), _mm256_unpackhi_epi8(a, b)];
        let cd = [_mm256_unpacklo_epi8(c, d), _mm256_unpackhi_epi8(c, d)];
        let mut sums = [zero; 4];
        for h in 0..2 {
            let lo = _mm256_add_epi32(
                _mm256_madd_epi16(_mm256_unpacklo_epi8(ab[h], zero), k01),
                _mm256_madd_epi16(_mm256_unpacklo_epi8(cd[h], zero), k23),
            );
            let hi = _mm256_add_epi32(
                _mm256_madd_epi16(_mm256_unpackhi_epi8(ab[h], zero), k01),
                _mm256_madd_epi16(_mm256_unpackhi_epi8(cd[h], zero), k23),
            );
            sums[2 * h] = _mm256_sra_epi32(_mm256_add_epi32(lo, half_v), shift);
            sums[2 * h + 1] = _mm256_sra_epi32(_mm256_add_epi32(hi, half_v), shift);
        }
        // Within each 128-bit lane the packs undo the interleaving: bytes come out in order.
        let packed = _mm256_packus_epi16(
            _mm256_packs_epi32(sums[0], sums[1]),
            _mm256_packs_epi32(sums[2], sums[3]),
        );
        _mm256_storeu_si256(dst.add(i) as *mut __m256i, packed);
        i += 32;
    }
    for (j, o) in out.iter_mut().enumerate().skip(i) {
        *o = apply(
            weights,
            [rows[0][j], rows[1][j], rows[2][j], rows[3][j]],
            half,
            precision,
        );
    }
}

#[target_feature(enable = "avx2")]
unsafe fn horizontal_row(kernel: &RowKernel, src: &[u8], out: &mut [u8], stream: bool) {
    let taps = &kernel.taps;
    let precision = taps.precision;
    let half = taps.half();
    let half_v = _mm256_set1_epi32(half);
    let shift = _mm_cvtsi32_si128(precision as i32);
    // From 4 RGBA pixels p0..p3 in a lane: i16 (p0.c, p1.c) pairs for taps 0-1, then
    // (p2.c, p3.c) for taps 2-3, channel by channel.
    #[rustfmt::skip]
    let taps01 = _mm256_setr_epi8(
        0, -1, 4, -1, 1, -1, 5, -1, 2, -1, 6, -1, 3, -1, 7, -1,
        0, -1, 4, -1, 1, -1, 5, -1, 2, -1, 6, -1, 3, -1, 7, -1,
    );
    #[rustfmt::skip]
    let taps23 = _mm256_setr_epi8(
        8, -1, 12, -1, 9, -1, 13, -1, 10, -1, 14, -1, 11, -1, 15, -1,
        8, -1, 12, -1, 9, -1, 13, -1, 10, -1, 14, -1, 11, -1, 15, -1,
    );
    let src_ptr = src.as_ptr();
    let dst = out.as_mut_ptr();
    let starts = taps.starts.as_ptr();
    for (g, group) in kernel.groups.iter().enumerate() {
        let x = g * 8;
        let mut sums = [half_v; 4];
        for (j, sum) in sums.iter_mut().enumerate() {
            let left = *starts.add(x + j) as usize * 4;
            let right = *starts.add(x + 4 + j) as usize * 4;
            let pixels = _mm256_inserti128_si256::<1>(
                _mm256_castsi128_si256(_mm_loadu_si128(src_ptr.add(left) as *const __m128i)),
                _mm_loadu_si128(src_ptr.add(right) as *const __m128i),
            );
            let w01 = _mm256_load_si256(group.taps01[j].0.as_ptr() as *const __m256i);
            let w23 = _mm256_load_si256(group.taps23[j].0.as_ptr() as *const __m256i);
            *sum = _mm256_add_epi32(
                *sum,
                _mm256_add_epi32(
                    _mm256_madd_epi16(_mm256_shuffle_epi8(pixels, taps01), w01),
                    _mm256_madd_epi16(_mm256_shuffle_epi8(pixels, taps23), w23),
                ),
            );
            *sum = _mm256_sra_epi32(*sum, shift);
        }
        // Lane 0 holds pixels x..x+3, lane 1 x+4..x+7: the packs keep that order.
        let packed = _mm256_packus_epi16(
            _mm256_packs_epi32(sums[0], sums[1]),
            _mm256_packs_epi32(sums[2], sums[3]),
        );
        let at = dst.add(x * 4);
        if stream {
            _mm_stream_si128(at as *mut __m128i, _mm256_castsi256_si128(packed));
            _mm_stream_si128(
                at.add(16) as *mut __m128i,
                _mm256_extracti128_si256::<1>(packed),
            );
        } else {
            _mm256_storeu_si256(at as *mut __m256i, packed);
        }
    }
    let done = kernel.groups.len() * 8;
    for (i, pixel) in out.chunks_exact_mut(4).enumerate().skip(done) {
        let start = taps.starts[i] as usize * 4;
        let weights = &taps.weights[i];
        for (c, value) in pixel.iter_mut().enumerate() {
            let at = |t: usize| src[start + 4 * t + c];
            *value = apply(weights, [at(0), at(1), at(2), at(3)], half, precision);
        }
    }
}
