//! Multi-head attention with an online softmax (flash attention's recurrence): each task
//! takes a block of query rows of one head and walks the keys a block at a time, keeping
//! per row the running maximum `m`, the running sum `l` of `exp(s - m)` and the running
//! output `o`; when a block raises the maximum, `l` and `o` are rescaled by
//! `exp(m_old - m_new)`. Memory per task is one block of scores (`QUERY_ROWS x KEY_ROWS`),
//! never the `tokens x tokens` matrix (SD 1.5 at 576x1024 has 9216 tokens: 340 MB of
//! scores per head). Exact up to float rounding: the same sums, grouped differently.
//!
//! Heads are read in place from the projections' `(batch, tokens, heads * head_dim)` rows
//! (no split-heads copy); each task writes its rows of one head into a `(batch, heads,
//! tokens, head_dim)` buffer, which is then interleaved back into rows.

use rayon::prelude::*;

use super::exp::online_softmax_block;
use super::linear::{matmul, Mat};

/// Query rows per task: 64 rows x 64 channels of output stay in L1/L2 with the scores.
const QUERY_ROWS: usize = 64;
/// Keys per block: a 64 x 256 score block is 64 KiB.
const KEY_ROWS: usize = 256;

/// The shape of one attention call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AttentionShape {
    pub batch: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub q_tokens: usize,
    pub k_tokens: usize,
}

impl AttentionShape {
    fn inner(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// `out[b, i, h] = softmax(scale * q[b, i, h] . k[b, :, h]) v[b, :, h]` for every batch row
/// `b`, query `i` and head `h`, where `q` is `(batch, q_tokens, heads * head_dim)` and `k`,
/// `v` are `(batch, k_tokens, heads * head_dim)`, row-major. Returns `out` in `q`'s shape.
pub(crate) fn multi_head_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: AttentionShape,
    scale: f32,
) -> Vec<f32> {
    let (inner, d) = (s.inner(), s.head_dim);
    assert_eq!(q.len(), s.batch * s.q_tokens * inner, "attention q size");
    assert_eq!(k.len(), s.batch * s.k_tokens * inner, "attention k size");
    assert_eq!(v.len(), s.batch * s.k_tokens * inner, "attention v size");
    let mut per_head = vec![0f32; s.batch * s.heads * s.q_tokens * d];
    if per_head.is_empty() {
        return per_head;
    }
    if s.k_tokens == 0 {
        // No keys: an empty softmax; PyTorch gives NaN, we give zeros rather than garbage.
        return vec![0f32; s.batch * s.q_tokens * inner];
    }
    per_head
        .par_chunks_mut(s.q_tokens * d)
        .enumerate()
        .flat_map_iter(|(bh, head)| {
            head.chunks_mut(QUERY_ROWS * d)
                .enumerate()
                .map(move |(block, out)| (bh, block * QUERY_ROWS, out))
        })
        .for_each(|(bh, i0, out)| {
            let (b, h) = (bh / s.heads, bh % s.heads);
            attend_block(q, k, v, s, scale, (b, h, i0), out);
        });
    // (batch, heads, tokens, d) -> (batch, tokens, heads * d)
    let mut rows = vec![0f32; s.batch * s.q_tokens * inner];
    rows.par_chunks_mut(s.q_tokens * inner)
        .enumerate()
        .for_each(|(b, image)| {
            for (i, row) in image.chunks_exact_mut(inner).enumerate() {
                for (h, part) in row.chunks_exact_mut(d).enumerate() {
                    let from = ((b * s.heads + h) * s.q_tokens + i) * d;
                    part.copy_from_slice(&per_head[from..from + d]);
                }
            }
        });
    rows
}

/// Query rows `i0..` (as many as `out` holds) of head `h` of batch row `b`, into `out`
/// (`rows x head_dim`).
fn attend_block(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: AttentionShape,
    scale: f32,
    (b, h, i0): (usize, usize, usize),
    out: &mut [f32],
) {
    let (inner, d) = (s.inner(), s.head_dim);
    let rows = out.len() / d;
    let queries = Mat {
        data: &q[(b * s.q_tokens + i0) * inner + h * d..],
        rs: inner,
        cs: 1,
    };
    let mut scores = vec![0f32; rows * KEY_ROWS.min(s.k_tokens)];
    let mut max = vec![f32::NEG_INFINITY; rows];
    let mut sum = vec![0f32; rows];
    out.fill(0.0);
    for j0 in (0..s.k_tokens).step_by(KEY_ROWS) {
        let keys = (s.k_tokens - j0).min(KEY_ROWS);
        let first = (b * s.k_tokens + j0) * inner + h * d;
        // scores = q_block k_block^T: element (key j, channel c) of k^T at j * inner + c.
        let kt = Mat {
            data: &k[first..],
            rs: 1,
            cs: inner,
        };
        let block = &mut scores[..rows * keys];
        matmul((rows, keys, d), block, keys, false, queries, kt, false);
        online_softmax_block(block, keys, scale, (&mut max, &mut sum), out, d);
        let p = Mat {
            data: block,
            rs: keys,
            cs: 1,
        };
        let values = Mat {
            data: &v[first..],
            rs: inner,
            cs: 1,
        };
        matmul((rows, d, keys), out, d, true, p, values, false);
    }
    for (row, &l) in out.chunks_exact_mut(d).zip(&sum) {
        let inv = 1.0 / l;
        row.iter_mut().for_each(|o| *o *= inv);
    }
}
