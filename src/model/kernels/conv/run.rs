//! The driver every convolution call goes through: splits the output in row bands, runs
//! each band (input transform, 36 GEMMs, output transform with the fused epilogue) on the
//! rayon pool with per-thread scratch buffers.

use std::cell::RefCell;

use rayon::prelude::*;

use super::gemm::micro_kernel;
use super::isa::Isa;
use super::pack::{column_blocks, Packed};
use super::plan::{Plan, MR};
use super::sink::{act_bands, planes, split_rows, BandOut, OutKind, Sink};
use super::winograd::{add, input_1d, lane, output_1d, Lane, PATCH, POINTS, TILE};
use crate::model::kernels::layout::{Act, LANES};

/// The shared driver of every convolution: splits the output in bands, runs them on the
/// rayon pool.
pub(super) fn run(weights: &Packed<'_>, plan: Plan, input: &Act, upsample: usize, sink: Sink<'_>) {
    assert_eq!(input.c, weights.cin_p, "conv input channels");
    assert!(plan.chunk.is_multiple_of(MR) && plan.k_block > 0);
    let (cout, cout_p) = (weights.cout, weights.cout_p);
    let (n, out_h, out_w) = (input.n, input.h * upsample, input.w * upsample);
    let tiles_h = out_h.div_ceil(TILE);
    let rows = plan.band_rows(tiles_h);
    let (mut bands, skip, relu, kind) = match sink {
        Sink::Act { out, skip, relu } => {
            if let Some(skip) = skip {
                assert_eq!((skip.n, skip.h, skip.w, skip.c), (n, out_h, out_w, cout_p));
            }
            let bands = act_bands(out, (n, out_h, out_w, cout_p), &rows);
            (bands, skip, relu, OutKind::Act)
        }
        Sink::AddTo { out } => {
            let bands = act_bands(out, (n, out_h, out_w, cout_p), &rows);
            (bands, None, false, OutKind::AddTo)
        }
        Sink::Image { out } => {
            let bands = planes(out, (n, cout, out_h, out_w), &rows);
            (bands, None, false, OutKind::Image)
        }
        Sink::Planes { out } => {
            let bands = planes(out, (n, cout, out_h, out_w), &rows);
            (bands, None, false, OutKind::Planes)
        }
        Sink::Rgba { out } => {
            assert_eq!(out.len(), n, "one RGBA buffer per batch row");
            assert!(cout <= 4, "RGBA output needs at most 4 channels");
            let bands: Vec<BandOut> = out
                .iter_mut()
                .flat_map(|image| {
                    image.resize(out_h * out_w * 4, 255);
                    split_rows(image, &rows, out_w * 4, out_h)
                })
                .map(BandOut::Rgba)
                .collect();
            (bands, None, false, OutKind::Rgba)
        }
    };
    assert_eq!(bands.len(), n * rows.len(), "conv output size");
    let isa = Isa::detect();
    let job = Job {
        w: weights,
        plan,
        input,
        upsample,
        out_h,
        out_w,
        skip,
        relu,
        kind,
    };
    bands.par_iter_mut().enumerate().for_each(|(i, band)| {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let (ty0, count) = rows[i % rows.len()];
            job.band(isa, i / rows.len(), ty0, count, band, &mut scratch);
        });
    });
}

thread_local! {
    /// Per-thread transform buffers, kept between bands and calls (allocating ~400 KiB per
    /// band would cost page faults).
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// One convolution call, shared by all bands.
struct Job<'a> {
    w: &'a Packed<'a>,
    plan: Plan,
    input: &'a Act,
    upsample: usize,
    out_h: usize,
    out_w: usize,
    skip: Option<&'a Act>,
    relu: bool,
    kind: OutKind,
}

impl Job<'_> {
    /// Tile rows `ty0..ty0 + rows` of image `b`.
    fn band(
        &self,
        isa: Isa,
        b: usize,
        ty0: usize,
        rows: usize,
        out: &mut BandOut,
        scratch: &mut Vec<f32>,
    ) {
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Avx2Fma` is only chosen after runtime detection of AVX2 and FMA.
            #[allow(unsafe_code)]
            Isa::Avx2Fma => unsafe { self.band_avx2(b, ty0, rows, out, scratch) },
            Isa::Generic => self.band_impl::<false>(b, ty0, rows, out, scratch),
        }
    }

    /// The same code as the generic path, compiled with AVX2 and FMA enabled so the lane
    /// loops of the transforms become single 256-bit instructions.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn band_avx2(
        &self,
        b: usize,
        ty0: usize,
        rows: usize,
        out: &mut BandOut,
        scratch: &mut Vec<f32>,
    ) {
        self.band_impl::<true>(b, ty0, rows, out, scratch)
    }

    /// One band of tile rows: for each chunk of tiles (raster order), input transform,
    /// 36 GEMMs, output transform with the fused epilogue.
    #[inline(always)]
    fn band_impl<const AVX: bool>(
        &self,
        b: usize,
        ty0: usize,
        rows: usize,
        out: &mut BandOut,
        scratch: &mut Vec<f32>,
    ) {
        let w = self.w;
        let (cin_p, cout_p) = (w.cin_p, w.cout_p);
        let chunk = self.plan.chunk;
        let v_len = POINTS * chunk * cin_p;
        let m_len = POINTS * chunk * cout_p;
        if scratch.len() < v_len + m_len {
            scratch.resize(v_len + m_len, 0.0);
        }
        let (v, rest) = scratch.split_at_mut(v_len);
        let m = &mut rest[..m_len];
        let tiles_w = self.out_w.div_ceil(TILE);
        let band_tiles = rows * tiles_w;
        let tile_at = |i: usize| (ty0 + i / tiles_w, i % tiles_w);
        for i0 in (0..band_tiles).step_by(chunk) {
            let tiles = (band_tiles - i0).min(chunk);
            let tiles_padded = tiles.div_ceil(MR) * MR;
            for t in 0..tiles {
                let (ty, tx) = tile_at(i0 + t);
                self.input_tile(b, ty, tx, t, v);
            }
            // The micro-kernel works on MR tiles at a time: give the spare rows of the last
            // chunk defined values (their products are never read).
            for p in 0..POINTS {
                v[(p * chunk + tiles) * cin_p..][..(tiles_padded - tiles) * cin_p].fill(0.0);
            }
            for p in 0..POINTS {
                let vp = &v[p * chunk * cin_p..][..chunk * cin_p];
                let up = &w.u[p * cin_p * cout_p..][..cin_p * cout_p];
                let mp = &mut m[p * chunk * cout_p..][..chunk * cout_p];
                for k0 in (0..cin_p).step_by(self.plan.k_block) {
                    let k = (cin_p - k0).min(self.plan.k_block);
                    for (n0, width) in column_blocks(cout_p) {
                        let ub = &up[n0 * cin_p + k0 * width..][..width * k];
                        for t0 in (0..tiles_padded).step_by(MR) {
                            let a = &vp[t0 * cin_p + k0..];
                            let c = &mut mp[t0 * cout_p + n0..];
                            match (width == 2 * LANES, k0 > 0) {
                                (true, false) => {
                                    micro_kernel::<AVX, 2, false>(k, a, cin_p, ub, c, cout_p)
                                }
                                (false, false) => {
                                    micro_kernel::<AVX, 1, false>(k, a, cin_p, ub, c, cout_p)
                                }
                                (true, true) => {
                                    micro_kernel::<AVX, 2, true>(k, a, cin_p, ub, c, cout_p)
                                }
                                (false, true) => {
                                    micro_kernel::<AVX, 1, true>(k, a, cin_p, ub, c, cout_p)
                                }
                            }
                        }
                    }
                }
            }
            for t in 0..tiles {
                let (ty, tx) = tile_at(i0 + t);
                self.output_tile(b, (ty, ty - ty0), tx, t, m, out);
            }
        }
    }

    /// Gathers the 6x6 input patch of tile (ty, tx) (zero outside the image, upsampled on the
    /// fly) and writes `B^T d B` for every channel into `v[point][t][channel]`.
    #[inline(always)]
    fn input_tile(&self, b: usize, ty: usize, tx: usize, t: usize, v: &mut [f32]) {
        let input = self.input;
        let c = input.c;
        let chunk = self.plan.chunk;
        let (up, out_h, out_w) = (self.upsample, self.out_h, self.out_w);
        // Offsets of the patch's pixels in the input, None outside the image.
        let mut offsets = [None; POINTS];
        let image = b * input.h * input.w;
        for i in 0..PATCH {
            let y = (ty * TILE + i).wrapping_sub(1);
            if y >= out_h {
                continue;
            }
            for j in 0..PATCH {
                let x = (tx * TILE + j).wrapping_sub(1);
                if x < out_w {
                    offsets[i * PATCH + j] = Some((image + (y / up) * input.w + x / up) * c);
                }
            }
        }
        for ch in (0..c).step_by(LANES) {
            let mut rows = [[[0f32; LANES]; PATCH]; PATCH];
            for (i, row) in rows.iter_mut().enumerate() {
                let mut d = [[0f32; LANES]; PATCH];
                for (j, lane) in d.iter_mut().enumerate() {
                    if let Some(offset) = offsets[i * PATCH + j] {
                        lane.copy_from_slice(&input.data[offset + ch..][..LANES]);
                    }
                }
                *row = input_1d(&d);
            }
            for j in 0..PATCH {
                let mut column = [[0f32; LANES]; PATCH];
                for (lane, row) in column.iter_mut().zip(&rows) {
                    *lane = row[j];
                }
                let transformed = input_1d(&column);
                for (i, lane) in transformed.iter().enumerate() {
                    let p = i * PATCH + j;
                    v[(p * chunk + t) * c + ch..][..LANES].copy_from_slice(lane);
                }
            }
        }
    }

    /// `A^T m A` for tile t of the chunk (tile row `ty`, the band's `ty_band`-th), plus
    /// bias, then the sink's epilogue.
    #[inline(always)]
    fn output_tile(
        &self,
        b: usize,
        (ty, ty_band): (usize, usize),
        tx: usize,
        t: usize,
        m: &[f32],
        out: &mut BandOut,
    ) {
        let w = self.w;
        let cout_p = w.cout_p;
        let chunk = self.plan.chunk;
        let rows_valid = (self.out_h - ty * TILE).min(TILE);
        let cols_valid = (self.out_w - tx * TILE).min(TILE);
        for ch in (0..cout_p).step_by(LANES) {
            let mut rows = [[[0f32; LANES]; TILE]; PATCH];
            for (i, row) in rows.iter_mut().enumerate() {
                let mut d = [[0f32; LANES]; PATCH];
                for (j, d) in d.iter_mut().enumerate() {
                    let p = i * PATCH + j;
                    *d = lane(&m[(p * chunk + t) * cout_p + ch..]);
                }
                *row = output_1d(&d);
            }
            let bias = lane(&w.bias[ch..]);
            for xx in 0..cols_valid {
                let mut column = [[0f32; LANES]; PATCH];
                for (lane, row) in column.iter_mut().zip(&rows) {
                    *lane = row[xx];
                }
                let y = output_1d(&column);
                for (yy, value) in y.iter().enumerate().take(rows_valid) {
                    let value = add(*value, bias);
                    let rows = (ty * TILE + yy, ty_band * TILE + yy);
                    self.epilogue(b, rows, tx * TILE + xx, ch, value, out);
                }
            }
        }
    }

    /// Writes one pixel's 8 channels (`ch..ch + 8`) at output row `y` (row `y_band` of the
    /// band), column `x`.
    #[inline(always)]
    fn epilogue(
        &self,
        b: usize,
        (y, y_band): (usize, usize),
        x: usize,
        ch: usize,
        mut value: Lane,
        out: &mut BandOut,
    ) {
        let w = self.out_w;
        match out {
            BandOut::Act(band) => {
                let c = self.w.cout_p;
                let at = (y_band * w + x) * c + ch;
                if let Some(skip) = self.skip {
                    value = add(
                        value,
                        lane(&skip.data[((b * skip.h + y) * w + x) * c + ch..]),
                    );
                }
                if self.kind == OutKind::AddTo {
                    value = add(value, lane(&band[at..]));
                }
                if self.relu {
                    for v in &mut value {
                        *v = v.max(0.0);
                    }
                }
                band[at..][..LANES].copy_from_slice(&value);
            }
            BandOut::Planes(planes) => {
                let image = self.kind == OutKind::Image;
                debug_assert!(image || self.kind == OutKind::Planes);
                // This call holds channels ch..ch + 8 (planes past `cout` do not exist).
                for (plane, &v) in planes.iter_mut().skip(ch).zip(&value) {
                    // diffusers' `x.mul(2).sub(1)`, two roundings as there.
                    plane[y_band * w + x] = if image { v * 2.0 - 1.0 } else { v };
                }
            }
            BandOut::Rgba(band) => {
                debug_assert!(self.kind == OutKind::Rgba);
                let pixel = &mut band[(y_band * w + x) * 4..][..4];
                for (k, byte) in pixel.iter_mut().enumerate().take(self.w.cout) {
                    *byte = (value[k].clamp(0.0, 1.0) * 255.0).round() as u8;
                }
            }
        }
    }
}
