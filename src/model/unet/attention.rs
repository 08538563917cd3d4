//! diffusers' `Attention` as the UNet's transformers use it, computed in slices so the
//! score matrix stays bounded, with an in-place softmax that vectorises.

use candle_core::{CpuStorage, DType, Layout, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use rayon::prelude::*;

/// Most attention scores computed at once, in f32 elements (1 << 21 = 8 MiB; the softmax
/// works in place on them). SD 1.5 at 64x64 latents has 4096 tokens:
/// unsliced, a batch of 2 with 8 heads would need 1 GiB of scores. Blocks this small also
/// stay in cache between the q k^T product, the softmax and the product with v, which
/// measured twice as fast as one 64 MiB head at a time.
const ATTENTION_SLICE_ELEMENTS: usize = 1 << 21;

/// diffusers `Attention` (q/k/v without bias, `to_out.0` with bias), scaled dot product,
/// computed in slices so the score matrix stays bounded.
#[derive(Debug, Clone)]
pub(super) struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    pub(super) fn new(
        vb: VarBuilder,
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<Self> {
        let inner = heads * head_dim;
        Ok(Self {
            to_q: candle_nn::linear_no_bias(query_dim, inner, vb.pp("to_q"))?,
            to_k: candle_nn::linear_no_bias(context_dim, inner, vb.pp("to_k"))?,
            to_v: candle_nn::linear_no_bias(context_dim, inner, vb.pp("to_v"))?,
            to_out: candle_nn::linear(inner, query_dim, vb.pp("to_out").pp("0"))?,
            heads,
            head_dim,
        })
    }

    /// (batch, tokens, channels) -> (batch * heads, tokens, head_dim), contiguous.
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (batch, tokens, _) = x.dims3()?;
        x.reshape((batch, tokens, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((batch * self.heads, tokens, self.head_dim))
    }

    /// `context` None: self-attention.
    pub(super) fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let (batch, tokens, _) = x.dims3()?;
        let context = context.unwrap_or(x);
        // Scaling q (tokens x head_dim) is cheaper than scaling the scores (tokens^2).
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let q = self.split_heads(&(self.to_q.forward(x)? * scale)?)?;
        let k = self.split_heads(&self.to_k.forward(context)?)?;
        let v = self.split_heads(&self.to_v.forward(context)?)?;
        let out = sliced_attention(&q, &k, &v)?;
        let out = out
            .reshape((batch, self.heads, tokens, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((batch, tokens, self.heads * self.head_dim))?;
        self.to_out.forward(&out)
    }
}

/// softmax(q k^T) v over (batch*heads, tokens, head_dim) tensors, `q` already scaled.
///
/// Works on as many (batch*head) rows at once as fit in [`ATTENTION_SLICE_ELEMENTS`]
/// scores; when one head alone is larger, on slices of its queries.
fn sliced_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (rows, q_tokens, _) = q.dims3()?;
    let k_tokens = k.dim(1)?;
    let per_row = q_tokens * k_tokens;
    let attend = |q: &Tensor, k: &Tensor, v: &Tensor| -> Result<Tensor> {
        softmax_last_dim(q.matmul(&k.t()?)?)?.matmul(v)
    };
    if rows * per_row <= ATTENTION_SLICE_ELEMENTS {
        return attend(q, k, v);
    }
    if per_row <= ATTENTION_SLICE_ELEMENTS {
        let rows_per_slice = ATTENTION_SLICE_ELEMENTS / per_row;
        let mut outs = Vec::with_capacity(rows.div_ceil(rows_per_slice));
        for start in (0..rows).step_by(rows_per_slice) {
            let n = rows_per_slice.min(rows - start);
            outs.push(attend(
                &q.narrow(0, start, n)?,
                &k.narrow(0, start, n)?,
                &v.narrow(0, start, n)?,
            )?);
        }
        return Tensor::cat(&outs, 0);
    }
    // One head at a time, its queries in slices.
    let queries_per_slice = (ATTENTION_SLICE_ELEMENTS / k_tokens).max(1);
    let mut outs = Vec::with_capacity(rows);
    for row in 0..rows {
        let (k, v) = (k.narrow(0, row, 1)?, v.narrow(0, row, 1)?);
        let q = q.narrow(0, row, 1)?;
        let mut parts = Vec::with_capacity(q_tokens.div_ceil(queries_per_slice));
        for start in (0..q_tokens).step_by(queries_per_slice) {
            let n = queries_per_slice.min(q_tokens - start);
            parts.push(attend(&q.narrow(1, start, n)?, &k, &v)?);
        }
        outs.push(Tensor::cat(&parts, 1)?);
    }
    Tensor::cat(&outs, 0)
}

/// Softmax over the last dimension. On the CPU, in place with a vectorisable exp: candle's
/// `softmax_last_dim` calls the scalar libm `expf` per score, which was half the attention
/// time at SD sizes (the scores are all that is big there).
fn softmax_last_dim(scores: Tensor) -> Result<Tensor> {
    if scores.device().is_cpu() && scores.dtype() == DType::F32 && scores.is_contiguous() {
        scores.inplace_op1(&SoftmaxInPlace)?;
        Ok(scores)
    } else {
        candle_nn::ops::softmax_last_dim(&scores)
    }
}

/// Row-wise softmax of contiguous f32 CPU data, in place.
struct SoftmaxInPlace;

impl candle_core::InplaceOp1 for SoftmaxInPlace {
    fn name(&self) -> &'static str {
        "dreamwalk-softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("{}: f32 only", self.name());
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("{}: contiguous input only", self.name());
        };
        let row_len = layout.dims().last().copied().unwrap_or(1).max(1);
        data[start..end]
            .par_chunks_mut(row_len)
            .for_each(softmax_row);
        Ok(())
    }
}

/// Lanes of the manual reductions: independent accumulators let the compiler use SIMD
/// (a single float accumulator must be summed in order).
const LANES: usize = 8;

fn softmax_row(row: &mut [f32]) {
    let mut max_lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (m, &x) in max_lanes.iter_mut().zip(chunk) {
            *m = if x > *m { x } else { *m };
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(max_lanes.iter())
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    for x in row.iter_mut() {
        *x = exp_non_positive(*x - max);
    }
    let mut sum_lanes = [0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (s, &x) in sum_lanes.iter_mut().zip(chunk) {
            *s += x;
        }
    }
    let sum: f32 = chunks.remainder().iter().sum::<f32>() + sum_lanes.iter().sum::<f32>();
    let inv_sum = 1.0 / sum;
    for x in row.iter_mut() {
        *x *= inv_sum;
    }
}

/// exp(x) for x <= 0 to about 1 ulp (Cephes' `expf`: x = n ln2 + r, a degree-7 polynomial
/// for exp(r), times 2^n), written without branches or calls so it vectorises. Inputs
/// below -87 give exp(-87) ~ 1.6e-38 instead of a smaller number: nothing next to the
/// row maximum's exp(0) = 1.
#[inline(always)]
fn exp_non_positive(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to an integer, which then sits in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = if x < -87.0 { -87.0 } else { x };
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_2e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let exp_r = p * r * r + r + 1.0;
    // n is in -126..=0 here, so 2^n is a normal float.
    let n_int = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    exp_r * f32::from_bits(((n_int + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_is_within_two_ulp() {
        let mut worst = 0f64;
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let exact = (x as f64).exp();
            let rel = ((exp_non_positive(x) as f64 - exact) / exact).abs();
            worst = worst.max(rel);
        }
        // f32 has a relative spacing of 2^-23 = 1.19e-7.
        assert!(worst < 2.5e-7, "worst relative error {worst:e}");
    }

    #[test]
    fn softmax_matches_candle() {
        let dev = candle_core::Device::Cpu;
        // Rows of odd length (remainders) and a wide range of scores.
        let scores = (Tensor::randn(0f32, 1.0, (3, 5, 1037), &dev).unwrap() * 20.0).unwrap();
        let expected = candle_nn::ops::softmax_last_dim(&scores).unwrap();
        let got = softmax_last_dim(scores.copy().unwrap()).unwrap();
        let diff = (got - expected)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-6, "max |diff| {diff:e}");
    }
}
