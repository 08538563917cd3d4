//! The parts of the diffusers UNet: resnets, down/up samplers, the spatial transformer
//! (`Transformer2DModel` with `BasicTransformerBlock`s), and the down / mid / up blocks
//! built from them. Tensor names follow diffusers so a `VarBuilder` over a diffusers
//! `state_dict` finds every weight.
//!
//! See [`super::unet`] for why this is not candle-transformers' UNet.

use candle_core::{CpuStorage, DType, Layout, Module, Result, Tensor, D};
use candle_nn::{Conv2d, Conv2dConfig, GroupNorm, LayerNorm, Linear, VarBuilder};
use rayon::prelude::*;

/// Most attention scores computed at once, in f32 elements (1 << 21 = 8 MiB; the softmax
/// works in place on them). SD 1.5 at 64x64 latents has 4096 tokens:
/// unsliced, a batch of 2 with 8 heads would need 1 GiB of scores. Blocks this small also
/// stay in cache between the q k^T product, the softmax and the product with v, which
/// measured twice as fast as one 64 MiB head at a time.
const ATTENTION_SLICE_ELEMENTS: usize = 1 << 21;

/// Settings shared by every block of one UNet.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockSettings {
    /// Width of the time embedding each resnet projects from.
    pub temb_channels: usize,
    /// GroupNorm groups of resnets and transformers (`norm_num_groups`).
    pub groups: usize,
    /// GroupNorm epsilon of the resnets (`norm_eps`).
    pub eps: f64,
    /// Linear instead of 1x1-conv `proj_in` / `proj_out` in transformers.
    pub use_linear_projection: bool,
    /// Padding of the stride-2 down-sampling conv (0 pads right/bottom by one first).
    pub downsample_padding: usize,
}

/// The attention settings of one block level.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttentionSettings {
    /// Number of heads (diffusers: `num_attention_heads or attention_head_dim`).
    pub heads: usize,
    /// Width of the `encoder_hidden_states` the cross-attention reads.
    pub cross_attention_dim: usize,
    /// `BasicTransformerBlock`s per `Transformer2DModel`.
    pub transformer_layers: usize,
    /// The first attention also reads the context instead of attending to itself.
    pub only_cross_attention: bool,
}

fn conv2d(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding,
        stride,
        ..Default::default()
    };
    candle_nn::conv2d(in_channels, out_channels, kernel, cfg, vb)
}

/// diffusers `ResnetBlock2D` with the `default` time-embedding mode (added after `conv1`).
#[derive(Debug, Clone)]
pub(crate) struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    output_scale_factor: f64,
}

impl ResnetBlock2D {
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        output_scale_factor: f64,
        s: &BlockSettings,
    ) -> Result<Self> {
        let conv_shortcut = if in_channels != out_channels {
            Some(conv2d(
                in_channels,
                out_channels,
                1,
                1,
                0,
                vb.pp("conv_shortcut"),
            )?)
        } else {
            None
        };
        Ok(Self {
            norm1: candle_nn::group_norm(s.groups, in_channels, s.eps, vb.pp("norm1"))?,
            conv1: conv2d(in_channels, out_channels, 3, 1, 1, vb.pp("conv1"))?,
            time_emb_proj: candle_nn::linear(
                s.temb_channels,
                out_channels,
                vb.pp("time_emb_proj"),
            )?,
            norm2: candle_nn::group_norm(s.groups, out_channels, s.eps, vb.pp("norm2"))?,
            conv2: conv2d(out_channels, out_channels, 3, 1, 1, vb.pp("conv2"))?,
            conv_shortcut,
            output_scale_factor,
        })
    }

    /// `temb` is (1 or batch, temb_channels).
    pub fn forward(&self, x: &Tensor, temb: &Tensor) -> Result<Tensor> {
        let h = self.norm1.forward(x)?.silu()?;
        let h = self.conv1.forward(&h)?;
        let t = self.time_emb_proj.forward(&temb.silu()?)?;
        let t = t.unsqueeze(2)?.unsqueeze(3)?;
        let h = h.broadcast_add(&t)?;
        let h = self.norm2.forward(&h)?.silu()?;
        // Dropout is the identity at inference.
        let h = self.conv2.forward(&h)?;
        let skip = match &self.conv_shortcut {
            Some(conv) => conv.forward(x)?,
            None => x.clone(),
        };
        let out = (skip + h)?;
        if self.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            out / self.output_scale_factor
        }
    }
}

/// diffusers `Downsample2D` with a conv: 3x3, stride 2.
#[derive(Debug, Clone)]
struct Downsample2D {
    conv: Conv2d,
    pad_right_bottom: bool,
}

impl Downsample2D {
    fn new(vb: VarBuilder, channels: usize, padding: usize) -> Result<Self> {
        Ok(Self {
            conv: conv2d(channels, channels, 3, 2, padding, vb.pp("conv"))?,
            // diffusers pads (0, 1, 0, 1) itself when the conv has no padding.
            pad_right_bottom: padding == 0,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.pad_right_bottom {
            let x = x
                .pad_with_zeros(D::Minus1, 0, 1)?
                .pad_with_zeros(D::Minus2, 0, 1)?;
            self.conv.forward(&x)
        } else {
            self.conv.forward(x)
        }
    }
}

/// diffusers `Upsample2D` with a conv: nearest up-sampling, then 3x3.
#[derive(Debug, Clone)]
struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    fn new(vb: VarBuilder, channels: usize) -> Result<Self> {
        Ok(Self {
            conv: conv2d(channels, channels, 3, 1, 1, vb.pp("conv"))?,
        })
    }

    /// Up-samples to `(height, width)`: the size of the skip connection it meets next.
    /// That is 2x for sizes divisible by 2^levels; for other sizes diffusers passes the
    /// same target (`upsample_size`), so both paths agree with it.
    fn forward(&self, x: &Tensor, (height, width): (usize, usize)) -> Result<Tensor> {
        let x = x.upsample_nearest2d(height, width)?;
        self.conv.forward(&x)
    }
}

/// diffusers `Attention` (q/k/v without bias, `to_out.0` with bias), scaled dot product,
/// computed in slices so the score matrix stays bounded.
#[derive(Debug, Clone)]
struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(
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
    fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
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

/// diffusers `FeedForward` with GEGLU: `proj` to 2 x inner, value * gelu(gate) with the
/// exact erf GELU (diffusers' `F.gelu` default, not the tanh approximation), back to dim.
#[derive(Debug, Clone)]
struct FeedForward {
    proj: Linear,
    out: Linear,
    inner: usize,
}

impl FeedForward {
    fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        let inner = dim * 4;
        Ok(Self {
            proj: candle_nn::linear(dim, inner * 2, vb.pp("net").pp("0").pp("proj"))?,
            out: candle_nn::linear(inner, dim, vb.pp("net").pp("2"))?,
            inner,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.proj.forward(x)?;
        let value = h.narrow(D::Minus1, 0, self.inner)?;
        let gate = h.narrow(D::Minus1, self.inner, self.inner)?.gelu_erf()?;
        self.out.forward(&(value * gate)?)
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
    Linear(Linear),
}

impl Projection {
    fn new(vb: VarBuilder, in_dim: usize, out_dim: usize, linear: bool) -> Result<Self> {
        Ok(if linear {
            Self::Linear(candle_nn::linear(in_dim, out_dim, vb)?)
        } else {
            Self::Conv(conv2d(in_dim, out_dim, 1, 1, 0, vb)?)
        })
    }
}

/// diffusers `Transformer2DModel` on continuous input: GroupNorm (eps 1e-6), `proj_in`,
/// `BasicTransformerBlock`s over the H*W tokens, `proj_out`, plus the input.
#[derive(Debug, Clone)]
struct Transformer2D {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
}

impl Transformer2D {
    fn new(
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

    fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
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

/// diffusers `CrossAttnDownBlock2D` (with `attention`) or `DownBlock2D` (without).
#[derive(Debug, Clone)]
pub(crate) struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2D>,
    downsampler: Option<Downsample2D>,
}

impl DownBlock {
    pub fn new(
        vb: VarBuilder,
        (in_channels, out_channels): (usize, usize),
        num_layers: usize,
        attention: Option<&AttentionSettings>,
        add_downsample: bool,
        s: &BlockSettings,
    ) -> Result<Self> {
        let mut resnets = Vec::with_capacity(num_layers);
        let mut attentions = Vec::new();
        for i in 0..num_layers {
            let resnet_in = if i == 0 { in_channels } else { out_channels };
            resnets.push(ResnetBlock2D::new(
                vb.pp("resnets").pp(i),
                resnet_in,
                out_channels,
                1.0,
                s,
            )?);
            if let Some(a) = attention {
                attentions.push(Transformer2D::new(
                    vb.pp("attentions").pp(i),
                    out_channels,
                    a,
                    s,
                )?);
            }
        }
        let downsampler = if add_downsample {
            Some(Downsample2D::new(
                vb.pp("downsamplers").pp("0"),
                out_channels,
                s.downsample_padding,
            )?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            downsampler,
        })
    }

    /// Returns the output and every state the up blocks take as skip connections
    /// (each resnet's output, then the down-sampled one).
    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        context: &Tensor,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut h = x.clone();
        let mut states = Vec::with_capacity(self.resnets.len() + 1);
        for (i, resnet) in self.resnets.iter().enumerate() {
            h = resnet.forward(&h, temb)?;
            if let Some(attention) = self.attentions.get(i) {
                h = attention.forward(&h, context)?;
            }
            states.push(h.clone());
        }
        if let Some(down) = &self.downsampler {
            h = down.forward(&h)?;
            states.push(h.clone());
        }
        Ok((h, states))
    }
}

/// diffusers `UNetMidBlock2DCrossAttn`: resnet, then (transformer, resnet) per layer.
#[derive(Debug, Clone)]
pub(crate) struct MidBlock {
    first: ResnetBlock2D,
    layers: Vec<(Transformer2D, ResnetBlock2D)>,
}

impl MidBlock {
    pub fn new(
        vb: VarBuilder,
        channels: usize,
        output_scale_factor: f64,
        attention: &AttentionSettings,
        s: &BlockSettings,
    ) -> Result<Self> {
        let resnet = |i: usize| {
            ResnetBlock2D::new(
                vb.pp("resnets").pp(i),
                channels,
                channels,
                output_scale_factor,
                s,
            )
        };
        // diffusers' mid block always has one attention layer (`num_layers=1`).
        let attention = Transformer2D::new(vb.pp("attentions").pp("0"), channels, attention, s)?;
        Ok(Self {
            first: resnet(0)?,
            layers: vec![(attention, resnet(1)?)],
        })
    }

    pub fn forward(&self, x: &Tensor, temb: &Tensor, context: &Tensor) -> Result<Tensor> {
        let mut h = self.first.forward(x, temb)?;
        for (attention, resnet) in &self.layers {
            h = attention.forward(&h, context)?;
            h = resnet.forward(&h, temb)?;
        }
        Ok(h)
    }
}

/// diffusers `CrossAttnUpBlock2D` (with `attention`) or `UpBlock2D` (without).
#[derive(Debug, Clone)]
pub(crate) struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2D>,
    upsampler: Option<Upsample2D>,
}

/// The channel counts an up block is built from (diffusers' names).
#[derive(Debug, Clone, Copy)]
pub(crate) struct UpChannels {
    /// Channels of the matching down level's input: the last skip connection's width.
    pub in_channels: usize,
    /// Channels of this level.
    pub out_channels: usize,
    /// Channels coming up from the level below.
    pub prev_output_channels: usize,
}

impl UpBlock {
    pub fn new(
        vb: VarBuilder,
        c: UpChannels,
        num_layers: usize,
        attention: Option<&AttentionSettings>,
        add_upsample: bool,
        s: &BlockSettings,
    ) -> Result<Self> {
        let mut resnets = Vec::with_capacity(num_layers);
        let mut attentions = Vec::new();
        for i in 0..num_layers {
            let skip = if i + 1 == num_layers {
                c.in_channels
            } else {
                c.out_channels
            };
            let resnet_in = if i == 0 {
                c.prev_output_channels
            } else {
                c.out_channels
            };
            resnets.push(ResnetBlock2D::new(
                vb.pp("resnets").pp(i),
                resnet_in + skip,
                c.out_channels,
                1.0,
                s,
            )?);
            if let Some(a) = attention {
                attentions.push(Transformer2D::new(
                    vb.pp("attentions").pp(i),
                    c.out_channels,
                    a,
                    s,
                )?);
            }
        }
        let upsampler = if add_upsample {
            Some(Upsample2D::new(
                vb.pp("upsamplers").pp("0"),
                c.out_channels,
            )?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            upsampler,
        })
    }

    /// How many skip connections this block consumes.
    pub fn num_skips(&self) -> usize {
        self.resnets.len()
    }

    /// `skips` are this block's skip connections in down order (the last is used first);
    /// `upsample_hw` is the spatial size to up-sample to, when the block does.
    pub fn forward(
        &self,
        x: &Tensor,
        skips: &[Tensor],
        temb: &Tensor,
        context: &Tensor,
        upsample_hw: Option<(usize, usize)>,
    ) -> Result<Tensor> {
        let mut h = x.clone();
        for (i, (resnet, skip)) in self.resnets.iter().zip(skips.iter().rev()).enumerate() {
            h = Tensor::cat(&[&h, skip], 1)?;
            h = resnet.forward(&h, temb)?;
            if let Some(attention) = self.attentions.get(i) {
                h = attention.forward(&h, context)?;
            }
        }
        match (&self.upsampler, upsample_hw) {
            (Some(up), Some(hw)) => up.forward(&h, hw),
            (Some(up), None) => {
                let (_, _, height, width) = h.dims4()?;
                up.forward(&h, (2 * height, 2 * width))
            }
            (None, _) => Ok(h),
        }
    }
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
