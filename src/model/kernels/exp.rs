//! A vectorised `exp` (AVX2/FMA where the CPU has it) and the two passes built on it: SiLU
//! and the exponentials of a softmax row. libm's scalar `expf` was most of the time of both.

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
pub(super) fn exp_shifted(row: &mut [f32], max: f32, scale: f32) -> f32 {
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

/// One block of keys in an online softmax: each row of `block` (the scores of `keys` keys,
/// row after row) becomes `exp(scale (s - m))` for the row's new running maximum `m`, and
/// the row's running maximum and sum (`running`) and its output so far (`out`, `width`
/// values a row) are rescaled to that maximum. The caller then adds `block · V` to `out`.
pub(crate) fn online_softmax_block(
    block: &mut [f32],
    keys: usize,
    scale: f32,
    running: (&mut [f32], &mut [f32]),
    out: &mut [f32],
    width: usize,
) {
    let (max, sum) = running;
    for (r, row) in block.chunks_exact_mut(keys).enumerate() {
        let block_max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let new_max = max[r].max(block_max);
        let block_sum = exp_shifted(row, new_max, scale);
        if max[r] != f32::NEG_INFINITY && max[r] != new_max {
            let correction = ((max[r] - new_max) * scale).exp();
            sum[r] *= correction;
            out[r * width..][..width]
                .iter_mut()
                .for_each(|o| *o *= correction);
        }
        sum[r] += block_sum;
        max[r] = new_max;
    }
}
