//! The WGSL neural-network kernels (`dreamwalk::gpu::nn`) against plain Rust references
//! (loops in f64), at shapes the model fixtures do not reach: several heads, odd token
//! counts, non-square images, batch 2, channel counts that are not multiples of 4.
//!
//! The bound: |gpu - reference| <= TOL * (1 + |reference|) for every element. The kernels
//! sum in f32 (at most a few hundred terms of magnitude ~1 here, rounding ~1e-6); 1e-4 is
//! far above that and far below what a wrong index, tap, mask or missing term does (1e-2 and
//! more). These tests need a GPU adapter (lavapipe without a GPU).

use std::sync::OnceLock;

use dreamwalk::gpu::nn::{
    AttnShape, Bias, Conv3x3Opts, Conv3x3Weights, GemmDims, GpuTensor, LinearWeights, MatView, Nn,
    OutSpec, Unary,
};
use dreamwalk::gpu::GpuError;
use rand::{Rng, SeedableRng};

use crate::support::gpu::{gpu_context, shared_gpu_context};

const TOL: f64 = 1e-4;

/// One `Nn` for the tests of this module: a software adapter compiles pipelines slowly.
fn nn() -> &'static Nn {
    static NN: OnceLock<Nn> = OnceLock::new();
    NN.get_or_init(|| {
        let ctx = shared_gpu_context();
        Nn::new(ctx.device.clone(), ctx.queue.clone()).expect("Nn on the shared context")
    })
}

fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn upload(data: &[f32], shape: &[usize]) -> GpuTensor {
    nn().upload(data, shape).expect("upload")
}

fn download(x: &GpuTensor) -> Vec<f32> {
    nn().download(x).expect("download")
}

/// Max of |got - want| / (1 + |want|); asserts it is within TOL, naming `what`.
fn assert_close(got: &[f32], want: &[f64], what: &str) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let err = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (f64::from(g) - w).abs() / (1.0 + w.abs()))
        .fold(0.0, f64::max);
    eprintln!("{what}: max relative-ish error {err:.2e}");
    assert!(
        err <= TOL,
        "{what}: max relative-ish error {err:.3e} > {TOL}"
    );
    err
}

/// The 3x3 convolution in f64 with every option, as `Conv3x3Opts` documents it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_reference(
    x: &[f32],
    (b, cin, h, w): (usize, usize, usize, usize),
    weight: &[f32],
    bias: &[f32],
    cout: usize,
    stride: usize,
    pad: (usize, usize),
    up: Option<(usize, usize)>,
    extra: Option<&[f32]>,
    residual: Option<&[f32]>,
    scale: f32,
) -> (Vec<f64>, [usize; 4]) {
    let (hu, wu) = up.unwrap_or((h, w));
    let ho = (hu + pad.0 + pad.1 - 3) / stride + 1;
    let wo = (wu + pad.0 + pad.1 - 3) / stride + 1;
    let mut out = vec![0f64; b * cout * ho * wo];
    for n in 0..b {
        for co in 0..cout {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut s = f64::from(bias[co]);
                    if let Some(e) = extra {
                        s += f64::from(if e.len() == cout {
                            e[co]
                        } else {
                            e[n * cout + co]
                        });
                    }
                    for ci in 0..cin {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let iy = (oy * stride + ky) as isize - pad.0 as isize;
                                let ix = (ox * stride + kx) as isize - pad.0 as isize;
                                if iy < 0 || ix < 0 || iy >= hu as isize || ix >= wu as isize {
                                    continue;
                                }
                                let sy = iy as usize * h / hu;
                                let sx = ix as usize * w / wu;
                                s += f64::from(weight[((co * cin + ci) * 3 + ky) * 3 + kx])
                                    * f64::from(x[((n * cin + ci) * h + sy) * w + sx]);
                            }
                        }
                    }
                    let index = ((n * cout + co) * ho + oy) * wo + ox;
                    if let Some(r) = residual {
                        s += f64::from(r[index]);
                    }
                    out[index] = s * f64::from(scale);
                }
            }
        }
    }
    (out, [b, cout, ho, wo])
}

#[test]
fn conv3x3_same_padding_odd_channels_batch_2() {
    let (b, cin, cout, h, w) = (2, 3, 20, 6, 10);
    let x = random(b * cin * h * w, 1);
    let weight = random(cout * cin * 9, 2);
    let bias = random(cout, 3);
    let conv = Conv3x3Weights::new(nn(), &weight, Some(&bias), cout, cin).expect("weights");
    assert_eq!((conv.out_channels(), conv.in_channels()), (cout, cin));
    let y = nn()
        .conv3x3(&upload(&x, &[b, cin, h, w]), &conv, &Conv3x3Opts::default())
        .expect("conv");
    let (want, shape) = conv_reference(
        &x,
        (b, cin, h, w),
        &weight,
        &bias,
        cout,
        1,
        (1, 1),
        None,
        None,
        None,
        1.0,
    );
    assert_eq!(y.shape(), shape);
    assert_close(&download(&y), &want, "conv3x3 3->20 at 6x10, batch 2");
}

#[test]
fn conv3x3_stride_2_downsample_padding() {
    let (b, cin, cout, h, w) = (1, 20, 36, 5, 7);
    let x = random(b * cin * h * w, 4);
    let weight = random(cout * cin * 9, 5);
    let bias = random(cout, 6);
    let conv = Conv3x3Weights::new(nn(), &weight, Some(&bias), cout, cin).expect("weights");
    for pad in [(0, 1), (1, 1)] {
        let opts = Conv3x3Opts {
            stride: 2,
            pad,
            ..Default::default()
        };
        let y = nn()
            .conv3x3(&upload(&x, &[b, cin, h, w]), &conv, &opts)
            .expect("conv");
        let (want, shape) = conv_reference(
            &x,
            (b, cin, h, w),
            &weight,
            &bias,
            cout,
            2,
            pad,
            None,
            None,
            None,
            1.0,
        );
        assert_eq!(y.shape(), shape, "pad {pad:?}");
        assert_close(
            &download(&y),
            &want,
            &format!("conv3x3 stride 2 pad {pad:?} 20->36 at 5x7"),
        );
    }
}

#[test]
fn conv3x3_upsampled_with_extra_bias_residual_and_scale() {
    let (b, cin, cout, h, w) = (2, 4, 20, 5, 7);
    let x = random(b * cin * h * w, 7);
    let weight = random(cout * cin * 9, 8);
    let bias = random(cout, 9);
    let conv = Conv3x3Weights::new(nn(), &weight, Some(&bias), cout, cin).expect("weights");
    let xt = upload(&x, &[b, cin, h, w]);
    // 2x, then a size that is no multiple (5x7 -> 9x13), with a per-(batch, channel) extra.
    for (up, extra_len) in [((10, 14), cout), ((9, 13), b * cout)] {
        let extra = random(extra_len, 10);
        let residual = random(b * cout * up.0 * up.1, 11);
        let extra_t = upload(&extra, &[extra_len]);
        let residual_t = upload(&residual, &[b, cout, up.0, up.1]);
        let opts = Conv3x3Opts {
            upsample_to: Some(up),
            extra_bias: Some(&extra_t),
            residual: Some(&residual_t),
            out_scale: 0.5,
            ..Default::default()
        };
        let y = nn().conv3x3(&xt, &conv, &opts).expect("conv");
        let (want, shape) = conv_reference(
            &x,
            (b, cin, h, w),
            &weight,
            &bias,
            cout,
            1,
            (1, 1),
            Some(up),
            Some(&extra),
            Some(&residual),
            0.5,
        );
        assert_eq!(y.shape(), shape);
        assert_close(
            &download(&y),
            &want,
            &format!("conv3x3 5x7 upsampled to {up:?}, extra {extra_len}, residual, x0.5"),
        );
    }
}

#[test]
fn gemm_views_1x1_conv_tokens_and_nchw_output() {
    let (b, c, o, hw) = (2, 36, 20, 35);
    let x = random(b * c * hw, 12);
    let weight = random(o * c, 13);
    let bias = random(o, 14);
    let xt = upload(&x, &[b, c, 5, 7]);
    let wt = upload(&weight, &[o, c]);
    let bt = upload(&bias, &[o]);

    // A 1x1 conv on NCHW: C[b] (O x HW) = W (O x C) X[b] (C x HW), Bias::Row.
    let y = nn()
        .gemm(
            MatView {
                tensor: &wt,
                offset: 0,
                batch_stride: 0,
                row_stride: c,
                col_stride: 1,
            },
            MatView::row_major(&xt, c, hw),
            GemmDims {
                batch: b,
                m: o,
                n: hw,
                k: c,
            },
            Bias::Row(&bt),
            None,
            OutSpec {
                shape: vec![b, o, 5, 7],
                batch_stride: o * hw,
                row_stride: hw,
                col_stride: 1,
            },
        )
        .expect("1x1 conv gemm");
    let mut want = vec![0f64; b * o * hw];
    for n in 0..b {
        for oc in 0..o {
            for p in 0..hw {
                want[(n * o + oc) * hw + p] = f64::from(bias[oc])
                    + (0..c)
                        .map(|ci| {
                            f64::from(weight[oc * c + ci]) * f64::from(x[(n * c + ci) * hw + p])
                        })
                        .sum::<f64>();
            }
        }
    }
    assert_close(&download(&y), &want, "gemm as a 1x1 conv 36->20, Bias::Row");

    // Tokens read from NCHW (A[b][p][c] = x[b][c][p]) through a linear's W^T, Bias::Col,
    // written back as NCHW through the OutSpec strides, plus that NCHW as the residual.
    let lin = LinearWeights::new(nn(), &weight, Some(&bias), o, c).expect("linear");
    let residual = random(b * o * hw, 15);
    let rt = upload(&residual, &[b, o, 5, 7]);
    let nchw = |tensor| MatView {
        tensor,
        offset: 0,
        batch_stride: o * hw,
        row_stride: 1,
        col_stride: hw,
    };
    let y2 = nn()
        .gemm(
            MatView {
                tensor: &xt,
                offset: 0,
                batch_stride: c * hw,
                row_stride: 1,
                col_stride: hw,
            },
            MatView {
                tensor: &lin.wt,
                offset: 0,
                batch_stride: 0,
                row_stride: o,
                col_stride: 1,
            },
            GemmDims {
                batch: b,
                m: hw,
                n: o,
                k: c,
            },
            Bias::Col(lin.bias.as_ref().expect("bias")),
            Some(nchw(&rt)),
            OutSpec {
                shape: vec![b, o, 5, 7],
                batch_stride: o * hw,
                row_stride: 1,
                col_stride: hw,
            },
        )
        .expect("token gemm");
    let want2: Vec<f64> = want
        .iter()
        .zip(&residual)
        .map(|(w, &r)| w + f64::from(r))
        .collect();
    assert_close(
        &download(&y2),
        &want2,
        "gemm tokens from NCHW, Bias::Col, NCHW out + residual",
    );
}

#[test]
fn linear_with_residual_and_flop_count() {
    let (b, t, k, o) = (2, 13, 36, 20);
    let x = random(b * t * k, 16);
    let weight = random(o * k, 17);
    let bias = random(o, 18);
    let residual = random(b * t * o, 19);
    let lin = LinearWeights::new(nn(), &weight, Some(&bias), o, k).expect("linear");
    let before = nn().flops();
    let y = nn()
        .linear(
            &upload(&x, &[b, t, k]),
            &lin,
            Some(&upload(&residual, &[b, t, o])),
        )
        .expect("linear");
    // Other tests share the Nn and run in parallel: at least this layer's flops were added.
    let added = nn().flops() - before;
    assert!(
        added >= (2 * b * t * k * o) as u64,
        "flops grew by {added}, the layer does {}",
        2 * b * t * k * o
    );
    assert_eq!(y.shape(), [b, t, o]);
    let mut want = vec![0f64; b * t * o];
    for r in 0..b * t {
        for j in 0..o {
            want[r * o + j] = f64::from(bias[j])
                + f64::from(residual[r * o + j])
                + (0..k)
                    .map(|i| f64::from(x[r * k + i]) * f64::from(weight[j * k + i]))
                    .sum::<f64>();
        }
    }
    assert_close(&download(&y), &want, "linear 36->20 on (2, 13), residual");
}

/// Softmax attention in f64, heads interleaved in the last dim.
fn attention_reference(q: &[f32], k: &[f32], v: &[f32], s: AttnShape, causal: bool) -> Vec<f64> {
    let hd = s.heads * s.head_dim;
    let scale = 1.0 / (s.head_dim as f64).sqrt();
    let mut out = vec![0f64; s.batch * s.q_tokens * hd];
    for b in 0..s.batch {
        for h in 0..s.heads {
            for i in 0..s.q_tokens {
                let keys = if causal { i + 1 } else { s.k_tokens };
                let scores: Vec<f64> = (0..keys)
                    .map(|j| {
                        (0..s.head_dim)
                            .map(|d| {
                                f64::from(q[(b * s.q_tokens + i) * hd + h * s.head_dim + d])
                                    * f64::from(k[(b * s.k_tokens + j) * hd + h * s.head_dim + d])
                            })
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for d in 0..s.head_dim {
                    out[(b * s.q_tokens + i) * hd + h * s.head_dim + d] = weights
                        .iter()
                        .enumerate()
                        .map(|(j, w)| {
                            w * f64::from(v[(b * s.k_tokens + j) * hd + h * s.head_dim + d])
                        })
                        .sum::<f64>()
                        / total;
                }
            }
        }
    }
    out
}

fn check_attention(s: AttnShape, causal: bool, seed: u64) {
    let hd = s.heads * s.head_dim;
    // Scaled up so that the softmax is far from uniform (a wrong mask or scale shows).
    let scaled = |len, seed| -> Vec<f32> { random(len, seed).iter().map(|v| v * 3.0).collect() };
    let q = scaled(s.batch * s.q_tokens * hd, seed);
    let k = scaled(s.batch * s.k_tokens * hd, seed + 1);
    let v = random(s.batch * s.k_tokens * hd, seed + 2);
    let y = nn()
        .attention(
            &upload(&q, &[s.batch, s.q_tokens, hd]),
            &upload(&k, &[s.batch, s.k_tokens, hd]),
            &upload(&v, &[s.batch, s.k_tokens, hd]),
            s,
            causal,
        )
        .expect("attention");
    assert_eq!(y.shape(), [s.batch, s.q_tokens, hd]);
    let want = attention_reference(&q, &k, &v, s, causal);
    assert_close(
        &download(&y),
        &want,
        &format!("attention {s:?} causal {causal}"),
    );
}

#[test]
fn attention_causal_two_heads_of_64_over_77_tokens() {
    let s = AttnShape {
        batch: 1,
        heads: 2,
        head_dim: 64,
        q_tokens: 77,
        k_tokens: 77,
    };
    check_attention(s, true, 20);
}

#[test]
fn attention_cross_8_heads_of_40_batch_2() {
    let s = AttnShape {
        batch: 2,
        heads: 8,
        head_dim: 40,
        q_tokens: 13,
        k_tokens: 77,
    };
    check_attention(s, false, 30);
}

#[test]
fn attention_heads_of_160_batch_2() {
    let s = AttnShape {
        batch: 2,
        heads: 2,
        head_dim: 160,
        q_tokens: 35,
        k_tokens: 35,
    };
    check_attention(s, false, 40);
}

fn group_norm_reference(
    x: &[f32],
    (b, c, spatial): (usize, usize, usize),
    groups: usize,
    gamma: &[f32],
    beta: &[f32],
    silu: bool,
) -> Vec<f64> {
    let cpg = c / groups;
    let mut out = vec![0f64; x.len()];
    for n in 0..b {
        for g in 0..groups {
            let base = (n * c + g * cpg) * spatial;
            let set = &x[base..base + cpg * spatial];
            let mean = set.iter().map(|&v| f64::from(v)).sum::<f64>() / set.len() as f64;
            let var = set
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / set.len() as f64;
            for (i, &v) in set.iter().enumerate() {
                let ch = g * cpg + i / spatial;
                let mut y = (f64::from(v) - mean) / (var + 1e-5).sqrt() * f64::from(gamma[ch])
                    + f64::from(beta[ch]);
                if silu {
                    y /= 1.0 + (-y).exp();
                }
                out[base + i] = y;
            }
        }
    }
    out
}

#[test]
fn group_norm_with_and_without_silu() {
    for (b, c, groups, silu, seed) in [
        (1, 64, 32, true, 50),
        (2, 20, 4, false, 60),
        (2, 20, 4, true, 70),
    ] {
        let x: Vec<f32> = random(b * c * 35, seed)
            .iter()
            .map(|v| v * 2.0 + 0.5)
            .collect();
        let gamma = random(c, seed + 1);
        let beta = random(c, seed + 2);
        let y = nn()
            .group_norm(
                &upload(&x, &[b, c, 5, 7]),
                groups,
                &upload(&gamma, &[c]),
                &upload(&beta, &[c]),
                1e-5,
                silu,
            )
            .expect("group norm");
        let want = group_norm_reference(&x, (b, c, 35), groups, &gamma, &beta, silu);
        assert_close(
            &download(&y),
            &want,
            &format!("group norm ({b}, {c}, 5, 7) groups {groups} silu {silu}"),
        );
    }
}

#[test]
fn layer_norm_over_odd_rows() {
    let (rows, dim) = (2 * 13, 36);
    let x: Vec<f32> = random(rows * dim, 80)
        .iter()
        .map(|v| v * 3.0 - 1.0)
        .collect();
    let gamma = random(dim, 81);
    let beta = random(dim, 82);
    let y = nn()
        .layer_norm(
            &upload(&x, &[2, 13, dim]),
            &upload(&gamma, &[dim]),
            &upload(&beta, &[dim]),
            1e-5,
        )
        .expect("layer norm");
    let mut want = vec![0f64; x.len()];
    for r in 0..rows {
        let row = &x[r * dim..(r + 1) * dim];
        let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / dim as f64;
        let var = row
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / dim as f64;
        for d in 0..dim {
            want[r * dim + d] = (f64::from(row[d]) - mean) / (var + 1e-5).sqrt()
                * f64::from(gamma[d])
                + f64::from(beta[d]);
        }
    }
    assert_close(&download(&y), &want, "layer norm (2, 13, 36)");
}

fn gelu(v: f64) -> f64 {
    0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2))
}

fn sigmoid(v: f64) -> f64 {
    1.0 / (1.0 + (-v).exp())
}

#[test]
fn activations_geglu_add_scale() {
    let x: Vec<f32> = random(2 * 13 * 40, 90).iter().map(|v| v * 5.0).collect();
    let xt = upload(&x, &[2, 13, 40]);
    let as64 = |v: &[f32]| v.iter().map(|&v| f64::from(v)).collect::<Vec<_>>();
    for (op, f) in [
        (Unary::Silu, (|v| v * sigmoid(v)) as fn(f64) -> f64),
        (Unary::Gelu, gelu),
        (Unary::QuickGelu, |v| v * sigmoid(1.702 * v)),
    ] {
        let y = nn().unary(&xt, op).expect("unary");
        let want: Vec<f64> = as64(&x).into_iter().map(f).collect();
        assert_close(&download(&y), &want, &format!("{op:?}"));
    }
    let y = nn().geglu(&xt).expect("geglu");
    assert_eq!(y.shape(), [2, 13, 20]);
    let mut want = Vec::new();
    for row in x.chunks_exact(40) {
        for j in 0..20 {
            want.push(f64::from(row[j]) * gelu(f64::from(row[20 + j])));
        }
    }
    assert_close(&download(&y), &want, "geglu (2, 13, 40)");

    let other = random(x.len(), 91);
    let sum = nn().add(&xt, &upload(&other, &[2, 13, 40])).expect("add");
    let want: Vec<f64> = x
        .iter()
        .zip(&other)
        .map(|(&a, &b)| f64::from(a) + f64::from(b))
        .collect();
    assert_close(&download(&sum), &want, "add");
    let scaled = nn().scale(&xt, -0.25).expect("scale");
    let want: Vec<f64> = x.iter().map(|&a| f64::from(a) * -0.25).collect();
    assert_close(&download(&scaled), &want, "scale");
}

#[test]
fn concat_channels_and_repeat_batch() {
    let (b, ca, cb) = (2, 3, 5);
    let a = random(b * ca * 35, 100);
    let c = random(b * cb * 35, 101);
    let y = nn()
        .concat_channels(&upload(&a, &[b, ca, 5, 7]), &upload(&c, &[b, cb, 5, 7]))
        .expect("concat");
    assert_eq!(y.shape(), [b, ca + cb, 5, 7]);
    let mut want: Vec<f32> = Vec::new();
    for n in 0..b {
        want.extend(&a[n * ca * 35..(n + 1) * ca * 35]);
        want.extend(&c[n * cb * 35..(n + 1) * cb * 35]);
    }
    let want: Vec<f64> = want.into_iter().map(f64::from).collect();
    assert_close(
        &download(&y),
        &want,
        "concat_channels 3 + 5 at 5x7, batch 2",
    );

    let r = nn()
        .repeat_batch(&upload(&a, &[b, ca, 5, 7]), 3)
        .expect("repeat");
    assert_eq!(r.shape(), [3 * b, ca, 5, 7]);
    let want: Vec<f64> = a
        .iter()
        .cycle()
        .take(3 * a.len())
        .map(|&v| f64::from(v))
        .collect();
    assert_close(&download(&r), &want, "repeat_batch x3");
}

/// src/model/unet/mod.rs `timestep_embedding`, copied (f32 as there).
fn timestep_reference(
    timestep: f64,
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
) -> Vec<f64> {
    let half = dim / 2;
    let t = timestep as f32;
    let neg_log_period = -(10000f64.ln()) as f32;
    let divisor = (half as f64 - freq_shift) as f32;
    let args: Vec<f32> = (0..half)
        .map(|i| t * ((neg_log_period * i as f32) / divisor).exp())
        .collect();
    let sin = args.iter().map(|a| a.sin());
    let cos = args.iter().map(|a| a.cos());
    let mut values: Vec<f32> = if flip_sin_to_cos {
        cos.chain(sin).collect()
    } else {
        sin.chain(cos).collect()
    };
    values.resize(dim, 0.0);
    values.into_iter().map(f64::from).collect()
}

#[test]
fn timestep_embedding_matches_the_unet() {
    for (t, dim, flip, shift) in [
        (999.0, 320, true, 0.0),
        (1.0, 320, true, 0.0),
        (981.0, 33, false, 1.0),
        (500.5, 256, false, 1.0),
    ] {
        let y = nn()
            .timestep_embedding(t, dim, flip, shift)
            .expect("timestep embedding");
        assert_eq!(y.shape(), [1, dim]);
        let want = timestep_reference(f64::from(t), dim, flip, f64::from(shift));
        assert_close(
            &download(&y),
            &want,
            &format!("timestep embedding t {t} dim {dim} flip {flip} shift {shift}"),
        );
    }
}

#[test]
fn sampler_step_with_and_without_guidance_and_clamp() {
    let shape = [2, 4, 5, 7];
    let len = 2 * 4 * 35;
    let x: Vec<f32> = random(len, 110).iter().map(|v| v * 3.0).collect();
    let xt = upload(&x, &shape);
    let c = dreamwalk::model::schedulers::LinearStep {
        input_scale: 1.0,
        p: 1.3,
        q: -0.7,
        clamp: None,
        alpha: 0.9,
        beta: 0.2,
        gamma: -0.1,
    };
    for (guidance, clamp) in [
        (None, None),
        (Some(7.5), Some(1.0)),
        (Some(3.0), None),
        (None, Some(0.5)),
    ] {
        let c = dreamwalk::model::schedulers::LinearStep { clamp, ..c };
        let out_len = if guidance.is_some() { 2 * len } else { len };
        let model_out = random(out_len, 111);
        let mut out_shape = shape;
        out_shape[0] = out_len / (len / 2);
        let y = nn()
            .sampler_step(&xt, &upload(&model_out, &out_shape), &c, guidance)
            .expect("sampler step");
        let want: Vec<f64> = (0..len)
            .map(|i| {
                let e = match guidance {
                    Some(g) => model_out[i] + g * (model_out[len + i] - model_out[i]),
                    None => model_out[i],
                };
                let mut x0 = c.p * x[i] + c.q * e;
                if let Some(r) = clamp {
                    x0 = x0.clamp(-r, r);
                }
                f64::from(c.alpha * x[i] + c.beta * x0 + c.gamma * e)
            })
            .collect();
        assert_close(
            &download(&y),
            &want,
            &format!("sampler step guidance {guidance:?} clamp {clamp:?}"),
        );
    }
}

#[test]
fn bad_shapes_are_refused_before_any_work() {
    let nn = nn();
    assert!(matches!(
        nn.upload(&[1.0; 5], &[2, 3]),
        Err(GpuError::BadInput(_))
    ));
    let a = upload(&[0.0; 6], &[2, 3]);
    let b = upload(&[0.0; 6], &[3, 2]);
    let err = nn.add(&a, &b).expect_err("add of different shapes");
    assert!(err.to_string().contains("[2, 3]"), "{err}");
    // A view reaching past the tensor's end.
    let err = nn
        .gemm(
            MatView::row_major(&a, 2, 4),
            MatView::row_major(&b, 4, 2),
            GemmDims {
                batch: 1,
                m: 2,
                n: 2,
                k: 4,
            },
            Bias::None,
            None,
            OutSpec {
                shape: vec![2, 2],
                batch_stride: 4,
                row_stride: 2,
                col_stride: 1,
            },
        )
        .expect_err("gemm past the end");
    assert!(matches!(err, GpuError::BadInput(_)), "{err}");
    nn.check().expect("refusals record no device error");
}

#[test]
fn lose_device_makes_download_fail_without_panic() {
    let ctx = gpu_context();
    let nn = Nn::new(ctx.device.clone(), ctx.queue.clone()).expect("Nn");
    let x = nn.upload(&[1.0, -2.0, 3.0], &[3]).expect("upload");
    let y = nn.scale(&x, 2.0).expect("scale");
    assert_eq!(
        nn.download(&y).expect("download before the loss"),
        [2.0, -4.0, 6.0]
    );
    nn.lose_device();
    let err = nn.download(&y).expect_err("download after the loss");
    assert!(matches!(err, GpuError::DeviceLost(_)), "{err}");
    assert!(nn.check().is_err());
    assert!(nn.scale(&x, 2.0).is_err(), "ops after the loss fail too");
    assert!(nn.flush().is_err());
}

#[test]
fn device_destroyed_behind_its_back_fails_cleanly() {
    // Not through lose_device (which records the loss itself): what wgpu reports must do.
    let ctx = gpu_context();
    let nn = Nn::new(ctx.device.clone(), ctx.queue.clone()).expect("Nn");
    let x = nn.upload(&[1.0, -2.0, 3.0], &[3]).expect("upload");
    let y = nn.scale(&x, 2.0).expect("scale");
    ctx.device.destroy();
    let result = nn.scale(&y, 2.0).and_then(|z| nn.download(&z));
    eprintln!("download on a destroyed device: {result:?}");
    assert!(
        result.is_err(),
        "download on a destroyed device: {result:?}"
    );
}

#[test]
fn gemm_several_tiles_partial_k_and_transposed_b() {
    // m, n beyond one 64 x 64 tile, k not a multiple of the 16-wide step, B read transposed
    // (row stride 1), batch strides, Bias::Col and a residual.
    let (batch, m, n, k) = (2, 70, 130, 100);
    let a = random(batch * m * k, 120);
    let bt = random(batch * n * k, 121); // per batch (n, k): B[k][j] = bt[j][k]
    let bias = random(n, 122);
    let residual = random(batch * m * n, 123);
    let (at, btt) = (upload(&a, &[batch, m, k]), upload(&bt, &[batch, n, k]));
    let (biast, rt) = (upload(&bias, &[n]), upload(&residual, &[batch, m, n]));
    let y = nn()
        .gemm(
            MatView::row_major(&at, m, k),
            MatView {
                tensor: &btt,
                offset: 0,
                batch_stride: n * k,
                row_stride: 1,
                col_stride: k,
            },
            GemmDims { batch, m, n, k },
            Bias::Col(&biast),
            Some(MatView::row_major(&rt, m, n)),
            OutSpec {
                shape: vec![batch, m, n],
                batch_stride: m * n,
                row_stride: n,
                col_stride: 1,
            },
        )
        .expect("gemm");
    let mut want = vec![0f64; batch * m * n];
    for b in 0..batch {
        for i in 0..m {
            for j in 0..n {
                want[(b * m + i) * n + j] = f64::from(bias[j])
                    + f64::from(residual[(b * m + i) * n + j])
                    + (0..k)
                        .map(|l| {
                            f64::from(a[(b * m + i) * k + l]) * f64::from(bt[(b * n + j) * k + l])
                        })
                        .sum::<f64>();
            }
        }
    }
    assert_close(&download(&y), &want, "gemm (2, 70, 130, 100), B transposed");
}

#[test]
fn a_wgpu_error_is_recorded_not_a_panic() {
    // A tensor of another device bound into a dispatch: a wgpu validation error, which the
    // default handler would panic on. Two fresh contexts: the error poisons the Nn.
    let (one, other) = (gpu_context(), gpu_context());
    let nn = Nn::new(one.device.clone(), one.queue.clone()).expect("Nn");
    let nn_other = Nn::new(other.device.clone(), other.queue.clone()).expect("other Nn");
    let foreign = nn_other.upload(&[1.0, 2.0], &[2]).expect("upload");
    let result = nn.scale(&foreign, 2.0).and_then(|y| nn.download(&y));
    eprintln!("a foreign tensor: {result:?}");
    assert!(result.is_err(), "a foreign tensor: {result:?}");
    assert!(
        matches!(nn.check(), Err(GpuError::Wgpu(_))),
        "{:?}",
        nn.check()
    );
    // The other context is untouched.
    assert_eq!(nn_other.download(&foreign).expect("download"), [1.0, 2.0]);
}

#[test]
fn nn_and_tensors_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Nn>();
    send_sync::<GpuTensor>();
    let x = upload(&[1.0, 2.0, 3.0], &[3]);
    let y = std::thread::spawn(move || nn().scale(&x, 3.0).expect("scale"))
        .join()
        .expect("thread");
    assert_eq!(download(&y), [3.0, 6.0, 9.0]);
}
