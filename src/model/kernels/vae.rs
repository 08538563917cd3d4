//! The AutoencoderKL decoder's NHWC kernels besides its 3x3 convolutions (those run in
//! [`crate::model::conv`]): GroupNorm with its SiLU, 1x1 convolutions and linear layers on
//! the `gemm` crate, and the mid block's self-attention computed a block of query rows at a
//! time (the full 4096 x 4096 score matrix of a 64x64 latent would be 64 MB).
//!
//! The `pub` functions at the end run the same kernels on NCHW tensors, for tests.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use super::conv::{padded, Act, CompactConv3x3, Sink};
use crate::model::{ModelError, Result};

/// Pixels per rayon task in the per-pixel passes (GroupNorm): large enough that a task's
/// overhead vanishes, small enough for many tasks per thread.
const PIXELS_PER_TASK: usize = 2048;

/// GroupNorm over NHWC activations, optionally followed by SiLU (`x * sigmoid(x)`).
///
/// Statistics are accumulated in f64 around a per-channel shift (the first pixel's value),
/// so the variance does not lose digits to a large mean; the normalised value is
/// `((x - mean_hi) - mean_lo) * (gamma / sqrt(var + eps)) + beta`, the mean split in two
/// f32s so that a mean of 300 costs no more than the rounding of `x` itself.
#[derive(Debug, Clone)]
pub(crate) struct GroupNorm {
    channels: usize,
    groups: usize,
    eps: f64,
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

/// Per-channel `(mean, scale, beta)` of one image, padded channels all zero (so they stay 0).
struct Affine {
    mean: Vec<f32>,
    /// `mean - mean as f32`, the part of the mean an f32 cannot hold.
    mean_lo: Vec<f32>,
    scale: Vec<f32>,
    beta: Vec<f32>,
}

impl GroupNorm {
    /// `gamma` and `beta` have one value per channel; `groups` must divide the channels.
    pub fn new(gamma: &[f32], beta: &[f32], groups: usize, eps: f64) -> Self {
        assert_eq!(gamma.len(), beta.len(), "GroupNorm weight and bias sizes");
        assert!(
            groups > 0 && gamma.len().is_multiple_of(groups),
            "GroupNorm groups"
        );
        Self {
            channels: gamma.len(),
            groups,
            eps,
            gamma: gamma.to_vec(),
            beta: beta.to_vec(),
        }
    }

    /// Normalises `x` in place.
    pub fn forward_in_place(&self, x: &mut Act, silu: bool) {
        assert_eq!(x.c, padded(self.channels), "GroupNorm channels");
        let image_len = x.h * x.w * x.c;
        let c = x.c;
        for image in x.data.chunks_mut(image_len) {
            let affine = self.affine(image, c);
            image
                .par_chunks_mut(PIXELS_PER_TASK * c)
                .for_each(|block| apply(block, &affine, silu));
        }
    }

    /// Writes the normalised `x` into `out` (same shape), `x` unchanged.
    pub fn forward_into(&self, x: &Act, out: &mut Act, silu: bool) {
        assert_eq!(x.c, padded(self.channels), "GroupNorm channels");
        assert_eq!((x.n, x.h, x.w, x.c), (out.n, out.h, out.w, out.c));
        let image_len = x.h * x.w * x.c;
        let c = x.c;
        for (image, out) in x.data.chunks(image_len).zip(out.data.chunks_mut(image_len)) {
            let affine = self.affine(image, c);
            out.par_chunks_mut(PIXELS_PER_TASK * c)
                .zip(image.par_chunks(PIXELS_PER_TASK * c))
                .for_each(|(out, block)| {
                    out.copy_from_slice(block);
                    apply(out, &affine, silu)
                });
        }
    }

    /// Mean and scale of every channel of one image (`c` = padded channel stride).
    fn affine(&self, image: &[f32], c: usize) -> Affine {
        let pixels = image.len() / c;
        let shift: Vec<f32> = image[..c].to_vec();
        let (s1, s2) = image
            .par_chunks(PIXELS_PER_TASK * c)
            .map(|block| shifted_sums(block, &shift))
            .reduce(
                || (vec![0f64; c], vec![0f64; c]),
                |(mut a1, mut a2), (b1, b2)| {
                    a1.iter_mut().zip(&b1).for_each(|(a, b)| *a += b);
                    a2.iter_mut().zip(&b2).for_each(|(a, b)| *a += b);
                    (a1, a2)
                },
            );
        let per_group = self.channels / self.groups;
        let n = pixels as f64;
        let mut affine = Affine {
            mean: vec![0f32; c],
            mean_lo: vec![0f32; c],
            scale: vec![0f32; c],
            beta: vec![0f32; c],
        };
        for g in 0..self.groups {
            let range = g * per_group..(g + 1) * per_group;
            let count = n * per_group as f64;
            let total: f64 = range
                .clone()
                .map(|ch| s1[ch] + n * f64::from(shift[ch]))
                .sum();
            let mean = total / count;
            // Sum of (x - mean)^2 from the sums around each channel's shift K:
            // (x - K - d)^2 summed, with d = mean - K.
            let m2: f64 = range
                .clone()
                .map(|ch| {
                    let d = mean - f64::from(shift[ch]);
                    s2[ch] - 2.0 * d * s1[ch] + n * d * d
                })
                .sum();
            let var = (m2 / count).max(0.0);
            let rstd = 1.0 / (var + self.eps).sqrt();
            for ch in range {
                affine.mean[ch] = mean as f32;
                affine.mean_lo[ch] = (mean - f64::from(mean as f32)) as f32;
                affine.scale[ch] = (f64::from(self.gamma[ch]) * rstd) as f32;
                affine.beta[ch] = self.beta[ch];
            }
        }
        affine
    }
}

/// Per-channel sums of `x - shift` and `(x - shift)^2` over the pixels of `block`: f32
/// partial sums over 64 pixels (vectorised along the channels), then f64.
fn shifted_sums(block: &[f32], shift: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let c = shift.len();
    let (mut s1, mut s2) = (vec![0f64; c], vec![0f64; c]);
    let (mut p1, mut p2) = (vec![0f32; c], vec![0f32; c]);
    for run in block.chunks(64 * c) {
        p1.fill(0.0);
        p2.fill(0.0);
        for pixel in run.chunks_exact(c) {
            for (((a1, a2), &x), &k) in p1.iter_mut().zip(&mut p2).zip(pixel).zip(shift) {
                let d = x - k;
                *a1 += d;
                *a2 += d * d;
            }
        }
        for (s, p) in s1.iter_mut().zip(&p1) {
            *s += f64::from(*p);
        }
        for (s, p) in s2.iter_mut().zip(&p2) {
            *s += f64::from(*p);
        }
    }
    (s1, s2)
}

/// `block[i] = (block[i] - mean) * scale + beta` per channel, then SiLU if asked.
fn apply(block: &mut [f32], affine: &Affine, silu: bool) {
    let c = affine.mean.len();
    for pixel in block.chunks_exact_mut(c) {
        for ((((x, &m), &lo), &s), &b) in pixel
            .iter_mut()
            .zip(&affine.mean)
            .zip(&affine.mean_lo)
            .zip(&affine.scale)
            .zip(&affine.beta)
        {
            *x = ((*x - m) - lo) * s + b;
        }
    }
    if silu {
        silu_in_place(block);
    }
}

/// `x * sigmoid(x)` = `x / (1 + exp(-x))` on every value.
pub(crate) fn silu_in_place(values: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: AVX2 and FMA were detected just above.
        #[allow(unsafe_code)]
        unsafe {
            simd::silu(values)
        };
        return;
    }
    for x in values {
        *x /= 1.0 + (-*x).exp();
    }
}

/// `row[i] = exp((row[i] - max) * scale)`; returns the sum of the new values.
fn exp_shifted(row: &mut [f32], max: f32, scale: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: AVX2 and FMA were detected just above.
        #[allow(unsafe_code)]
        return unsafe { simd::exp_shifted(row, max, scale) };
    }
    let mut sum = 0f32;
    for x in row {
        *x = ((*x - max) * scale).exp();
        sum += *x;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod simd {
    use std::arch::x86_64::*;

    /// `exp(x)` for 8 floats, Cephes' `expf` (range reduction by ln 2 in two parts, degree-5
    /// polynomial): within ~2 ulp of the exact value; inputs clamped to [-88.38, 88.38].
    #[target_feature(enable = "avx2,fma")]
    fn exp8(x: __m256) -> __m256 {
        let x = _mm256_min_ps(
            _mm256_max_ps(x, _mm256_set1_ps(-88.376_26)),
            _mm256_set1_ps(88.376_26),
        );
        let fx = _mm256_floor_ps(_mm256_fmadd_ps(
            x,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
            _mm256_set1_ps(0.5),
        ));
        let x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693_359_4), x);
        let x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.121_944_4e-4), x);
        let z = _mm256_mul_ps(x, x);
        let mut y = _mm256_set1_ps(1.987_569_1e-4);
        for p in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            5.0e-1,
        ] {
            y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(p));
        }
        let y = _mm256_add_ps(_mm256_fmadd_ps(y, z, x), _mm256_set1_ps(1.0));
        // 2^fx through the exponent bits (fx >= -127: the clamp keeps it there; -127 gives
        // 0, as exp(-88.38) is below the normal range anyway).
        let n = _mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127));
        let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(n));
        _mm256_mul_ps(y, pow2)
    }

    /// # Safety
    /// AVX2 and FMA must be available.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn silu(values: &mut [f32]) {
        let mut chunks = values.chunks_exact_mut(8);
        for chunk in &mut chunks {
            // SAFETY: the chunk holds exactly 8 floats.
            let x = unsafe { _mm256_loadu_ps(chunk.as_ptr()) };
            let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
            let y = _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), e));
            // SAFETY: as above.
            unsafe { _mm256_storeu_ps(chunk.as_mut_ptr(), y) };
        }
        for x in chunks.into_remainder() {
            *x /= 1.0 + (-*x).exp();
        }
    }

    /// # Safety
    /// AVX2 and FMA must be available.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_shifted(row: &mut [f32], max: f32, scale: f32) -> f32 {
        let (vmax, vscale) = (_mm256_set1_ps(max), _mm256_set1_ps(scale));
        let mut acc = _mm256_setzero_ps();
        let mut chunks = row.chunks_exact_mut(8);
        for chunk in &mut chunks {
            // SAFETY: the chunk holds exactly 8 floats.
            let x = unsafe { _mm256_loadu_ps(chunk.as_ptr()) };
            let e = exp8(_mm256_mul_ps(_mm256_sub_ps(x, vmax), vscale));
            acc = _mm256_add_ps(acc, e);
            // SAFETY: as above.
            unsafe { _mm256_storeu_ps(chunk.as_mut_ptr(), e) };
        }
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
        let mut sum: f32 = lanes.iter().sum();
        for x in chunks.into_remainder() {
            *x = ((*x - max) * scale).exp();
            sum += *x;
        }
        sum
    }
}

/// A row-major matrix view: element (r, c) at `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

/// The last index a `rows x cols` view with strides `rs`, `cs` touches, plus one.
fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

/// `dst[m x n] = (dst +) lhs[m x k] * rhs[k x n]` on the `gemm` crate; `dst` rows `dst_rs`
/// apart, columns adjacent. `parallel` spreads it over the rayon pool (not from inside a
/// rayon task that already splits the work).
#[allow(clippy::too_many_arguments)]
fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat<'_>,
    rhs: Mat<'_>,
    parallel: bool,
) {
    assert!(dst.len() >= extent(m, n, dst_rs, 1), "matmul dst size");
    assert!(
        lhs.data.len() >= extent(m, k, lhs.rs, lhs.cs),
        "matmul lhs size"
    );
    assert!(
        rhs.data.len() >= extent(k, n, rhs.rs, rhs.cs),
        "matmul rhs size"
    );
    if m == 0 || n == 0 {
        return;
    }
    let parallelism = if parallel {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the three views were checked above to lie inside their slices; `dst` is
    // borrowed mutably, so it does not alias `lhs` or `rhs`.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// A 1x1 convolution (or a linear layer over the channels of every pixel).
#[derive(Debug, Clone)]
pub(crate) struct Conv1x1 {
    cin: usize,
    cout: usize,
    /// PyTorch layout `(cout, cin)`.
    weight: Vec<f32>,
    /// Bias padded to the output's channel stride (zeros past `cout`).
    bias: Vec<f32>,
}

impl Conv1x1 {
    /// From weights `(cout, cin)` (or `(cout, cin, 1, 1)`, the same floats) and a bias.
    pub fn new(weight: &[f32], bias: &[f32], cout: usize, cin: usize) -> Self {
        assert_eq!(weight.len(), cout * cin, "1x1 conv weight size");
        assert_eq!(bias.len(), cout, "1x1 conv bias size");
        let mut bias_p = vec![0f32; padded(cout)];
        bias_p[..cout].copy_from_slice(bias);
        Self {
            cin,
            cout,
            weight: weight.to_vec(),
            bias: bias_p,
        }
    }

    /// Padded output channels.
    pub fn out_channels_padded(&self) -> usize {
        self.bias.len()
    }

    /// `out = x W^T + b` per pixel (`out` fully written, padded channels zero).
    pub fn forward(&self, x: &Act, out: &mut Act) {
        assert_eq!(x.c, padded(self.cin), "1x1 conv input channels");
        assert_eq!(
            (out.n, out.h, out.w, out.c),
            (x.n, x.h, x.w, self.bias.len())
        );
        let pixels = x.n * x.h * x.w;
        self.forward_rows(pixels, &x.data, x.c, &mut out.data, out.c, true);
    }

    /// `dst[r] = src[r] W^T + b` for `rows` rows of `src` (stride `src_rs`) into `dst`
    /// (stride `dst_rs`, columns past `cout` set to the padded bias, i.e. zero).
    fn forward_rows(
        &self,
        rows: usize,
        src: &[f32],
        src_rs: usize,
        dst: &mut [f32],
        dst_rs: usize,
        parallel: bool,
    ) {
        let width = self.bias.len().min(dst_rs);
        for row in dst.chunks_mut(dst_rs).take(rows) {
            row[..width].copy_from_slice(&self.bias[..width]);
        }
        let lhs = Mat {
            data: src,
            rs: src_rs,
            cs: 1,
        };
        // rhs[k][n] = W[n][k]
        let rhs = Mat {
            data: &self.weight,
            rs: 1,
            cs: self.cin,
        };
        matmul(
            (rows, self.cout, self.cin),
            dst,
            dst_rs,
            true,
            lhs,
            rhs,
            parallel,
        );
    }
}

/// The VAE mid block's attention: GroupNorm, one head over all channels, output projection,
/// residual.
#[derive(Debug, Clone)]
pub(crate) struct Attention {
    norm: GroupNorm,
    query: Conv1x1,
    key: Conv1x1,
    value: Conv1x1,
    proj: Conv1x1,
    channels: usize,
}

/// Score-matrix floats a block of query rows may take: 1M floats (4 MB) per thread.
const SCORE_BLOCK_FLOATS: usize = 1 << 20;

impl Attention {
    /// From the group norm and the four `(channels, channels)` linear layers.
    pub fn new(
        norm: GroupNorm,
        query: Conv1x1,
        key: Conv1x1,
        value: Conv1x1,
        proj: Conv1x1,
    ) -> Self {
        let channels = norm.channels;
        for layer in [&query, &key, &value, &proj] {
            assert_eq!((layer.cin, layer.cout), (channels, channels));
        }
        Self {
            norm,
            query,
            key,
            value,
            proj,
            channels,
        }
    }

    /// `x += proj(attention(norm(x)))`, image by image, with buffers from `pool`.
    pub fn forward(&self, x: &mut Act, pool: &mut Pool) {
        assert_eq!(x.c, padded(self.channels), "attention channels");
        let (tokens, c, cp) = (x.h * x.w, self.channels, x.c);
        let mut normed = Act::reuse(pool.take(x.data.len()), x.n, x.h, x.w, cp);
        self.norm.forward_into(x, &mut normed, false);
        let [mut q, mut k, mut v] = [(); 3].map(|_| {
            let mut buffer = pool.take(tokens * cp);
            buffer.resize(tokens * cp, 0.0);
            buffer
        });
        for b in 0..x.n {
            let image = &normed.data[b * tokens * cp..][..tokens * cp];
            self.query.forward_rows(tokens, image, cp, &mut q, cp, true);
            self.key.forward_rows(tokens, image, cp, &mut k, cp, true);
            self.value.forward_rows(tokens, image, cp, &mut v, cp, true);
            attend(&mut q, &k, &v, (tokens, c, cp), score_rows(tokens));
            // x += proj(out) + bias: the projection accumulates onto the residual.
            let residual = &mut x.data[b * tokens * cp..][..tokens * cp];
            for pixel in residual.chunks_mut(cp) {
                for (x, b) in pixel.iter_mut().zip(&self.proj.bias[..c]) {
                    *x += b;
                }
            }
            let lhs = Mat {
                data: &q,
                rs: cp,
                cs: 1,
            };
            let rhs = Mat {
                data: &self.proj.weight,
                rs: 1,
                cs: c,
            };
            matmul((tokens, c, c), residual, cp, true, lhs, rhs, true);
        }
        for buffer in [normed.into_buffer(), q, k, v] {
            pool.give(buffer);
        }
    }
}

/// Float buffers handed from layer to layer and kept between decodes: the large
/// activations (134 MB at 512x512 x 128 channels) would otherwise be page-faulted in anew
/// by every layer.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    free: Vec<Vec<f32>>,
}

impl Pool {
    /// A buffer for `len` floats (contents unspecified, length not set): the smallest free
    /// one that holds `len`, else the largest (the caller's resize grows it in place,
    /// so the total held stays near the peak need), else a new one.
    pub fn take(&mut self, len: usize) -> Vec<f32> {
        let fits = (0..self.free.len())
            .filter(|&i| self.free[i].capacity() >= len)
            .min_by_key(|&i| self.free[i].capacity());
        let largest = (0..self.free.len()).max_by_key(|&i| self.free[i].capacity());
        match fits.or(largest) {
            Some(i) => self.free.swap_remove(i),
            None => Vec::new(),
        }
    }

    /// Hands a buffer back.
    pub fn give(&mut self, buffer: Vec<f32>) {
        if buffer.capacity() > 0 {
            self.free.push(buffer);
        }
    }
}

/// Query rows per block so a block's scores fit [`SCORE_BLOCK_FLOATS`].
fn score_rows(tokens: usize) -> usize {
    (SCORE_BLOCK_FLOATS / tokens.max(1)).clamp(1, tokens.max(1))
}

/// `q = softmax(q k^T / sqrt(c)) v`, `block_rows` query rows at a time (blocks in parallel,
/// each thread with its own scores); the result overwrites the rows of `q` it came from.
/// `(tokens, c, stride)`: rows, channels used, row stride of `q`, `k`, `v`.
fn attend(
    q: &mut [f32],
    k: &[f32],
    v: &[f32],
    (tokens, c, stride): (usize, usize, usize),
    block_rows: usize,
) {
    let scale = 1.0 / (c as f32).sqrt();
    q[..tokens * stride]
        .par_chunks_mut(block_rows * stride)
        .for_each(|q_block| {
            let rows = q_block.len() / stride;
            let mut scores = vec![0f32; rows * tokens];
            let kt = Mat {
                data: k,
                rs: 1,
                cs: stride,
            };
            let lhs = Mat {
                data: q_block,
                rs: stride,
                cs: 1,
            };
            matmul(
                (rows, tokens, c),
                &mut scores,
                tokens,
                false,
                lhs,
                kt,
                false,
            );
            for row in scores.chunks_exact_mut(tokens) {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum = exp_shifted(row, max, scale);
                let inv = 1.0 / sum;
                row.iter_mut().for_each(|x| *x *= inv);
            }
            let p = Mat {
                data: &scores,
                rs: tokens,
                cs: 1,
            };
            let vm = Mat {
                data: v,
                rs: stride,
                cs: 1,
            };
            matmul((rows, c, tokens), q_block, stride, false, p, vm, false);
        });
}

fn values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

fn to_act(x: &Tensor) -> Result<Act> {
    let dims = x.dims4()?;
    Ok(Act::from_nchw(Vec::new(), &values(x)?, dims, |v| v))
}

fn from_act(act: &Act, channels: usize) -> Result<Tensor> {
    let pixels = act.h * act.w;
    let mut nchw = vec![0f32; act.n * channels * pixels];
    for (b, image) in nchw.chunks_mut(channels * pixels).enumerate() {
        for (ch, plane) in image.chunks_mut(pixels).enumerate() {
            for (i, value) in plane.iter_mut().enumerate() {
                *value = act.data[(b * pixels + i) * act.c + ch];
            }
        }
    }
    Ok(Tensor::from_vec(
        nchw,
        (act.n, channels, act.h, act.w),
        &Device::Cpu,
    )?)
}

fn invalid(message: String) -> ModelError {
    ModelError::Invalid(message)
}

/// The decoder's GroupNorm (then SiLU if `silu`) on an NCHW tensor `x` (N, C, H, W) with
/// `gamma`, `beta` of C values: the NHWC kernel the decoder runs, for tests.
pub fn group_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    let (_, c, _, _) = x.dims4()?;
    if groups == 0 || !c.is_multiple_of(groups) {
        return Err(invalid(format!(
            "group_norm: {groups} groups do not divide {c} channels"
        )));
    }
    let (gamma, beta) = (values(gamma)?, values(beta)?);
    if gamma.len() != c || beta.len() != c {
        return Err(invalid(format!(
            "group_norm: weight/bias have {}/{} values for {c} channels",
            gamma.len(),
            beta.len()
        )));
    }
    let norm = GroupNorm::new(&gamma, &beta, groups, eps);
    let mut act = to_act(x)?;
    norm.forward_in_place(&mut act, silu);
    from_act(&act, c)
}

/// The decoder's 3x3 convolution (padding 1, Winograd F(4x4, 3x3)) on `x` (N, Cin, H, W)
/// upsampled (nearest) by `upsample`, with `weight` (Cout, Cin, 3, 3), an optional bias, and
/// `residual` (N, Cout, H*up, W*up) added in place as the decoder's resnets do: the NHWC
/// kernel the decoder runs, for tests.
pub fn conv3x3(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    upsample: usize,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let (n, cin, h, w) = x.dims4()?;
    let (cout, wcin, kh, kw) = weight.dims4()?;
    if (wcin, kh, kw) != (cin, 3, 3) || upsample == 0 {
        return Err(invalid(format!(
            "conv3x3: weight {:?} for input {:?}, upsample {upsample}",
            weight.dims(),
            x.dims()
        )));
    }
    let bias = bias.map(values).transpose()?;
    if bias.as_ref().is_some_and(|b| b.len() != cout) {
        return Err(invalid("conv3x3: bias size".into()));
    }
    let conv = CompactConv3x3::new(&values(weight)?, bias.as_deref(), cout, cin);
    let input = to_act(x)?;
    let (oh, ow) = (h * upsample, w * upsample);
    let mut u = Vec::new();
    let mut out = match residual {
        Some(r) => {
            if r.dims4()? != (n, cout, oh, ow) {
                return Err(invalid(format!("conv3x3: residual {:?}", r.dims())));
            }
            to_act(r)?
        }
        None => Act::reuse(Vec::new(), n, oh, ow, padded(cout)),
    };
    let sink = match residual {
        Some(_) => Sink::AddTo { out: &mut out },
        None => Sink::Act {
            out: &mut out,
            skip: None,
            relu: false,
        },
    };
    conv.forward(&input, upsample, sink, &mut u);
    from_act(&out, cout)
}

/// The decoder's 1x1 convolution on `x` (N, Cin, H, W), `weight` (Cout, Cin, 1, 1) and
/// `bias` (Cout): the kernel the decoder runs, for tests.
pub fn conv1x1(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (n, cin, h, w) = x.dims4()?;
    let (cout, wcin, _, _) = weight.dims4()?;
    if wcin != cin || weight.elem_count() != cout * cin {
        return Err(invalid(format!("conv1x1: weight {:?}", weight.dims())));
    }
    let conv = Conv1x1::new(&values(weight)?, &values(bias)?, cout, cin);
    let input = to_act(x)?;
    let mut out = Act::reuse(Vec::new(), n, h, w, conv.out_channels_padded());
    conv.forward(&input, &mut out);
    from_act(&out, cout)
}

/// `softmax(q k^T / sqrt(C)) v` for `q`, `k`, `v` of shape (T, C), computed `block_rows`
/// query rows at a time as the decoder's attention does: for tests.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, block_rows: usize) -> Result<Tensor> {
    let (tokens, c) = q.dims2()?;
    if k.dims2()? != (tokens, c) || v.dims2()? != (tokens, c) || block_rows == 0 {
        return Err(invalid("attention: q, k, v must all be (T, C)".into()));
    }
    let mut qv = values(q)?;
    attend(
        &mut qv,
        &values(k)?,
        &values(v)?,
        (tokens, c, c),
        block_rows,
    );
    Ok(Tensor::from_vec(qv, (tokens, c), &Device::Cpu)?)
}
