//! Winograd against a direct convolution, and every plan against every other.

use super::plan::Plan;
use super::run::run;
use super::winograd::TILE;
use super::{CompactConv3x3, Conv3x3, Sink};
use crate::model::kernels::layout::{padded, Act};

/// Direct convolution, f64 accumulation, on NHWC data.
fn direct(
    input: &Act,
    up: usize,
    weight: &[f32],
    bias: &[f32],
    cout: usize,
    cin: usize,
) -> Vec<f64> {
    let (h, w) = (input.h * up, input.w * up);
    let mut out = vec![0f64; input.n * h * w * cout];
    for b in 0..input.n {
        for y in 0..h {
            for x in 0..w {
                for co in 0..cout {
                    let mut s = f64::from(bias[co]);
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (yy, xx) = ((y + ky).wrapping_sub(1), (x + kx).wrapping_sub(1));
                            if yy >= h || xx >= w {
                                continue;
                            }
                            let pix = ((b * input.h + yy / up) * input.w + xx / up) * input.c;
                            for ci in 0..cin {
                                s += f64::from(input.data[pix + ci])
                                    * f64::from(weight[((co * cin + ci) * 3 + ky) * 3 + kx]);
                            }
                        }
                    }
                    out[((b * h + y) * w + x) * cout + co] = s;
                }
            }
        }
    }
    out
}

fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

#[test]
fn winograd_matches_direct_convolution() {
    // Odd sizes (partial tiles), channel counts that are not multiples of 8 or 16,
    // batch 2, with and without upsampling.
    for &(n, h, w, cin, cout, up) in &[
        (2, 5, 7, 3, 5, 1),
        (1, 9, 6, 16, 24, 1),
        (1, 3, 5, 8, 8, 2),
        (2, 7, 13, 13, 40, 1),
    ] {
        let nchw = pseudo_random(n * cin * h * w, 1);
        let input = Act::from_nchw(Vec::new(), &nchw, (n, cin, h, w), |x| x);
        let weight = pseudo_random(cout * cin * 9, 2);
        let bias = pseudo_random(cout, 3);
        let conv = Conv3x3::new(&weight, Some(&bias), cout, cin);
        let mut out = Act::reuse(Vec::new(), n, h * up, w * up, padded(cout));
        conv.forward(
            &input,
            up,
            Sink::Act {
                out: &mut out,
                skip: None,
                relu: false,
            },
        );
        let expected = direct(&input, up, &weight, &bias, cout, cin);
        let cp = padded(cout);
        let mut worst = 0f64;
        let scale = expected.iter().fold(1f64, |m, v| m.max(v.abs()));
        for pix in 0..n * h * up * w * up {
            for co in 0..cp {
                let got = f64::from(out.data[pix * cp + co]);
                let want = if co < cout {
                    expected[pix * cout + co]
                } else {
                    0.0
                };
                worst = worst.max((got - want).abs());
            }
        }
        // Winograd F(4x4, 3x3) in f32 stays within a few 1e-6 of the largest output
        // (its transforms scale values by up to ~100 before cancelling).
        let case = (n, h, w, cin, cout, up);
        eprintln!("{case:?}: max diff {worst:.3e}, largest value {scale:.2}");
        assert!(
            worst < 1e-5 * scale,
            "case {case:?}: max diff {worst}, scale {scale}"
        );
    }
}

/// Runs `conv` on `input` with `plan` into a fresh activation.
fn with_plan(conv: &Conv3x3, plan: Plan, input: &Act, up: usize) -> Act {
    let mut out = Act::reuse(
        Vec::new(),
        input.n,
        input.h * up,
        input.w * up,
        conv.channels.cout_p,
    );
    let sink = Sink::Act {
        out: &mut out,
        skip: None,
        relu: false,
    };
    run(&conv.channels.packed(&conv.u), plan, input, up, sink);
    out
}

#[test]
fn every_plan_gives_the_same_bits() {
    // Multi-row bands, chunks that split rows, input-channel blocks: each tile's sums
    // run in the same order, so the results must not differ in any bit.
    let (n, h, w, cin, cout) = (2, 9, 11, 40, 24);
    let nchw = pseudo_random(n * cin * h * w, 4);
    let input = Act::from_nchw(Vec::new(), &nchw, (n, cin, h, w), |x| x);
    let weight = pseudo_random(cout * cin * 9, 5);
    let bias = pseudo_random(cout, 6);
    let conv = Conv3x3::new(&weight, Some(&bias), cout, cin);
    for up in [1, 2] {
        let tiles = ((h * up).div_ceil(TILE), (w * up).div_ceil(TILE));
        let reference = with_plan(
            &conv,
            Plan::narrow(conv.channels.cin_p, tiles.0),
            &input,
            up,
        );
        for plan in [
            Plan {
                bands: 2,
                chunk: 6,
                k_block: 8,
            },
            Plan {
                bands: 3,
                chunk: 36,
                k_block: 16,
            },
            Plan {
                bands: 1,
                chunk: 96,
                k_block: 24,
            },
            Plan::wide(conv.channels.cin_p, tiles.0, tiles.1, n),
        ] {
            let out = with_plan(&conv, plan, &input, up);
            assert!(out.data == reference.data, "plan {plan:?}, upsample {up}");
        }
    }
}

#[test]
fn compact_conv_matches_conv3x3_and_adds_in_place() {
    let (n, h, w, cin, cout) = (1, 13, 7, 19, 21);
    let nchw = pseudo_random(n * cin * h * w, 7);
    let input = Act::from_nchw(Vec::new(), &nchw, (n, cin, h, w), |x| x);
    let weight = pseudo_random(cout * cin * 9, 8);
    let bias = pseudo_random(cout, 9);
    let direct_out = direct(&input, 1, &weight, &bias, cout, cin);
    let residual = pseudo_random(n * cout * h * w, 10);
    let compact = CompactConv3x3::new(&weight, Some(&bias), cout, cin);
    let mut u = vec![f32::NAN; 3]; // stale scratch contents must not leak in
    let mut out = Act::from_nchw(Vec::new(), &residual, (n, cout, h, w), |x| x);
    compact.forward(&input, 1, Sink::AddTo { out: &mut out }, &mut u);
    let mut planes = vec![0f32; n * cout * h * w];
    compact.forward(&input, 1, Sink::Planes { out: &mut planes }, &mut u);
    let cp = padded(cout);
    for pix in 0..h * w {
        for co in 0..cp {
            let got = out.data[pix * cp + co];
            if co >= cout {
                assert_eq!(got, 0.0, "padded channel");
                continue;
            }
            let conv = direct_out[pix * cout + co];
            let want = conv + f64::from(residual[co * h * w + pix]);
            assert!((f64::from(got) - want).abs() < 1e-4, "AddTo at {pix}/{co}");
            let plane = f64::from(planes[co * h * w + pix]);
            assert!((plane - conv).abs() < 1e-4, "Planes at {pix}/{co}");
        }
    }
}
