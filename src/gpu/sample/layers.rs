//! The UNet's layers on the GPU kernels (`gpu::nn`), as `model::unet` has them on the CPU:
//! the resnet block, the spatial transformer with its attention, and the 1x1 products that
//! move between the NCHW images and the transformer's (tokens, channels) rows.

use candle_nn::VarBuilder;

use super::weights::{self, Affine};
use crate::gpu::nn::{
    AttnShape, Bias, Conv3x3Opts, Conv3x3Weights, GemmDims, GpuTensor, LinearWeights, MatView, Nn,
    OutSpec,
};
use crate::gpu::GpuError;
use crate::model::Result;

/// Sizes every block shares.
#[derive(Clone, Copy, Debug)]
pub(super) struct Shared {
    pub temb_channels: usize,
    pub groups: usize,
    pub eps: f32,
}

/// (batch, channels, height, width) of an NCHW tensor.
pub(super) fn dims4(x: &GpuTensor) -> std::result::Result<[usize; 4], GpuError> {
    match *x.shape() {
        [b, c, h, w] => Ok([b, c, h, w]),
        ref other => Err(GpuError::BadInput(format!(
            "expected an NCHW tensor, got shape {other:?}"
        ))),
    }
}

/// Where element (b, i, j) of a matrix lies: `b * batch + i * row + j * col`.
#[derive(Clone, Copy)]
struct Strides {
    batch: usize,
    row: usize,
    col: usize,
}

impl Strides {
    fn view(self, tensor: &GpuTensor) -> MatView<'_> {
        MatView {
            tensor,
            offset: 0,
            batch_stride: self.batch,
            row_stride: self.row,
            col_stride: self.col,
        }
    }

    fn out(self, shape: Vec<usize>) -> OutSpec {
        OutSpec {
            shape,
            batch_stride: self.batch,
            row_stride: self.row,
            col_stride: self.col,
        }
    }
}

/// A linear layer's W^T (K, O) as the right-hand matrix of every batch.
fn weights_view(w: &LinearWeights) -> MatView<'_> {
    Strides {
        batch: 0,
        row: w.out_features,
        col: 1,
    }
    .view(&w.wt)
}

/// A 1x1 convolution of NCHW `x` (weights as a linear layer), plus `residual` (NCHW).
pub(super) fn conv1x1(
    nn: &Nn,
    x: &GpuTensor,
    w: &LinearWeights,
    residual: Option<&GpuTensor>,
) -> std::result::Result<GpuTensor, GpuError> {
    let [b, c, h, wd] = dims4(x)?;
    let (o, hw) = (w.out_features, h * wd);
    // C[b][o][p] = sum_c W[o][c] x[b][c][p]; W[o][c] is wt[c][o].
    let weights = Strides {
        batch: 0,
        row: 1,
        col: o,
    };
    let input = Strides {
        batch: c * hw,
        row: hw,
        col: 1,
    };
    let nchw = Strides {
        batch: o * hw,
        row: hw,
        col: 1,
    };
    let dims = GemmDims {
        batch: b,
        m: o,
        n: hw,
        k: c,
    };
    let bias = w.bias.as_ref().map_or(Bias::None, Bias::Row);
    nn.gemm(
        weights.view(&w.wt),
        input.view(x),
        dims,
        bias,
        residual.map(|r| nchw.view(r)),
        nchw.out(vec![b, o, h, wd]),
    )
}

/// NCHW `x` read as rows of tokens (B, H*W, C) through a linear layer: (B, H*W, O).
fn tokens_from_image(
    nn: &Nn,
    x: &GpuTensor,
    w: &LinearWeights,
) -> std::result::Result<GpuTensor, GpuError> {
    let [b, c, h, wd] = dims4(x)?;
    let (o, hw) = (w.out_features, h * wd);
    let image = Strides {
        batch: c * hw,
        row: 1,
        col: hw,
    };
    let tokens = Strides {
        batch: hw * o,
        row: o,
        col: 1,
    };
    let dims = GemmDims {
        batch: b,
        m: hw,
        n: o,
        k: c,
    };
    let bias = w.bias.as_ref().map_or(Bias::None, Bias::Col);
    nn.gemm(
        image.view(x),
        weights_view(w),
        dims,
        bias,
        None,
        tokens.out(vec![b, hw, o]),
    )
}

/// Tokens (B, H*W, K) through a linear layer, written as an NCHW image (B, O, H, W) plus
/// `residual` (NCHW).
fn image_from_tokens(
    nn: &Nn,
    x: &GpuTensor,
    w: &LinearWeights,
    (h, wd): (usize, usize),
    residual: &GpuTensor,
) -> std::result::Result<GpuTensor, GpuError> {
    let (b, hw, k) = match *x.shape() {
        [b, n, k] => (b, n, k),
        ref other => {
            return Err(GpuError::BadInput(format!(
                "expected tokens (batch, n, channels), got {other:?}"
            )))
        }
    };
    let o = w.out_features;
    let image = Strides {
        batch: o * hw,
        row: 1,
        col: hw,
    };
    let dims = GemmDims {
        batch: b,
        m: hw,
        n: o,
        k,
    };
    let bias = w.bias.as_ref().map_or(Bias::None, Bias::Col);
    nn.gemm(
        MatView::row_major(x, hw, k),
        weights_view(w),
        dims,
        bias,
        Some(image.view(residual)),
        image.out(vec![b, o, h, wd]),
    )
}

/// diffusers `ResnetBlock2D` (default time-embedding shift): GroupNorm + SiLU, conv, plus
/// the time embedding's projection, GroupNorm + SiLU, conv, plus the shortcut, scaled.
pub(super) struct Resnet {
    norm1: Affine,
    conv1: Conv3x3Weights,
    /// time_emb_proj, its bias holding conv1's too (both are added per channel).
    time: LinearWeights,
    norm2: Affine,
    conv2: Conv3x3Weights,
    shortcut: Option<LinearWeights>,
    out_scale: f32,
    shared: Shared,
}

impl Resnet {
    pub(super) fn load(
        nn: &Nn,
        vb: &VarBuilder,
        in_channels: usize,
        out_channels: usize,
        output_scale_factor: f64,
        shared: Shared,
    ) -> Result<Self> {
        let mut conv1_bias = Vec::new();
        let conv1 = weights::conv3x3(
            nn,
            &vb.pp("conv1"),
            in_channels,
            out_channels,
            Some(&mut conv1_bias),
        )?;
        let tvb = vb.pp("time_emb_proj");
        let time_weight = weights::values(&tvb, &[out_channels, shared.temb_channels], "weight")?;
        let time_bias: Vec<f32> = weights::values(&tvb, &[out_channels], "bias")?
            .iter()
            .zip(&conv1_bias)
            .map(|(t, c)| t + c)
            .collect();
        let time = LinearWeights::new(
            nn,
            &time_weight,
            Some(&time_bias),
            out_channels,
            shared.temb_channels,
        )
        .map_err(|e| weights::upload_error(&tvb, "weight", e))?;
        let shortcut = match in_channels != out_channels {
            true => Some(weights::conv1x1(
                nn,
                &vb.pp("conv_shortcut"),
                in_channels,
                out_channels,
            )?),
            false => None,
        };
        Ok(Self {
            norm1: Affine::load(nn, &vb.pp("norm1"), in_channels)?,
            conv1,
            time,
            norm2: Affine::load(nn, &vb.pp("norm2"), out_channels)?,
            conv2: weights::conv3x3(nn, &vb.pp("conv2"), out_channels, out_channels, None)?,
            shortcut,
            out_scale: (1.0 / output_scale_factor) as f32,
            shared,
        })
    }

    /// `temb_silu` is SiLU of the time embedding (1, temb_channels), shared by the batch.
    pub(super) fn forward(
        &self,
        nn: &Nn,
        x: &GpuTensor,
        temb_silu: &GpuTensor,
    ) -> std::result::Result<GpuTensor, GpuError> {
        let Shared { groups, eps, .. } = self.shared;
        let h = nn.group_norm(x, groups, &self.norm1.gamma, &self.norm1.beta, eps, true)?;
        let t = nn.linear(temb_silu, &self.time, None)?;
        let h = nn.conv3x3(
            &h,
            &self.conv1,
            &Conv3x3Opts {
                extra_bias: Some(&t),
                ..Default::default()
            },
        )?;
        let h = nn.group_norm(&h, groups, &self.norm2.gamma, &self.norm2.beta, eps, true)?;
        let skip = match &self.shortcut {
            Some(w) => conv1x1(nn, x, w, None)?,
            None => x.clone(),
        };
        nn.conv3x3(
            &h,
            &self.conv2,
            &Conv3x3Opts {
                residual: Some(&skip),
                out_scale: self.out_scale,
                ..Default::default()
            },
        )
    }
}

/// diffusers `Attention`: q, k, v without bias, `to_out.0` with bias, plus the input.
struct Attention {
    to_q: LinearWeights,
    to_k: LinearWeights,
    to_v: LinearWeights,
    to_out: LinearWeights,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(
        nn: &Nn,
        vb: &VarBuilder,
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<Self> {
        let inner = heads * head_dim;
        Ok(Self {
            to_q: weights::linear(nn, &vb.pp("to_q"), query_dim, inner, false)?,
            to_k: weights::linear(nn, &vb.pp("to_k"), context_dim, inner, false)?,
            to_v: weights::linear(nn, &vb.pp("to_v"), context_dim, inner, false)?,
            to_out: weights::linear(nn, &vb.pp("to_out").pp("0"), inner, query_dim, true)?,
            heads,
            head_dim,
        })
    }

    /// `x + attention(norm_x, context)`; `context` None: self-attention on `norm_x`.
    fn forward(
        &self,
        nn: &Nn,
        norm_x: &GpuTensor,
        context: Option<&GpuTensor>,
        x: &GpuTensor,
    ) -> std::result::Result<GpuTensor, GpuError> {
        let context = context.unwrap_or(norm_x);
        let (batch, q_tokens) = (norm_x.shape()[0], norm_x.shape()[1]);
        let q = nn.linear(norm_x, &self.to_q, None)?;
        let k = nn.linear(context, &self.to_k, None)?;
        let v = nn.linear(context, &self.to_v, None)?;
        let shape = AttnShape {
            batch,
            heads: self.heads,
            head_dim: self.head_dim,
            q_tokens,
            k_tokens: context.shape()[1],
        };
        let attended = nn.attention(&q, &k, &v, shape, false)?;
        nn.linear(&attended, &self.to_out, Some(x))
    }
}

/// diffusers `BasicTransformerBlock`: self- (or cross-) attention, cross-attention, GEGLU
/// feed-forward, each after a LayerNorm (eps 1e-5) and added to its input.
struct TransformerBlock {
    norm1: Affine,
    attn1: Attention,
    norm2: Affine,
    attn2: Attention,
    norm3: Affine,
    ff_proj: LinearWeights,
    ff_out: LinearWeights,
    only_cross_attention: bool,
}

/// The LayerNorm eps of diffusers' transformer block (not the UNet's `norm_eps`).
const BLOCK_EPS: f32 = 1e-5;

impl TransformerBlock {
    fn load(nn: &Nn, vb: &VarBuilder, dim: usize, a: &AttentionSizes) -> Result<Self> {
        let attn1_context = match a.only_cross_attention {
            true => a.cross_attention_dim,
            false => dim,
        };
        let ff = vb.pp("ff").pp("net");
        Ok(Self {
            norm1: Affine::load(nn, &vb.pp("norm1"), dim)?,
            attn1: Attention::load(nn, &vb.pp("attn1"), dim, attn1_context, a.heads, a.head_dim)?,
            norm2: Affine::load(nn, &vb.pp("norm2"), dim)?,
            attn2: Attention::load(
                nn,
                &vb.pp("attn2"),
                dim,
                a.cross_attention_dim,
                a.heads,
                a.head_dim,
            )?,
            norm3: Affine::load(nn, &vb.pp("norm3"), dim)?,
            ff_proj: weights::linear(nn, &ff.pp("0").pp("proj"), dim, dim * 8, true)?,
            ff_out: weights::linear(nn, &ff.pp("2"), dim * 4, dim, true)?,
            only_cross_attention: a.only_cross_attention,
        })
    }

    fn forward(
        &self,
        nn: &Nn,
        x: &GpuTensor,
        context: &GpuTensor,
    ) -> std::result::Result<GpuTensor, GpuError> {
        let norm = |x: &GpuTensor, n: &Affine| nn.layer_norm(x, &n.gamma, &n.beta, BLOCK_EPS);
        let attn1_context = self.only_cross_attention.then_some(context);
        let x = self
            .attn1
            .forward(nn, &norm(x, &self.norm1)?, attn1_context, x)?;
        let x = self
            .attn2
            .forward(nn, &norm(&x, &self.norm2)?, Some(context), &x)?;
        let hidden = nn.linear(&norm(&x, &self.norm3)?, &self.ff_proj, None)?;
        let hidden = nn.geglu(&hidden)?;
        nn.linear(&hidden, &self.ff_out, Some(&x))
    }
}

/// What a block's transformers are: heads, their width, the context's width.
#[derive(Clone, Copy, Debug)]
pub(super) struct AttentionSizes {
    pub heads: usize,
    pub head_dim: usize,
    pub cross_attention_dim: usize,
    pub layers: usize,
    pub only_cross_attention: bool,
}

/// diffusers `Transformer2DModel` on continuous input: GroupNorm (eps 1e-6), `proj_in`,
/// the blocks over the H*W tokens, `proj_out`, plus the input. A 1x1-conv projection (SD
/// 1.x) and a linear one (SD 2.x) are the same product here, read from NCHW and written
/// back to it.
pub(super) struct Transformer {
    norm: Affine,
    proj_in: LinearWeights,
    blocks: Vec<TransformerBlock>,
    proj_out: LinearWeights,
    groups: usize,
}

impl Transformer {
    pub(super) fn load(
        nn: &Nn,
        vb: &VarBuilder,
        channels: usize,
        a: &AttentionSizes,
        linear_projection: bool,
        groups: usize,
    ) -> Result<Self> {
        let inner = a.heads * a.head_dim;
        let projection = |name: &str, i: usize, o: usize| match linear_projection {
            true => weights::linear(nn, &vb.pp(name), i, o, true),
            false => weights::conv1x1(nn, &vb.pp(name), i, o),
        };
        let blocks = (0..a.layers)
            .map(|i| TransformerBlock::load(nn, &vb.pp("transformer_blocks").pp(i), inner, a))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            norm: Affine::load(nn, &vb.pp("norm"), channels)?,
            proj_in: projection("proj_in", channels, inner)?,
            blocks,
            proj_out: projection("proj_out", inner, channels)?,
            groups,
        })
    }

    pub(super) fn forward(
        &self,
        nn: &Nn,
        x: &GpuTensor,
        context: &GpuTensor,
    ) -> std::result::Result<GpuTensor, GpuError> {
        let [_, _, h, w] = dims4(x)?;
        let normed = nn.group_norm(
            x,
            self.groups,
            &self.norm.gamma,
            &self.norm.beta,
            1e-6,
            false,
        )?;
        let mut tokens = tokens_from_image(nn, &normed, &self.proj_in)?;
        for block in &self.blocks {
            tokens = block.forward(nn, &tokens, context)?;
        }
        image_from_tokens(nn, &tokens, &self.proj_out, (h, w), x)
    }
}
