//! diffusers' `Transformer2DModel` on continuous input: the spatial transformer of the
//! cross-attention blocks, with its `BasicTransformerBlock`s and GEGLU feed-forward.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, GroupNorm, LayerNorm, VarBuilder};

use super::attention::Attention;
use super::config::{AttentionSettings, BlockSettings};
use super::resnet::conv2d;
use crate::model::kernels::Dense;

/// diffusers `FeedForward` with GEGLU: `proj` to 2 x inner, value * gelu(gate) with the
/// exact erf GELU (diffusers' `F.gelu` default, not the tanh approximation), back to dim.
#[derive(Debug, Clone)]
struct FeedForward {
    proj: Dense,
    out: Dense,
}

impl FeedForward {
    fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        let inner = dim * 4;
        Ok(Self {
            proj: Dense::load(&vb.pp("net").pp("0").pp("proj"), dim, inner * 2, true)?,
            out: Dense::load(&vb.pp("net").pp("2"), inner, dim, true)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.out.forward(&self.proj.forward_geglu(x)?)
    }
}

/// diffusers `BasicTransformerBlock` (layer norms, self- or context attention,
/// cross-attention, GEGLU feed-forward; each with a residual).
#[derive(Debug, Clone)]
struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
    only_cross_attention: bool,
}

impl BasicTransformerBlock {
    fn new(vb: VarBuilder, dim: usize, head_dim: usize, a: &AttentionSettings) -> Result<Self> {
        // diffusers' default `norm_eps` of the transformer block, not the UNet's `norm_eps`.
        const EPS: f64 = 1e-5;
        let attn1_context = if a.only_cross_attention {
            a.cross_attention_dim
        } else {
            dim
        };
        Ok(Self {
            norm1: candle_nn::layer_norm(dim, EPS, vb.pp("norm1"))?,
            attn1: Attention::new(vb.pp("attn1"), dim, attn1_context, a.heads, head_dim)?,
            norm2: candle_nn::layer_norm(dim, EPS, vb.pp("norm2"))?,
            attn2: Attention::new(
                vb.pp("attn2"),
                dim,
                a.cross_attention_dim,
                a.heads,
                head_dim,
            )?,
            norm3: candle_nn::layer_norm(dim, EPS, vb.pp("norm3"))?,
            ff: FeedForward::new(vb.pp("ff"), dim)?,
            only_cross_attention: a.only_cross_attention,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let attn1_context = self.only_cross_attention.then_some(context);
        let x = (self.attn1.forward(&self.norm1.forward(x)?, attn1_context)? + x)?;
        let x = (self
            .attn2
            .forward(&self.norm2.forward(&x)?, Some(context))?
            + &x)?;
        self.ff.forward(&self.norm3.forward(&x)?)? + x
    }
}

/// `proj_in` / `proj_out` of a transformer: a 1x1 conv on (B, C, H, W) in the original
/// SD 1.x checkpoints, a linear on (B, HW, C) in SD 2.x (`use_linear_projection`).
#[derive(Debug, Clone)]
enum Projection {
    Conv(Conv2d),
    Linear(Dense),
}

impl Projection {
    fn new(vb: VarBuilder, in_dim: usize, out_dim: usize, linear: bool) -> Result<Self> {
        Ok(if linear {
            Self::Linear(Dense::load(&vb, in_dim, out_dim, true)?)
        } else {
            Self::Conv(conv2d(in_dim, out_dim, 1, 1, 0, vb)?)
        })
    }
}

/// diffusers `Transformer2DModel` on continuous input: GroupNorm (eps 1e-6), `proj_in`,
/// `BasicTransformerBlock`s over the H*W tokens, `proj_out`, plus the input.
#[derive(Debug, Clone)]
pub(super) struct Transformer2D {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
}

impl Transformer2D {
    pub(super) fn new(
        vb: VarBuilder,
        channels: usize,
        a: &AttentionSettings,
        s: &BlockSettings,
    ) -> Result<Self> {
        // diffusers: `Transformer2DModel(heads, channels // heads, ...)`; the inner width is
        // heads * head_dim, which equals `channels` whenever heads divides it.
        let head_dim = channels / a.heads;
        if head_dim == 0 {
            candle_core::bail!(
                "{} attention heads do not fit {channels} channels ({})",
                a.heads,
                vb.prefix()
            );
        }
        let inner = a.heads * head_dim;
        let linear = s.use_linear_projection;
        let blocks = (0..a.transformer_layers)
            .map(|i| {
                BasicTransformerBlock::new(vb.pp("transformer_blocks").pp(i), inner, head_dim, a)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            norm: candle_nn::group_norm(s.groups, channels, 1e-6, vb.pp("norm"))?,
            proj_in: Projection::new(vb.pp("proj_in"), channels, inner, linear)?,
            blocks,
            proj_out: Projection::new(vb.pp("proj_out"), inner, channels, linear)?,
        })
    }

    pub(super) fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (batch, _, height, width) = x.dims4()?;
        let h = self.norm.forward(x)?;
        let to_tokens = |h: &Tensor| -> Result<Tensor> {
            let channels = h.dim(1)?;
            h.permute((0, 2, 3, 1))?
                .contiguous()?
                .reshape((batch, height * width, channels))
        };
        let mut h = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(&conv.forward(&h)?)?,
            Projection::Linear(linear) => linear.forward(&to_tokens(&h)?)?,
        };
        for block in &self.blocks {
            h = block.forward(&h, context)?;
        }
        let to_image = |h: &Tensor| -> Result<Tensor> {
            let channels = h.dim(2)?;
            h.reshape((batch, height, width, channels))?
                .permute((0, 3, 1, 2))?
                .contiguous()
        };
        let h = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&to_image(&h)?)?,
            Projection::Linear(linear) => to_image(&linear.forward(&h)?)?,
        };
        h + x
    }
}
