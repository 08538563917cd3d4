//! The VAE mid block's self-attention, its scores made a block of query rows at a time (the
//! full 4096 x 4096 score matrix of a 64x64 latent would be 64 MB).
//!
//! Two forms of the same sums. [`Attention::forward`] holds the normalised input, q, k and v
//! of the whole image and takes each block of query rows against all keys at once: the
//! fastest at the usual sizes. [`Attention::forward_chunked`] is for large images (a 4K
//! image's 270x480 latent has 129,600 tokens, whose full-width score rows would leave a
//! block of 8 query rows streaming all 265 MB of keys): only k and v are kept for the whole
//! image, the queries are made a chunk of tokens at a time from the residual stream, and
//! each block of query rows walks the keys a block at a time with an online softmax (the
//! running maximum, sum and output rescaled when the maximum grows, as in `flash`). Memory:
//! the stream, k and v (three maps) plus one chunk; exact up to float rounding.

use rayon::prelude::*;

use super::exp::{exp_shifted, online_softmax_block};
use super::layout::{padded, Act, Pool};
use super::linear::{matmul, Conv1x1, Mat};
use super::norm::GroupNorm;

/// Tokens per chunk of [`Attention::forward_chunked`]: queries, their normalised input and
/// output for 4096 tokens of 512 channels are 8 MB each.
const CHUNK_TOKENS: usize = 4096;
/// Query rows per task of the online softmax: keys and values are streamed from memory once
/// per block, so blocks are tall; 128 rows x 512 channels of output and queries stay in L2.
const QUERY_BLOCK: usize = 128;
/// Keys per step of the online softmax: a 128 x 512 score block is 256 KiB.
const KEY_BLOCK: usize = 512;

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

impl Attention {
    /// The same as [`Self::forward`], with only the stream, k and v held for the whole
    /// image (see the module docs): for images with many tokens.
    pub fn forward_chunked(&self, x: &mut Act, pool: &mut Pool) {
        assert_eq!(x.c, padded(self.channels), "attention channels");
        let (tokens, c, cp) = (x.h * x.w, self.channels, x.c);
        let chunk = CHUNK_TOKENS.min(tokens);
        let [mut k, mut v] = [(); 2].map(|_| {
            let mut buffer = pool.take(tokens * cp);
            buffer.resize(tokens * cp, 0.0);
            buffer
        });
        let [mut normed, mut q] = [(); 2].map(|_| {
            let mut buffer = pool.take(chunk * cp);
            buffer.resize(chunk * cp, 0.0);
            buffer
        });
        for b in 0..x.n {
            let image = &mut x.data[b * tokens * cp..][..tokens * cp];
            let stats = self.norm.image_stats(image, cp);
            for (i, rows) in image.chunks(chunk * cp).enumerate() {
                let n = rows.len() / cp;
                let normed = &mut normed[..rows.len()];
                self.norm.normalise_rows(rows, normed, cp, &stats);
                let at = i * chunk * cp;
                self.key
                    .forward_rows(n, normed, cp, &mut k[at..][..rows.len()], cp, true);
                self.value
                    .forward_rows(n, normed, cp, &mut v[at..][..rows.len()], cp, true);
            }
            for rows in image.chunks_mut(chunk * cp) {
                let n = rows.len() / cp;
                let normed = &mut normed[..rows.len()];
                self.norm.normalise_rows(rows, normed, cp, &stats);
                let q = &mut q[..rows.len()];
                self.query.forward_rows(n, normed, cp, q, cp, true);
                attend_online(q, &k, &v, (tokens, c, cp), (QUERY_BLOCK, KEY_BLOCK));
                self.project_onto(q, rows, n);
            }
        }
        for buffer in [k, v, normed, q] {
            pool.give(buffer);
        }
    }

    /// `residual += proj(out) + bias` over `rows` tokens (row stride = the padded channels).
    fn project_onto(&self, out: &[f32], residual: &mut [f32], rows: usize) {
        let c = self.channels;
        let cp = padded(c);
        for pixel in residual.chunks_mut(cp) {
            for (x, b) in pixel.iter_mut().zip(&self.proj.bias[..c]) {
                *x += b;
            }
        }
        let lhs = Mat {
            data: out,
            rs: cp,
            cs: 1,
        };
        let rhs = Mat {
            data: &self.proj.weight,
            rs: 1,
            cs: c,
        };
        matmul((rows, c, c), residual, cp, true, lhs, rhs, true);
    }
}

/// `q = softmax(q k^T / sqrt(c)) v` with an online softmax: blocks of `query_block` rows
/// of `q` in parallel, each walking the keys `key_block` at a time (the running maximum
/// `m`, sum `l` and output `o` rescaled by `exp(m_old - m_new)` when a block raises the
/// maximum). `q` holds any number of query rows; `k`, `v` hold `tokens` rows.
/// `(tokens, c, stride)`: key rows, channels used, row stride of `q`, `k`, `v`.
pub(super) fn attend_online(
    q: &mut [f32],
    k: &[f32],
    v: &[f32],
    (tokens, c, stride): (usize, usize, usize),
    (query_block, key_block): (usize, usize),
) {
    let scale = 1.0 / (c as f32).sqrt();
    let key_block = key_block.clamp(1, tokens.max(1));
    q.par_chunks_mut(query_block.max(1) * stride)
        .for_each(|q_block| {
            let rows = q_block.len() / stride;
            let mut scores = vec![0f32; rows * key_block];
            let mut out = vec![0f32; rows * c];
            let mut max = vec![f32::NEG_INFINITY; rows];
            let mut sum = vec![0f32; rows];
            let queries = Mat {
                data: q_block,
                rs: stride,
                cs: 1,
            };
            for j0 in (0..tokens).step_by(key_block) {
                let keys = (tokens - j0).min(key_block);
                let kt = Mat {
                    data: &k[j0 * stride..],
                    rs: 1,
                    cs: stride,
                };
                let block = &mut scores[..rows * keys];
                matmul((rows, keys, c), block, keys, false, queries, kt, false);
                online_softmax_block(block, keys, scale, (&mut max, &mut sum), &mut out, c);
                let p = Mat {
                    data: block,
                    rs: keys,
                    cs: 1,
                };
                let values = Mat {
                    data: &v[j0 * stride..],
                    rs: stride,
                    cs: 1,
                };
                matmul((rows, c, keys), &mut out, c, true, p, values, false);
            }
            for ((row, o), &l) in q_block
                .chunks_exact_mut(stride)
                .zip(out.chunks_exact(c))
                .zip(&sum)
            {
                let inv = 1.0 / l;
                for (x, &o) in row[..c].iter_mut().zip(o) {
                    *x = o * inv;
                }
            }
        });
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
