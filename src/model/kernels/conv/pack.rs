//! The weights of a 3x3 convolution as the kernels read them: Winograd-transformed and
//! packed in column blocks for the micro-kernel, either once at load time or per call from
//! the compact form.

use rayon::prelude::*;

use super::isa::Isa;
use super::winograd::{point_terms, transform_kernel, POINTS};
use crate::model::kernels::layout::{padded, LANES};

/// The channel counts and bias of a 3x3 convolution, whatever the layout of its weights.
#[derive(Debug, Clone)]
pub(crate) struct Channels {
    pub(super) cin: usize,
    pub(super) cout: usize,
    pub(super) cin_p: usize,
    pub(super) cout_p: usize,
    /// Bias padded to `cout_p` (zeros without bias).
    pub(super) bias: Vec<f32>,
}

impl Channels {
    pub(super) fn new(cin: usize, cout: usize, bias: Option<&[f32]>) -> Self {
        let cout_p = padded(cout);
        let mut padded_bias = vec![0f32; cout_p];
        if let Some(bias) = bias {
            padded_bias[..cout].copy_from_slice(&bias[..cout]);
        }
        Self {
            cin,
            cout,
            cin_p: padded(cin),
            cout_p,
            bias: padded_bias,
        }
    }

    /// The kernels' view of these channels with Winograd weights `u`.
    pub(super) fn packed<'a>(&'a self, u: &'a [f32]) -> Packed<'a> {
        Packed {
            u,
            bias: &self.bias,
            cout: self.cout,
            cin_p: self.cin_p,
            cout_p: self.cout_p,
        }
    }
}

/// The output-channel blocks of the packed weights: (first channel, width).
pub(super) fn column_blocks(cout_p: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..cout_p)
        .step_by(2 * LANES)
        .map(move |n0| (n0, (cout_p - n0).min(2 * LANES)))
}

/// Transformed weights as the kernels read them, whoever owns them.
pub(super) struct Packed<'a> {
    /// `G g G^T`, laid out as [`winograd_weights`] makes it.
    pub(super) u: &'a [f32],
    /// Bias padded to `cout_p`.
    pub(super) bias: &'a [f32],
    pub(super) cout: usize,
    pub(super) cin_p: usize,
    pub(super) cout_p: usize,
}

/// `G g G^T` of PyTorch-layout weights `(cout, cin, 3, 3)`, packed for the micro-kernel:
/// `[point][column block][cin_p][width]` where the column blocks are 16 output channels
/// wide (the last one 8 when `cout_p` is an odd multiple of 8).
pub(super) fn winograd_weights(weight: &[f32], channels: &Channels) -> Vec<f32> {
    let (cin, cout) = (channels.cin, channels.cout);
    let (cin_p, cout_p) = (channels.cin_p, channels.cout_p);
    let mut u = vec![0f32; POINTS * cin_p * cout_p];
    for co in 0..cout {
        let (n0, width) = column_blocks(cout_p)
            .find(|&(n0, width)| co < n0 + width)
            .unwrap_or((0, 0));
        for ci in 0..cin {
            let g = &weight[(co * cin + ci) * 9..][..9];
            for (p, value) in transform_kernel(g).into_iter().enumerate() {
                u[p * cin_p * cout_p + n0 * cin_p + ci * width + (co - n0)] = value;
            }
        }
    }
    u
}

/// PyTorch-layout weights `(cout, cin, 3, 3)` as `[cin_p][ky * 3 + kx][cout_p]`,
/// zero-padded, so the per-call transform runs over consecutive output channels.
pub(super) fn compact_weights(weight: &[f32], channels: &Channels) -> Vec<f32> {
    let (cin, cout) = (channels.cin, channels.cout);
    let (cin_p, cout_p) = (channels.cin_p, channels.cout_p);
    let mut packed = vec![0f32; cin_p * 9 * cout_p];
    for co in 0..cout {
        for ci in 0..cin {
            for k in 0..9 {
                packed[(ci * 9 + k) * cout_p + co] = weight[(co * cin + ci) * 9 + k];
            }
        }
    }
    packed
}

/// Writes the Winograd weights of [`compact_weights`] into `u`, in [`winograd_weights`]'
/// layout, one point per rayon task.
pub(super) fn compact_to_winograd(compact: &[f32], channels: &Channels, u: &mut Vec<f32>) {
    let point_len = channels.cin_p * channels.cout_p;
    u.clear();
    u.resize(POINTS * point_len, 0.0);
    let isa = Isa::detect();
    u.par_chunks_mut(point_len)
        .enumerate()
        .for_each(|(p, u_p)| match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Avx2Fma` is only chosen after runtime detection of AVX2/FMA.
            #[allow(unsafe_code)]
            Isa::Avx2Fma => unsafe { compact_point_avx2(compact, channels, p, u_p) },
            Isa::Generic => compact_point(compact, channels, p, u_p),
        });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn compact_point_avx2(compact: &[f32], channels: &Channels, p: usize, u_p: &mut [f32]) {
    compact_point(compact, channels, p, u_p)
}

/// Point `p = 6i + j` of the transform: `u = sum G[i][ky] G[j][kx] g[ky][kx]` over the
/// non-zero coefficients.
#[inline(always)]
fn compact_point(compact: &[f32], channels: &Channels, p: usize, u_p: &mut [f32]) {
    let (terms, count) = point_terms(p);
    let terms = &terms[..count];
    let (cin_p, cout_p) = (channels.cin_p, channels.cout_p);
    for (n0, width) in column_blocks(cout_p) {
        let block = &mut u_p[n0 * cin_p..][..width * cin_p];
        for (ci, row) in block.chunks_exact_mut(width).enumerate() {
            let w = &compact[ci * 9 * cout_p..][..9 * cout_p];
            let mut acc = [0f32; 2 * LANES];
            for &(k, coef) in terms {
                for (a, &x) in acc.iter_mut().zip(&w[k * cout_p + n0..][..width]) {
                    *a += coef * x;
                }
            }
            row.copy_from_slice(&acc[..width]);
        }
    }
}
