//! The UNet's fast paths at shapes the tiny fixtures never reach (heads of 64, several
//! heads, odd token counts, keys in several blocks, non-square images, batch 2, stride 2,
//! wide channels), each against a straightforward reference computed here with candle ops,
//! so the kernels cannot silently differ at full size.

use candle_core::{Tensor, D};
use dreamwalk::model::kernels;

use crate::support::fixtures::{max_abs_diff, random};

/// Plain multi-head attention: split heads, softmax(q k^T / sqrt(d)) v, merge heads.
fn reference_attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Tensor {
    let (b, tq, inner) = q.dims3().unwrap();
    let tk = k.dim(1).unwrap();
    let d = inner / heads;
    let split = |x: &Tensor, t: usize| {
        x.reshape((b, t, heads, d))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
    };
    let (q, k, v) = (split(q, tq), split(k, tk), split(v, tk));
    let scores = (q.matmul(&k.t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
    let probs = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
    probs
        .matmul(&v)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((b, tq, inner))
        .unwrap()
}

#[test]
fn online_softmax_attention_matches_plain_attention() {
    // (batch, heads, head_dim, query tokens, key tokens, score scale):
    // SD 2's 64-wide heads with self-attention over 333 tokens (keys in two blocks, the
    // second partial; query blocks of 64 and a remainder); SD 1.5's 8 heads of 40 with
    // cross-attention to 77 tokens; one head over 600 keys with large scores, so later key
    // blocks raise the running maximum and the rescaling is exercised.
    for (batch, heads, d, tq, tk, spread) in [
        (2, 5, 64, 333, 333, 1.0),
        (2, 8, 40, 150, 77, 1.0),
        (1, 1, 64, 70, 600, 4.0),
        (1, 3, 8, 1, 1, 1.0),
    ] {
        let inner = heads * d;
        let q = random(&[batch, tq, inner], 21, spread, 0.0);
        let k = random(&[batch, tk, inner], 22, spread, 0.0);
        let v = random(&[batch, tk, inner], 23, 1.0, 0.0);
        let got = kernels::attention_heads(&q, &k, &v, heads).unwrap();
        let want = reference_attention(&q, &k, &v, heads);
        let diff = max_abs_diff(&got, &want);
        // Weighted means of O(1) values in f32, the exponentials by a ~2 ulp SIMD exp and
        // the sums grouped by blocks: ~1e-7 per value.
        println!("attention b{batch} h{heads} d{d} {tq}x{tk}: max diff {diff:e}");
        assert!(
            diff < 2e-5,
            "b{batch} h{heads} d{d} {tq}x{tk}: max diff {diff}"
        );
    }
}

#[test]
fn attention_heads_rejects_mismatched_shapes() {
    let q = random(&[1, 4, 12], 1, 1.0, 0.0);
    let k = random(&[1, 5, 12], 2, 1.0, 0.0);
    let err = kernels::attention_heads(&q, &k, &k, 5).unwrap_err();
    assert!(err.to_string().contains("5 heads"), "{err}");
}

#[test]
fn unet_convolutions_match_candle_conv2d() {
    // (batch, cin, cout, h, w, stride, padding (before, after), upsample, winograd):
    // the nine-product path at stride 1 and 2, with diffusers' right/bottom-only padding,
    // on odd non-square sizes, wide channels, batch 2; the Winograd path on a non-square
    // up-sampled input.
    for (n, cin, cout, h, w, stride, pad, up, winograd) in [
        (2, 24, 40, 13, 22, 1, (1, 1), 1, false),
        (2, 320, 320, 9, 14, 2, (1, 1), 1, false),
        (1, 64, 64, 9, 14, 2, (0, 1), 1, false),
        (1, 1280, 640, 4, 6, 1, (1, 1), 1, false),
        (2, 40, 24, 6, 11, 1, (1, 1), 2, true),
        (1, 4, 320, 18, 32, 1, (1, 1), 1, true),
    ] {
        let x = random(&[n, cin, h, w], 31, 1.0, 0.0);
        let weight = random(&[cout, cin, 3, 3], 32, (1.0 / (9 * cin) as f64).sqrt(), 0.0);
        let bias = random(&[cout], 33, 0.1, 0.0);
        let got = kernels::conv3x3_strided(&x, &weight, Some(&bias), (stride, pad), up, winograd)
            .unwrap();
        let upsampled = x.upsample_nearest2d(h * up, w * up).unwrap();
        let padded = upsampled
            .pad_with_zeros(D::Minus1, pad.0, pad.1)
            .unwrap()
            .pad_with_zeros(D::Minus2, pad.0, pad.1)
            .unwrap();
        let want = padded
            .conv2d(&weight, 0, stride, 1, 1)
            .unwrap()
            .broadcast_add(&bias.reshape((1, cout, 1, 1)).unwrap())
            .unwrap();
        assert_eq!(got.dims(), want.dims(), "{cin}->{cout} stride {stride}");
        let diff = max_abs_diff(&got, &want);
        // Outputs are O(1): sums of 9 * cin products in another order (~1e-6), Winograd's
        // transforms add ~1e-5 of the largest output.
        println!(
            "conv {cin}->{cout} {h}x{w} s{stride} pad {pad:?} x{up} winograd {winograd}: {diff:e}"
        );
        assert!(
            diff < 5e-5,
            "{cin}->{cout} stride {stride}: max diff {diff}"
        );
    }
}

#[test]
fn conv3x3_strided_rejects_winograd_at_stride_2() {
    let x = random(&[1, 8, 4, 4], 1, 1.0, 0.0);
    let weight = random(&[8, 8, 3, 3], 2, 0.1, 0.0);
    assert!(kernels::conv3x3_strided(&x, &weight, None, (2, (1, 1)), 1, true).is_err());
}
