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
/// layout, one column block of output channels per rayon task: each task reads a block's
/// 9 taps once per input channel and makes all 36 points from them (reading the weights
/// once per point instead was most of the cost: the transform is memory-bound).
pub(super) fn compact_to_winograd(compact: &[f32], channels: &Channels, u: &mut Vec<f32>) {
    let (cin_p, cout_p) = (channels.cin_p, channels.cout_p);
    u.clear();
    u.resize(POINTS * cin_p * cout_p, 0.0);
    let blocks: Vec<(usize, usize)> = column_blocks(cout_p).collect();
    // Each block's 36 slices, `u[p][n0 * cin_p..][..width * cin_p]`, cut out of `u`.
    let mut per_block: Vec<Vec<&mut [f32]>> =
        blocks.iter().map(|_| Vec::with_capacity(POINTS)).collect();
    for point in u.chunks_mut(cin_p * cout_p) {
        let mut rest = point;
        for (slices, &(_, width)) in per_block.iter_mut().zip(&blocks) {
            let (slice, tail) = std::mem::take(&mut rest).split_at_mut(width * cin_p);
            slices.push(slice);
            rest = tail;
        }
    }
    let isa = Isa::detect();
    per_block
        .into_par_iter()
        .zip(blocks)
        .for_each(|(mut slices, block)| match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Avx2Fma` is only chosen after runtime detection of AVX2/FMA.
            #[allow(unsafe_code)]
            Isa::Avx2Fma => unsafe { compact_block_avx2(compact, channels, block, &mut slices) },
            Isa::Generic => compact_block(compact, channels, block, &mut slices),
        });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn compact_block_avx2(
    compact: &[f32],
    channels: &Channels,
    block: (usize, usize),
    slices: &mut [&mut [f32]],
) {
    compact_block(compact, channels, block, slices)
}

/// The 36 points of output channels `n0..n0 + width` for every input channel:
/// `u = sum G[i][ky] G[j][kx] g[ky][kx]` over the non-zero coefficients of point `6i + j`.
#[inline(always)]
fn compact_block(
    compact: &[f32],
    channels: &Channels,
    (n0, width): (usize, usize),
    slices: &mut [&mut [f32]],
) {
    let terms: [([(usize, f32); 9], usize); POINTS] = std::array::from_fn(point_terms);
    let cout_p = channels.cout_p;
    for ci in 0..channels.cin_p {
        let mut taps = [[0f32; 2 * LANES]; 9];
        for (k, tap) in taps.iter_mut().enumerate() {
            tap[..width].copy_from_slice(&compact[(ci * 9 + k) * cout_p + n0..][..width]);
        }
        for (slice, (terms, count)) in slices.iter_mut().zip(&terms) {
            let mut acc = [0f32; 2 * LANES];
            for &(k, coef) in &terms[..*count] {
                for (a, &x) in acc.iter_mut().zip(&taps[k]) {
                    *a += coef * x;
                }
            }
            slice[ci * width..][..width].copy_from_slice(&acc[..width]);
        }
    }
}
