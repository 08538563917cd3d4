//! The GEMM step of the Winograd convolution: the MR x (NV*8) micro-kernel, in portable
//! Rust or on AVX2/FMA.

use super::plan::MR;
use crate::model::kernels::layout::LANES;

/// `c[r][..NV*8] (+)= sum_k a[r][k] * b[k][..NV*8]` for the MR rows r (row strides `lda`,
/// `ldc`; `b` packed `k x NV*8`); with `ACC` the sums start from `c` (a later block of
/// input channels), otherwise from zero.
#[inline(always)]
pub(super) fn micro_kernel<const AVX: bool, const NV: usize, const ACC: bool>(
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    c: &mut [f32],
    ldc: usize,
) {
    let width = NV * LANES;
    assert!(a.len() >= (MR - 1) * lda + k && b.len() >= k * width);
    assert!(c.len() >= (MR - 1) * ldc + width);
    #[cfg(target_arch = "x86_64")]
    if AVX {
        // SAFETY: the bounds were checked above; `AVX` is only true inside `band_avx2`,
        // which runs after runtime detection of AVX2 and FMA.
        #[allow(unsafe_code)]
        unsafe {
            super::avx2::kernel::<NV, ACC>(k, a.as_ptr(), lda, b.as_ptr(), c.as_mut_ptr(), ldc)
        };
        return;
    }
    let mut acc = [[0f32; 2 * LANES]; MR];
    if ACC {
        for (r, acc) in acc.iter_mut().enumerate() {
            acc[..width].copy_from_slice(&c[r * ldc..][..width]);
        }
    }
    for kk in 0..k {
        let brow = &b[kk * width..][..width];
        for (r, acc) in acc.iter_mut().enumerate() {
            let av = a[r * lda + kk];
            for (x, bv) in acc.iter_mut().zip(brow) {
                *x += av * bv;
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        c[r * ldc..][..width].copy_from_slice(&acc[..width]);
    }
}
