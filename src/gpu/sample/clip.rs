//! The CLIP text encoder (transformers' `CLIPTextModel`, as `model::text::clip` runs it on
//! the CPU) on the GPU kernels: pre-LayerNorm layers with causal self-attention, the MLP's
//! quick GELU (SD 1.x) or exact GELU (SD 2.x), the final LayerNorm.
//!
//! The token lookup is the one part done on the CPU: the table (49408 x 768 floats for SD
//! 1.x, 200 MB for SD 2.x) stays in host memory and only the prompt's 77 rows, plus the
//! position embedding, are uploaded per prompt.

use candle_nn::VarBuilder;

use super::weights::{self, Affine};
use crate::gpu::nn::{AttnShape, GpuTensor, LinearWeights, Nn, Unary};
use crate::gpu::GpuError;
use crate::model::text::{ClipActivation, ClipTextConfig};
use crate::model::{ModelError, Result};

struct Layer {
    norm1: Affine,
    q: LinearWeights,
    k: LinearWeights,
    v: LinearWeights,
    out: LinearWeights,
    norm2: Affine,
    fc1: LinearWeights,
    fc2: LinearWeights,
}

/// The text encoder's weights on the GPU (the token table on the host).
pub struct GpuClip {
    config: ClipTextConfig,
    token_table: Vec<f32>,
    positions: Vec<f32>,
    layers: Vec<Layer>,
    final_norm: Affine,
}

impl GpuClip {
    /// Uploads the weights under `vb` (the text model's root: `embeddings.`, `encoder.`).
    pub fn load(nn: &Nn, vb: &VarBuilder, config: &ClipTextConfig) -> Result<Self> {
        let hidden = config.hidden_size;
        let heads = config.num_attention_heads;
        if heads == 0 || !hidden.is_multiple_of(heads) {
            return Err(ModelError::Invalid(format!(
                "CLIP hidden size {hidden} is not a whole number of {heads} heads"
            )));
        }
        let emb = vb.pp("embeddings");
        let token_table = weights::values(
            &emb.pp("token_embedding"),
            &[config.vocab_size, hidden],
            "weight",
        )?;
        let positions = weights::values(
            &emb.pp("position_embedding"),
            &[config.max_position_embeddings, hidden],
            "weight",
        )?;
        let lin = |vb: &VarBuilder, i, o| weights::linear(nn, vb, i, o, true);
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = vb.pp("encoder").pp("layers").pp(i);
                let attn = l.pp("self_attn");
                let mlp = l.pp("mlp");
                Ok(Layer {
                    norm1: Affine::load(nn, &l.pp("layer_norm1"), hidden)?,
                    q: lin(&attn.pp("q_proj"), hidden, hidden)?,
                    k: lin(&attn.pp("k_proj"), hidden, hidden)?,
                    v: lin(&attn.pp("v_proj"), hidden, hidden)?,
                    out: lin(&attn.pp("out_proj"), hidden, hidden)?,
                    norm2: Affine::load(nn, &l.pp("layer_norm2"), hidden)?,
                    fc1: lin(&mlp.pp("fc1"), hidden, config.intermediate_size)?,
                    fc2: lin(&mlp.pp("fc2"), config.intermediate_size, hidden)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config: config.clone(),
            token_table,
            positions,
            layers,
            final_norm: Affine::load(nn, &vb.pp("final_layer_norm"), hidden)?,
        })
    }

    /// The last hidden state (1, tokens, hidden) of `ids`, on the device.
    pub fn forward(&self, nn: &Nn, ids: &[u32]) -> std::result::Result<GpuTensor, GpuError> {
        let hidden = self.config.hidden_size;
        let n = ids.len();
        if n == 0 || n > self.config.max_position_embeddings {
            return Err(GpuError::BadInput(format!(
                "CLIP input has {n} tokens, the model takes 1 to {}",
                self.config.max_position_embeddings
            )));
        }
        let mut rows = Vec::with_capacity(n * hidden);
        for (position, &id) in ids.iter().enumerate() {
            let id = id as usize;
            if id >= self.config.vocab_size {
                return Err(GpuError::BadInput(format!(
                    "CLIP input id {id} is outside the vocabulary of {} tokens",
                    self.config.vocab_size
                )));
            }
            let token = &self.token_table[id * hidden..(id + 1) * hidden];
            let pos = &self.positions[position * hidden..(position + 1) * hidden];
            rows.extend(token.iter().zip(pos).map(|(t, p)| t + p));
        }
        let eps = self.config.layer_norm_eps as f32;
        let activation = match self.config.hidden_act {
            ClipActivation::QuickGelu => Unary::QuickGelu,
            ClipActivation::Gelu => Unary::Gelu,
        };
        let heads = self.config.num_attention_heads;
        let shape = AttnShape {
            batch: 1,
            heads,
            head_dim: hidden / heads,
            q_tokens: n,
            k_tokens: n,
        };
        let mut x = nn.upload(&rows, &[1, n, hidden])?;
        for layer in &self.layers {
            let normed = nn.layer_norm(&x, &layer.norm1.gamma, &layer.norm1.beta, eps)?;
            let q = nn.linear(&normed, &layer.q, None)?;
            let k = nn.linear(&normed, &layer.k, None)?;
            let v = nn.linear(&normed, &layer.v, None)?;
            let attended = nn.attention(&q, &k, &v, shape, true)?;
            x = nn.linear(&attended, &layer.out, Some(&x))?;
            let normed = nn.layer_norm(&x, &layer.norm2.gamma, &layer.norm2.beta, eps)?;
            let h = nn.unary(&nn.linear(&normed, &layer.fc1, None)?, activation)?;
            x = nn.linear(&h, &layer.fc2, Some(&x))?;
        }
        nn.layer_norm(&x, &self.final_norm.gamma, &self.final_norm.beta, eps)
    }
}
