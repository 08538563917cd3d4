//! diffusers' `Attention` as the UNet's transformers use it: the projections on
//! `kernels::Dense` (`gemm`), the attention itself on `kernels::multi_head_attention` (an online softmax over
//! blocks of keys: memory O(tokens x head_dim) per task, never the score matrix).

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

use crate::model::kernels::{multi_head_attention, AttentionShape, Dense};

/// diffusers `Attention` (q/k/v without bias, `to_out.0` with bias), scaled dot product.
#[derive(Debug, Clone)]
pub(super) struct Attention {
    to_q: Dense,
    to_k: Dense,
    to_v: Dense,
    to_out: Dense,
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
            to_q: Dense::load(&vb.pp("to_q"), query_dim, inner, false)?,
            to_k: Dense::load(&vb.pp("to_k"), context_dim, inner, false)?,
            to_v: Dense::load(&vb.pp("to_v"), context_dim, inner, false)?,
            to_out: Dense::load(&vb.pp("to_out").pp("0"), inner, query_dim, true)?,
            heads,
            head_dim,
        })
    }

    /// `context` None: self-attention.
    pub(super) fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let (batch, q_tokens, _) = x.dims3()?;
        let context = context.unwrap_or(x);
        let k_tokens = context.dim(1)?;
        let values = |t: Tensor| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>();
        let q = values(self.to_q.forward(x)?)?;
        let k = values(self.to_k.forward(context)?)?;
        let v = values(self.to_v.forward(context)?)?;
        let shape = AttentionShape {
            batch,
            heads: self.heads,
            head_dim: self.head_dim,
            q_tokens,
            k_tokens,
        };
        let scale = 1.0 / (self.head_dim as f32).sqrt();
        let out = multi_head_attention(&q, &k, &v, shape, scale);
        let out = Tensor::from_vec(
            out,
            (batch, q_tokens, self.heads * self.head_dim),
            x.device(),
        )?;
        self.to_out.forward(&out)
    }
}
