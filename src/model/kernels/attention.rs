//! The VAE mid block's self-attention, its scores made a block of query rows at a time (the
//! full 4096 x 4096 score matrix of a 64x64 latent would be 64 MB).

use rayon::prelude::*;

use super::exp::exp_shifted;
use super::layout::{padded, Act, Pool};
use super::linear::{matmul, Conv1x1, Mat};
use super::norm::GroupNorm;

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

/// Query rows per block so a block's scores fit [`SCORE_BLOCK_FLOATS`].
fn score_rows(tokens: usize) -> usize {
    (SCORE_BLOCK_FLOATS / tokens.max(1)).clamp(1, tokens.max(1))
}

/// `q = softmax(q k^T / sqrt(c)) v`, `block_rows` query rows at a time (blocks in parallel,
/// each thread with its own scores); the result overwrites the rows of `q` it came from.
/// `(tokens, c, stride)`: rows, channels used, row stride of `q`, `k`, `v`.
pub(super) fn attend(
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
