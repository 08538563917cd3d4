//! The CLIP text encoder of Stable Diffusion (transformers `CLIPTextModel`): 77 token ids
//! -> one embedding per token, the UNet's cross-attention context.
//!
//! Written here rather than taken from candle-transformers, whose
//! `stable_diffusion::clip` does not fit: its `Config` fields are private (no building one
//! from a model's `config.json`), it requires the `text_model.` key prefix (newer
//! transformers save without it), its `"gelu"` is the tanh approximation, and its causal
//! mask is built as (batch, seq, seq) and broadcast against (batch, heads, seq, seq), which
//! only works when the batch size is 1 or equals the number of heads.
//!
//! Forward, as transformers: token + position embeddings; per layer
//! `x + attn(layer_norm1(x))` with a causal mask (token i sees tokens <= i), then
//! `x + mlp(layer_norm2(x))`; `final_layer_norm`.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, VarBuilder};
use serde::Deserialize;

use crate::model::kernels::{gelu_in_place, quick_gelu_in_place, Dense};
use crate::model::seeded::seeded_var_builder;
use crate::model::weights::{find_weights, in_file, mmap_var_builder, read_config};
use crate::model::{ModelError, Result};

/// The prefix transformers put before every key of a `CLIPTextModel` state dict (as real
/// SD `text_encoder/model.safetensors` files have it); newer versions save without it.
const KEY_PREFIX: &str = "text_model";

/// The MLP activation, transformers' `hidden_act`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ClipActivation {
    /// `x * sigmoid(1.702 x)`: OpenAI's CLIP ViT-L/14, SD 1.x.
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// Exact (erf) GELU: OpenCLIP ViT-H/14, SD 2.x.
    #[serde(rename = "gelu")]
    Gelu,
}

/// The text model's settings, read from transformers' `config.json` (other keys are
/// ignored) or built in code.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ClipTextConfig {
    /// Rows of the token embedding table (49,408 for CLIP).
    pub vocab_size: usize,
    /// Width of every token embedding (768 SD 1.x, 1024 SD 2.x).
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer; must divide `hidden_size`.
    pub num_attention_heads: usize,
    /// Rows of the position embedding table: the longest input (77).
    pub max_position_embeddings: usize,
    /// The MLP activation (transformers' default: `quick_gelu`).
    #[serde(default = "default_hidden_act")]
    pub hidden_act: ClipActivation,
    /// Epsilon of every layer norm (transformers' default: 1e-5).
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// The end-of-text id, where `pooled_output` is taken. transformers' default is 2,
    /// which it reads as "legacy": pool at the largest id of each row instead (SD 1.5's
    /// config says 2; with CLIP's vocabulary the largest id is the end-of-text 49407).
    #[serde(default = "default_eos_token_id")]
    pub eos_token_id: u32,
}

fn default_hidden_act() -> ClipActivation {
    ClipActivation::QuickGelu
}

fn default_layer_norm_eps() -> f64 {
    1e-5
}

fn default_eos_token_id() -> u32 {
    LEGACY_EOS_TOKEN_ID
}

/// transformers' `eos_token_id` default, which selects the argmax pooling of old configs.
const LEGACY_EOS_TOKEN_ID: u32 = 2;

impl ClipTextConfig {
    /// Checks what serde cannot: the key and the reason of the first inconsistency.
    fn check(&self) -> std::result::Result<(), (&'static str, String)> {
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err((
                "num_attention_heads",
                format!(
                    "{} heads do not divide hidden_size {}",
                    self.num_attention_heads, self.hidden_size
                ),
            ));
        }
        if self.max_position_embeddings == 0 {
            return Err(("max_position_embeddings", "must be at least 1".into()));
        }
        Ok(())
    }
}

/// What the text encoder returns for a batch of token ids.
#[derive(Debug, Clone)]
pub struct ClipTextOutput {
    /// (batch, tokens, hidden): the output of the final layer norm; SD 1.x's context.
    pub last_hidden_state: Tensor,
    /// (batch, tokens, hidden): transformers' `hidden_states[-2]`, the input of the last
    /// layer, before the final layer norm (the "clip skip" context).
    pub penultimate_hidden_state: Tensor,
    /// (batch, hidden): `last_hidden_state` at each row's end-of-text token.
    pub pooled_output: Tensor,
}

/// The CLIP text transformer.
#[derive(Debug)]
pub struct ClipTextEncoder {
    token_embedding: Embedding,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    config: ClipTextConfig,
}

impl ClipTextEncoder {
    /// Builds the encoder from weights named as transformers' `CLIPTextModel` without
    /// the `text_model.` prefix (`embeddings.token_embedding.weight`, ...); pass
    /// `vb.pp("text_model")` for prefixed files.
    pub fn new(vb: VarBuilder, cfg: &ClipTextConfig) -> Result<Self> {
        cfg.check().map_err(|(key, message)| {
            ModelError::Invalid(format!("CLIP config `{key}`: {message}"))
        })?;
        Ok(Self::build(vb, cfg)?)
    }

    /// An encoder of `cfg`'s architecture with seeded random weights (see
    /// [`UNet2DConditionModel::seeded`](crate::model::UNet2DConditionModel::seeded)).
    pub fn seeded(cfg: &ClipTextConfig, seed: u64) -> Result<Self> {
        Self::new(seeded_var_builder(seed, &Device::Cpu), cfg)
    }

    /// Loads a diffusers `text_encoder/` folder: `config.json` and the first weights
    /// file of `model.safetensors` / `model.fp16.safetensors`; keys with or without the
    /// `text_model.` prefix.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Self::load_patched(dir, device, |vb| vb)
    }

    /// [`Self::load`] with the weights read through `patch` (LoRA deltas added).
    pub fn load_patched(
        dir: &Path,
        device: &Device,
        patch: impl FnOnce(VarBuilder<'static>) -> VarBuilder<'static>,
    ) -> Result<Self> {
        let config_path = dir.join("config.json");
        let cfg: ClipTextConfig = read_config(&config_path)?;
        cfg.check().map_err(|(key, message)| ModelError::Config {
            path: config_path.clone(),
            key: key.into(),
            message,
        })?;
        let weights = find_weights(dir)?;
        let vb = patch(mmap_var_builder(std::slice::from_ref(&weights), device)?);
        let vb = Self::text_model_root(vb);
        // The int64 `embeddings.position_ids` buffer many files carry is never read: the
        // positions are always 0..n.
        Self::build(vb, &cfg).map_err(in_file(&weights))
    }

    /// `vb` at the text model's root: under `text_model.` when the file has that prefix
    /// (real SD files), else as it is.
    pub fn text_model_root(vb: VarBuilder<'static>) -> VarBuilder<'static> {
        let prefixed = format!("{KEY_PREFIX}.embeddings.token_embedding.weight");
        if vb.contains_tensor(&prefixed) {
            vb.pp(KEY_PREFIX)
        } else {
            vb
        }
    }

    fn build(vb: VarBuilder, cfg: &ClipTextConfig) -> candle_core::Result<Self> {
        let embeddings = vb.pp("embeddings");
        let token_embedding = candle_nn::embedding(
            cfg.vocab_size,
            cfg.hidden_size,
            embeddings.pp("token_embedding"),
        )?;
        let position_embedding = embeddings.get(
            (cfg.max_position_embeddings, cfg.hidden_size),
            "position_embedding.weight",
        )?;
        let encoder = vb.pp("encoder").pp("layers");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::new(encoder.pp(i), cfg))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let final_layer_norm = candle_nn::layer_norm(
            cfg.hidden_size,
            cfg.layer_norm_eps,
            vb.pp("final_layer_norm"),
        )?;
        Ok(Self {
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
            config: cfg.clone(),
        })
    }

    /// Encodes token ids of shape (batch, tokens), U32 or I64, any batch size and at most
    /// `max_position_embeddings` tokens.
    pub fn forward(&self, input_ids: &Tensor) -> Result<ClipTextOutput> {
        let rows = self.checked_ids(input_ids)?;
        let (batch, seq_len) = (rows.len(), rows.first().map_or(0, Vec::len));
        let device = self.position_embedding.device();
        let flat_ids: Vec<u32> = rows.iter().flatten().copied().collect();
        let ids = Tensor::from_vec(flat_ids, (batch, seq_len), device)?;

        let positions = self.position_embedding.narrow(0, 0, seq_len)?;
        let mut hidden = self
            .token_embedding
            .forward(&ids)?
            .broadcast_add(&positions)?;
        let mask = causal_mask(seq_len, device)?;
        let mut penultimate = hidden.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            if i + 1 == self.layers.len() {
                penultimate = hidden.clone();
            }
            hidden = layer.forward(&hidden, &mask)?;
        }
        let last_hidden_state = self.final_layer_norm.forward(&hidden)?;

        let pooled_rows: Vec<u32> = rows
            .iter()
            .enumerate()
            .map(|(b, row)| (b * seq_len + self.pool_position(row)) as u32)
            .collect();
        let pooled_rows = Tensor::from_vec(pooled_rows, batch, device)?;
        let pooled_output = last_hidden_state
            .reshape((batch * seq_len, self.config.hidden_size))?
            .index_select(&pooled_rows, 0)?;
        Ok(ClipTextOutput {
            last_hidden_state,
            penultimate_hidden_state: penultimate,
            pooled_output,
        })
    }

    /// Width of each token embedding.
    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    /// The settings the encoder was built with.
    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// Where `pooled_output` reads a row, as transformers: the first end-of-text id, or for
    /// legacy configs (eos id 2) the first largest id; position 0 when there is none.
    fn pool_position(&self, row: &[u32]) -> usize {
        if self.config.eos_token_id == LEGACY_EOS_TOKEN_ID {
            // First maximum, like torch's argmax.
            let max = row.iter().copied().max().unwrap_or(0);
            row.iter().position(|&id| id == max).unwrap_or(0)
        } else {
            row.iter()
                .position(|&id| id == self.config.eos_token_id)
                .unwrap_or(0)
        }
    }

    /// The ids as rows of u32, checked against the model: an id outside the embedding
    /// table or a sequence longer than the position table is the caller's mistake (a
    /// tokenizer that does not belong to this model), reported rather than indexed.
    fn checked_ids(&self, input_ids: &Tensor) -> Result<Vec<Vec<u32>>> {
        let rows: Vec<Vec<u32>> = match (input_ids.dims(), input_ids.dtype()) {
            (&[_, _], DType::U32) => input_ids.to_vec2::<u32>()?,
            (&[_, _], DType::I64) => input_ids
                .to_vec2::<i64>()?
                .into_iter()
                .map(|row| {
                    row.into_iter()
                        .map(|id| {
                            u32::try_from(id).map_err(|_| {
                                ModelError::Invalid(format!(
                                    "CLIP input id {id} is negative or too large"
                                ))
                            })
                        })
                        .collect::<Result<Vec<u32>>>()
                })
                .collect::<Result<_>>()?,
            (dims, dtype) => {
                return Err(ModelError::Invalid(format!(
                    "CLIP input ids must be (batch, tokens) U32 or I64, got {dims:?} {dtype:?}"
                )))
            }
        };
        let seq_len = rows.first().map_or(0, Vec::len);
        if seq_len == 0 || seq_len > self.config.max_position_embeddings {
            return Err(ModelError::Invalid(format!(
                "CLIP input has {seq_len} tokens, the model takes 1 to {}",
                self.config.max_position_embeddings
            )));
        }
        if let Some(&id) = rows
            .iter()
            .flatten()
            .find(|&&id| id as usize >= self.config.vocab_size)
        {
            return Err(ModelError::Invalid(format!(
                "CLIP input id {id} is outside the vocabulary of {} tokens",
                self.config.vocab_size
            )));
        }
        Ok(rows)
    }
}

/// (1, 1, seq, seq) additive mask: 0 where key j <= query i, the most negative f32 above
/// (as transformers); broadcasts over any batch and head count.
fn causal_mask(seq_len: usize, device: &Device) -> candle_core::Result<Tensor> {
    let mask: Vec<f32> = (0..seq_len)
        .flat_map(|i| (0..seq_len).map(move |j| if j > i { f32::MIN } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (1, 1, seq_len, seq_len), device)
}

#[derive(Debug)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: SelfAttention,
    layer_norm2: LayerNorm,
    fc1: Dense,
    fc2: Dense,
    activation: ClipActivation,
}

impl EncoderLayer {
    fn new(vb: VarBuilder, cfg: &ClipTextConfig) -> candle_core::Result<Self> {
        let hidden = cfg.hidden_size;
        let mlp = vb.pp("mlp");
        Ok(Self {
            layer_norm1: candle_nn::layer_norm(hidden, cfg.layer_norm_eps, vb.pp("layer_norm1"))?,
            self_attn: SelfAttention::new(vb.pp("self_attn"), cfg)?,
            layer_norm2: candle_nn::layer_norm(hidden, cfg.layer_norm_eps, vb.pp("layer_norm2"))?,
            fc1: Dense::load(&mlp.pp("fc1"), hidden, cfg.intermediate_size, true)?,
            fc2: Dense::load(&mlp.pp("fc2"), cfg.intermediate_size, hidden, true)?,
            activation: cfg.hidden_act,
        })
    }

    fn forward(&self, xs: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let attended = self
            .self_attn
            .forward(&self.layer_norm1.forward(xs)?, mask)?;
        let xs = (xs + attended)?;
        let activation = match self.activation {
            ClipActivation::QuickGelu => quick_gelu_in_place,
            ClipActivation::Gelu => gelu_in_place,
        };
        let hidden = self
            .fc1
            .forward_then(&self.layer_norm2.forward(&xs)?, activation)?;
        xs + self.fc2.forward(&hidden)?
    }
}

#[derive(Debug)]
struct SelfAttention {
    q_proj: Dense,
    k_proj: Dense,
    v_proj: Dense,
    out_proj: Dense,
    num_heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    fn new(vb: VarBuilder, cfg: &ClipTextConfig) -> candle_core::Result<Self> {
        let hidden = cfg.hidden_size;
        Ok(Self {
            q_proj: Dense::load(&vb.pp("q_proj"), hidden, hidden, true)?,
            k_proj: Dense::load(&vb.pp("k_proj"), hidden, hidden, true)?,
            v_proj: Dense::load(&vb.pp("v_proj"), hidden, hidden, true)?,
            out_proj: Dense::load(&vb.pp("out_proj"), hidden, hidden, true)?,
            num_heads: cfg.num_attention_heads,
            head_dim: hidden / cfg.num_attention_heads,
        })
    }

    fn forward(&self, xs: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (batch, seq_len, hidden) = xs.dims3()?;
        // (batch, seq, hidden) -> (batch, heads, seq, head_dim)
        let heads = |t: Tensor| {
            t.reshape((batch, seq_len, self.num_heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let scale = (self.head_dim as f64).powf(-0.5);
        let q = heads((self.q_proj.forward(xs)? * scale)?)?;
        let k = heads(self.k_proj.forward(xs)?)?;
        let v = heads(self.v_proj.forward(xs)?)?;
        let scores = q.matmul(&k.t()?.contiguous()?)?.broadcast_add(mask)?;
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let attended = weights
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((batch, seq_len, hidden))?;
        self.out_proj.forward(&attended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_is_causal() -> candle_core::Result<()> {
        let mask = causal_mask(3, &Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let open: Vec<bool> = mask.iter().map(|&m| m == 0.0).collect();
        assert_eq!(
            open,
            [true, false, false, true, true, false, true, true, true]
        );
        Ok(())
    }
}
