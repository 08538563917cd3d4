//! The AVX2/FMA micro-kernel of the Winograd GEMMs (x86_64 only; the caller checks the CPU).

use std::arch::x86_64::*;

use super::plan::MR;
use crate::model::kernels::layout::LANES;

/// The AVX2/FMA micro-kernel: MR x (NV*8) accumulators in registers (12 for NV = 2),
/// one broadcast of `a` and NV loads of `b` per MR*NV FMAs; with `ACC` the
/// accumulators start from `c`.
///
/// # Safety
/// AVX2 and FMA must be available; `a` must hold `(MR-1)*lda + k` floats, `b` `k*NV*8`,
/// `c` `(MR-1)*ldc + NV*8`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn kernel<const NV: usize, const ACC: bool>(
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
) {
    let mut acc = [[_mm256_setzero_ps(); NV]; MR];
    if ACC {
        for (r, acc) in acc.iter_mut().enumerate() {
            for (j, acc) in acc.iter_mut().enumerate() {
                // SAFETY: r < MR and j < NV, inside the `(MR-1)*ldc + NV*8` floats of `c`.
                *acc = unsafe { _mm256_loadu_ps(c.add(r * ldc + j * LANES)) };
            }
        }
    }
    for kk in 0..k {
        let mut bv = [_mm256_setzero_ps(); NV];
        for (j, bv) in bv.iter_mut().enumerate() {
            // SAFETY: kk < k and j < NV, inside the `k*NV*8` floats of `b`.
            *bv = unsafe { _mm256_loadu_ps(b.add((kk * NV + j) * LANES)) };
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: r < MR and kk < k, inside the `(MR-1)*lda + k` floats of `a`.
            let av = unsafe { _mm256_broadcast_ss(&*a.add(r * lda + kk)) };
            for (acc, bv) in acc.iter_mut().zip(&bv) {
                *acc = _mm256_fmadd_ps(av, *bv, *acc);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (j, acc) in acc.iter().enumerate() {
            // SAFETY: r < MR and j < NV, inside the `(MR-1)*ldc + NV*8` floats of `c`.
            unsafe { _mm256_storeu_ps(c.add(r * ldc + j * LANES), *acc) };
        }
    }
}
