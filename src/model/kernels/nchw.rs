//! The decoder kernels on NCHW tensors, for tests: each converts to the NHWC layout, runs
//! the very kernel the decoder runs, and converts back.

use candle_core::{DType, Device, Tensor};

use super::attention::{attend, attend_online};
use super::conv::{CompactConv3x3, Padding, Sink};
use super::flash::{multi_head_attention, AttentionShape};
use super::layout::{padded, Act};
use super::linear::Conv1x1;
use super::norm::GroupNorm;
use crate::model::{ModelError, Result};

fn values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

fn to_act(x: &Tensor) -> Result<Act> {
    let dims = x.dims4()?;
    Ok(Act::from_nchw(Vec::new(), &values(x)?, dims, |v| v))
}

fn from_act(act: &Act, channels: usize) -> Result<Tensor> {
    Ok(Tensor::from_vec(
        act.to_nchw(channels),
        (act.n, channels, act.h, act.w),
        &Device::Cpu,
    )?)
}

fn invalid(message: String) -> ModelError {
    ModelError::Invalid(message)
}

/// The decoder's GroupNorm (then SiLU if `silu`) on an NCHW tensor `x` (N, C, H, W) with
/// `gamma`, `beta` of C values: the NHWC kernel the decoder runs, for tests.
pub fn group_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    let (_, c, _, _) = x.dims4()?;
    if groups == 0 || !c.is_multiple_of(groups) {
        return Err(invalid(format!(
            "group_norm: {groups} groups do not divide {c} channels"
        )));
    }
    let (gamma, beta) = (values(gamma)?, values(beta)?);
    if gamma.len() != c || beta.len() != c {
        return Err(invalid(format!(
            "group_norm: weight/bias have {}/{} values for {c} channels",
            gamma.len(),
            beta.len()
        )));
    }
    let norm = GroupNorm::new(&gamma, &beta, groups, eps);
    let mut act = to_act(x)?;
    norm.forward_in_place(&mut act, silu);
    from_act(&act, c)
}

/// The decoder's 3x3 convolution (padding 1, Winograd F(4x4, 3x3)) on `x` (N, Cin, H, W)
/// upsampled (nearest) by `upsample`, with `weight` (Cout, Cin, 3, 3), an optional bias, and
/// `residual` (N, Cout, H*up, W*up) added in place as the decoder's resnets do: the NHWC
/// kernel the decoder runs, for tests.
pub fn conv3x3(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    upsample: usize,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let (n, cin, h, w) = x.dims4()?;
    let (cout, wcin, kh, kw) = weight.dims4()?;
    if (wcin, kh, kw) != (cin, 3, 3) || upsample == 0 {
        return Err(invalid(format!(
            "conv3x3: weight {:?} for input {:?}, upsample {upsample}",
            weight.dims(),
            x.dims()
        )));
    }
    let bias = bias.map(values).transpose()?;
    if bias.as_ref().is_some_and(|b| b.len() != cout) {
        return Err(invalid("conv3x3: bias size".into()));
    }
    let conv = CompactConv3x3::new(&values(weight)?, bias.as_deref(), cout, cin);
    let input = to_act(x)?;
    let (oh, ow) = (h * upsample, w * upsample);
    let mut u = Vec::new();
    let mut out = match residual {
        Some(r) => {
            if r.dims4()? != (n, cout, oh, ow) {
                return Err(invalid(format!("conv3x3: residual {:?}", r.dims())));
            }
            to_act(r)?
        }
        None => Act::reuse(Vec::new(), n, oh, ow, padded(cout)),
    };
    let sink = match residual {
        Some(_) => Sink::AddTo { out: &mut out },
        None => Sink::Act {
            out: &mut out,
            skip: None,
            relu: false,
        },
    };
    conv.forward(&input, upsample, sink, &mut u);
    from_act(&out, cout)
}

/// The decoder's 1x1 convolution on `x` (N, Cin, H, W), `weight` (Cout, Cin, 1, 1) and
/// `bias` (Cout): the kernel the decoder runs, for tests.
pub fn conv1x1(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (n, cin, h, w) = x.dims4()?;
    let (cout, wcin, _, _) = weight.dims4()?;
    if wcin != cin || weight.elem_count() != cout * cin {
        return Err(invalid(format!("conv1x1: weight {:?}", weight.dims())));
    }
    let conv = Conv1x1::new(&values(weight)?, &values(bias)?, cout, cin);
    let input = to_act(x)?;
    let mut out = Act::reuse(Vec::new(), n, h, w, conv.out_channels_padded());
    conv.forward(&input, &mut out);
    from_act(&out, cout)
}

/// `softmax(q k^T / sqrt(C)) v` for `q`, `k`, `v` of shape (T, C), computed `block_rows`
/// query rows at a time as the decoder's attention does: for tests.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, block_rows: usize) -> Result<Tensor> {
    let (tokens, c) = q.dims2()?;
    if k.dims2()? != (tokens, c) || v.dims2()? != (tokens, c) || block_rows == 0 {
        return Err(invalid("attention: q, k, v must all be (T, C)".into()));
    }
    let mut qv = values(q)?;
    attend(
        &mut qv,
        &values(k)?,
        &values(v)?,
        (tokens, c, c),
        block_rows,
    );
    Ok(Tensor::from_vec(qv, (tokens, c), &Device::Cpu)?)
}

/// `softmax(q k^T / sqrt(C)) v` for `q` (Tq, C) and `k`, `v` (T, C) as the chunked VAE
/// attention computes it: blocks of `query_rows` queries, each walking the keys `key_rows`
/// at a time with an online softmax. For tests.
pub fn attention_chunked(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    query_rows: usize,
    key_rows: usize,
) -> Result<Tensor> {
    let (q_tokens, c) = q.dims2()?;
    let (tokens, kc) = k.dims2()?;
    if kc != c || v.dims2()? != (tokens, c) || query_rows == 0 || key_rows == 0 {
        return Err(invalid(
            "attention_chunked: q (Tq, C), k and v (T, C), blocks of at least 1".into(),
        ));
    }
    let mut qv = values(q)?;
    let shape = (tokens, c, c);
    attend_online(
        &mut qv,
        &values(k)?,
        &values(v)?,
        shape,
        (query_rows, key_rows),
    );
    Ok(Tensor::from_vec(qv, (q_tokens, c), &Device::Cpu)?)
}

/// Multi-head attention with the online softmax the UNet runs: `q` (B, Tq, H * D), `k` and
/// `v` (B, Tk, H * D), `heads` = H; `softmax(q k^T / sqrt(D)) v` per head, rows back in
/// `q`'s shape. For tests.
pub fn attention_heads(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    let (batch, q_tokens, inner) = q.dims3()?;
    let (kb, k_tokens, k_inner) = k.dims3()?;
    if heads == 0 || !inner.is_multiple_of(heads) || (kb, k_inner) != (batch, inner) {
        return Err(invalid(format!(
            "attention_heads: q {:?}, k {:?}, {heads} heads",
            q.dims(),
            k.dims()
        )));
    }
    if v.dims() != k.dims() {
        return Err(invalid("attention_heads: v must have k's shape".into()));
    }
    let shape = AttentionShape {
        batch,
        heads,
        head_dim: inner / heads,
        q_tokens,
        k_tokens,
    };
    let scale = 1.0 / (shape.head_dim as f32).sqrt();
    let out = multi_head_attention(&values(q)?, &values(k)?, &values(v)?, shape, scale);
    Ok(Tensor::from_vec(
        out,
        (batch, q_tokens, inner),
        &Device::Cpu,
    )?)
}

/// A 3x3 convolution at `stride` with zero `padding` (before, after) on `x` (N, Cin, H, W)
/// up-sampled (nearest) by `upsample`, as the UNet runs it: Winograd when `winograd` (stride
/// 1, padding 1 only), else nine matrix products. For tests.
pub fn conv3x3_strided(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    (stride, padding): (usize, (usize, usize)),
    upsample: usize,
    winograd: bool,
) -> Result<Tensor> {
    let (n, cin, h, w) = x.dims4()?;
    let (cout, wcin, kh, kw) = weight.dims4()?;
    let padding = Padding {
        before: padding.0,
        after: padding.1,
    };
    let valid_winograd = stride == 1 && padding == Padding::same(1);
    if (wcin, kh, kw) != (cin, 3, 3)
        || !(1..=2).contains(&stride)
        || upsample == 0
        || (winograd && !valid_winograd)
    {
        return Err(invalid(format!(
            "conv3x3_strided: weight {:?}, input {:?}, stride {stride}, {padding:?}",
            weight.dims(),
            x.dims()
        )));
    }
    let bias = bias.map(values).transpose()?;
    let conv = CompactConv3x3::new(&values(weight)?, bias.as_deref(), cout, cin);
    let input = to_act(x)?.upsample_nearest(upsample);
    let (oh, ow) = (
        padding.out_len(h * upsample, stride),
        padding.out_len(w * upsample, stride),
    );
    let mut out = Act::reuse(Vec::new(), n, oh, ow, padded(cout));
    let mut scratch = Vec::new();
    if winograd {
        let sink = Sink::Act {
            out: &mut out,
            skip: None,
            relu: false,
        };
        conv.forward(&input, 1, sink, &mut scratch);
    } else {
        conv.forward_direct(&input, stride, padding, &mut out, &mut scratch);
    }
    from_act(&out, cout)
}
