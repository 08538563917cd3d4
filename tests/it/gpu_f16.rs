//! f16 weights on the GPU (`gpu::nn::Precision::F16`, where the device has `SHADER_F16`) and
//! the products compiled without bounds checks (`NnOptions::trusted_products`).
//!
//! Bounds, each stated where it is asserted:
//! - a kernel reading f16 weights against an f64 reference on the same f16-rounded weights:
//!   `KERNEL_TOL`, gpu_nn's bound (f32 sums, a wrong index costs 1e-2 and more);
//! - against the f32 weights: rounding a weight to the nearest f16 changes it by at most
//!   2^-11 of itself (f16's unit roundoff; its significand has 11 bits), so an output
//!   sum_k w_k x_k moves by at most 2^-11 sum_k |w_k x_k|, which is asserted element by
//!   element (plus the f32 kernel tolerance);
//! - the fixture UNet and tiny-sd against diffusers: the tolerances, 1e-3 on
//!   latents and 2/255 on frames, the same as in f32 (`gpu_sample`).
//!
//! These tests need a GPU adapter (lavapipe here, which offers `SHADER_F16`); on an adapter
//! without the feature the f16 kernel tests say so and check nothing else.

use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use dreamwalk::gpu::nn::{
    Bias, Conv3x3Opts, Conv3x3Weights, GemmDims, LinearWeights, MatView, Nn, NnOptions, OutSpec,
    Precision,
};
use dreamwalk::gpu::sample::{GpuSamplerLoader, GpuUNet, SamplePrecision, F16_WITHIN_TOLERANCE};
use dreamwalk::gpu::{GpuContext, GpuDecode, GpuError};
use dreamwalk::model::lora::LoraSet;
use dreamwalk::model::sd::StableDiffusion;
use dreamwalk::model::unet::UNetConfig;
use dreamwalk::model::{Engine, VaeDecoder};
use rand::{Rng, SeedableRng};

use crate::e2e::e2e_request;
use crate::gpu_nn::conv_reference;
use crate::support::fixtures::{fixture, load_tensors, max_abs_diff};
use crate::support::gpu::shared_gpu_context;

/// A kernel against its reference on the same (f16-rounded) weights: gpu_nn's bound.
const KERNEL_TOL: f64 = 1e-4;

/// f16's unit roundoff: |f16(w) - w| <= F16_UNIT |w| for w in f16's normal range.
const F16_UNIT: f64 = 1.0 / 2048.0;

/// The tolerance on latents against diffusers.
const LATENT_TOL: f32 = 1e-3;

/// f16 weights against diffusers, as measured on lavapipe with a margin of about 2 (a wrong
/// index or a missing term in an f16 kernel costs 1e-1 and more): the fixture UNet
/// (measured 2.2e-3) and tiny-sd's two guided 10-step keyframes (3.3e-2 and 4.9e-2:
/// guidance 7.5 amplifies the difference at every step). Both are beyond the 1e-3,
/// which is why `Auto` stays f32.
const F16_UNET_BOUND: f32 = 5e-3;
const F16_KEYFRAME_BOUND: f32 = 0.1;

/// The frames decoded from the f16 keyframes, in u8 levels: the 2/255, which they
/// meet (measured 1/255; a level may flip at a rounding boundary).
const F16_FRAME_LEVELS: f32 = 2.0;

fn offers_f16(ctx: &GpuContext) -> bool {
    let offered = ctx.adapter.features().contains(wgpu::Features::SHADER_F16);
    if !offered {
        eprintln!(
            "{} does not offer SHADER_F16: the f16 kernels are not tested here",
            ctx.adapter_name()
        );
    }
    offered
}

fn nn_with(precision: Precision, trusted_products: bool) -> Nn {
    let ctx = shared_gpu_context();
    Nn::with_options(
        ctx.device.clone(),
        ctx.queue.clone(),
        NnOptions {
            precision,
            trusted_products,
        },
    )
    .expect("Nn on the shared context")
}

/// One f16 `Nn` (default checks) for the kernel tests: pipelines compile slowly on lavapipe.
fn nn_f16() -> &'static Nn {
    static NN: OnceLock<Nn> = OnceLock::new();
    NN.get_or_init(|| nn_with(Precision::F16, NnOptions::default().trusted_products))
}

fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn to_f16(values: &[f32]) -> Vec<f32> {
    values
        .iter()
        .map(|&v| half::f16::from_f32(v).to_f32())
        .collect()
}

/// Max of |got - want| / (1 + |want|), asserted within KERNEL_TOL.
fn assert_kernel_close(got: &[f32], want: &[f64], what: &str) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let err = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (f64::from(g) - w).abs() / (1.0 + w.abs()))
        .fold(0.0, f64::max);
    eprintln!("{what}: against the f16-rounded weights, max relative-ish error {err:.2e}");
    assert!(err <= KERNEL_TOL, "{what}: {err:.3e} > {KERNEL_TOL}");
    err
}

/// Asserts |got - want| <= F16_UNIT * magnitude + KERNEL_TOL (1 + |want|) per element
/// (`magnitude` = sum |w x| of the element's terms); returns the max |got - want|.
fn assert_within_f16_rounding(got: &[f32], want: &[f64], magnitude: &[f64], what: &str) -> f64 {
    let mut worst = 0f64;
    let mut worst_share = 0f64;
    for ((&g, &w), &m) in got.iter().zip(want).zip(magnitude) {
        let diff = (f64::from(g) - w).abs();
        let bound = F16_UNIT * m + KERNEL_TOL * (1.0 + w.abs());
        assert!(
            diff <= bound,
            "{what}: |{g} - {w}| = {diff:.3e} beyond f16 rounding's {bound:.3e}"
        );
        worst = worst.max(diff);
        worst_share = worst_share.max(diff / bound);
    }
    eprintln!(
        "{what}: against the f32 weights, max |diff| {worst:.2e} ({:.0}% of the bound at most)",
        100.0 * worst_share
    );
    worst
}

#[test]
fn the_headless_device_asks_for_shader_f16_when_the_adapter_offers_it() {
    let ctx = shared_gpu_context();
    let offered = ctx.adapter.features().contains(wgpu::Features::SHADER_F16);
    eprintln!("{}: SHADER_F16 offered: {offered}", ctx.adapter_name());
    assert_eq!(
        ctx.device.features().contains(wgpu::Features::SHADER_F16),
        offered
    );
    assert_eq!(
        dreamwalk::gpu::optional_features(&ctx.adapter),
        ctx.adapter.features() & wgpu::Features::SHADER_F16
    );
    // `Auto` takes f16 only where it was measured within the tolerances.
    let auto = match F16_WITHIN_TOLERANCE && offered {
        true => Precision::F16,
        false => Precision::F32,
    };
    assert_eq!(SamplePrecision::Auto.on(&ctx.device), auto);
    assert_eq!(SamplePrecision::F16.on(&ctx.device), Precision::F16);
}

#[test]
fn f16_is_refused_on_a_device_without_shader_f16() {
    let ctx = shared_gpu_context();
    // A device of the same adapter, made without the feature.
    let (device, queue) = pollster::block_on(
        ctx.adapter
            .request_device(&wgpu::DeviceDescriptor::default()),
    )
    .expect("a plain device");
    assert!(!device.features().contains(wgpu::Features::SHADER_F16));
    let options = NnOptions {
        precision: Precision::F16,
        ..NnOptions::default()
    };
    let err = Nn::with_options(device.clone(), queue.clone(), options)
        .err()
        .expect("f16 refused");
    assert!(
        matches!(err, GpuError::Unsupported(_)) && err.to_string().contains("SHADER_F16"),
        "{err}"
    );
    // An f32 context there stores f16 bytes, but a product reading them is refused before
    // any work, and nothing is recorded as failed.
    let nn = Nn::new(device.clone(), queue).expect("f32 Nn");
    let w = nn
        .upload_as(&random(12, 1), &[3, 4], Precision::F16)
        .expect("f16 bytes");
    let x = nn.upload(&random(6, 2), &[2, 3]).expect("x");
    let err = nn
        .gemm(
            MatView::row_major(&x, 2, 3),
            MatView::row_major(&w, 3, 4),
            GemmDims {
                batch: 1,
                m: 2,
                n: 4,
                k: 3,
            },
            Bias::None,
            None,
            OutSpec {
                shape: vec![2, 4],
                batch_stride: 8,
                row_stride: 4,
                col_stride: 1,
            },
        )
        .expect_err("an f16 product without the feature");
    assert!(err.to_string().contains("SHADER_F16"), "{err}");
    nn.check().expect("nothing failed on the device");
    assert_eq!(SamplePrecision::Auto.on(&device), Precision::F32);
    assert_eq!(SamplePrecision::F32.on(&device), Precision::F32);
    assert_eq!(SamplePrecision::F16.on(&device), Precision::F16);

    // The sampler asked for f16 there: the model samples on the CPU and says why.
    let loader = GpuSamplerLoader {
        device: device.clone(),
        queue: nn.queue().clone(),
        adapter: ctx.adapter.get_info(),
        choice: GpuDecode::On,
        precision: SamplePrecision::F16,
    };
    let model = StableDiffusion::load_on(
        fixture("tiny-sd").to_str().unwrap(),
        None,
        &LoraSet::default(),
        Some(&loader),
    )
    .expect("the model loads on the CPU");
    let description = model.sampler_description();
    assert!(
        description.starts_with("sampling on the CPU (") && description.contains("SHADER_F16"),
        "{description}"
    );
}

#[test]
fn f16_packing_rounds_to_nearest_pads_and_reads_back() {
    // Packing needs no shader: any adapter.
    let ctx = shared_gpu_context();
    let nn = Nn::new(ctx.device.clone(), ctx.queue.clone()).expect("Nn");
    let tie = 1.0 + 2f32.powi(-11);
    let values = [
        0.1f32,
        -1.0 / 3.0,
        tie,
        65504.0,
        1e-6,
        -0.0,
        std::f32::consts::PI,
    ];
    let t = nn
        .upload_as(&values, &[7], Precision::F16)
        .expect("f16 upload");
    assert_eq!(t.precision(), Precision::F16);
    let back = nn.download(&t).expect("download");
    assert_eq!(back, to_f16(&values));
    // Ties go to even, the nearest value otherwise.
    assert_eq!(back[2], 1.0);
    assert_eq!(back[0], 0.099_975_586);
    assert_eq!(back[3], 65504.0);
    // 2 bytes a value, the buffer padded to whole 4-byte words.
    let odd = random(1001, 3);
    let t = nn.upload_as(&odd, &[7, 11, 13], Precision::F16).unwrap();
    assert_eq!(t.buffer().size(), 2004);
    let back = nn.download(&t).unwrap();
    let worst = odd
        .iter()
        .zip(&back)
        .filter(|(v, _)| v.abs() >= 6.2e-5) // f16's normal range
        .map(|(&v, &b)| f64::from((b - v).abs() / v.abs()))
        .fold(0.0, f64::max);
    eprintln!("f16 packing: max relative rounding {worst:.3e} (bound 2^-11 = 4.88e-4)");
    assert!(worst <= F16_UNIT, "{worst}");
    // Beyond f16's range: refused, naming the value's index.
    let err = nn
        .upload_as(&[1.0, 1e5], &[2], Precision::F16)
        .expect_err("1e5 is no f16");
    assert!(err.to_string().contains("index 1"), "{err}");
    // Only gemm and conv read f16: an elementwise op refuses it rather than misread it.
    let err = nn.add(&t, &t).expect_err("add of f16");
    assert!(matches!(err, GpuError::BadInput(_)), "{err}");
    nn.check().expect("nothing failed on the device");
    // Weights follow the context's precision.
    assert_eq!(
        nn.upload_weights(&odd, &[1001]).unwrap().precision(),
        Precision::F32
    );
}

/// C[b] = A[b] B[b] + bias in f64, A and B read by (batch, row, col) closures; also the
/// sum of |terms| of each element.
fn gemm_reference(
    dims: GemmDims,
    a: impl Fn(usize, usize, usize) -> f32,
    b: impl Fn(usize, usize, usize) -> f32,
    bias: impl Fn(usize, usize) -> f32,
) -> (Vec<f64>, Vec<f64>) {
    let GemmDims { batch, m, n, k } = dims;
    let mut out = vec![0f64; batch * m * n];
    let mut magnitude = vec![0f64; batch * m * n];
    for bat in 0..batch {
        for i in 0..m {
            for j in 0..n {
                let mut s = f64::from(bias(i, j));
                let mut mag = 0.0;
                for kk in 0..k {
                    let t = f64::from(a(bat, i, kk)) * f64::from(b(bat, kk, j));
                    s += t;
                    mag += t.abs();
                }
                out[(bat * m + i) * n + j] = s;
                magnitude[(bat * m + i) * n + j] = mag;
            }
        }
    }
    (out, magnitude)
}

#[test]
fn gemm_with_f16_weights_matches_the_reference() {
    let ctx = shared_gpu_context();
    if !offers_f16(ctx) {
        return;
    }
    let nn = nn_f16();
    // Beyond one 64 x 64 tile in both directions, K not a multiple of 16, batch 2.
    let (batch, c, o, hw) = (2, 45, 70, 67);
    let x = random(batch * c * hw, 21);
    let weight = random(o * c, 22);
    let bias = random(o, 23);
    let lin = LinearWeights::new(nn, &weight, Some(&bias), o, c).expect("f16 linear");
    assert_eq!(lin.wt.precision(), Precision::F16);
    assert_eq!(lin.bias.as_ref().unwrap().precision(), Precision::F32);
    let xt = nn.upload(&x, &[batch, c, hw]).unwrap();
    let rounded = to_f16(&weight);

    // Weights as A (a 1x1 conv on NCHW: W (O x C) X[b] (C x HW), W[o][c] = wt[c][o]).
    let dims = GemmDims {
        batch,
        m: o,
        n: hw,
        k: c,
    };
    let y = nn
        .gemm(
            MatView {
                tensor: &lin.wt,
                offset: 0,
                batch_stride: 0,
                row_stride: 1,
                col_stride: o,
            },
            MatView::row_major(&xt, c, hw),
            dims,
            Bias::Row(lin.bias.as_ref().unwrap()),
            None,
            OutSpec {
                shape: vec![batch, o, hw],
                batch_stride: o * hw,
                row_stride: hw,
                col_stride: 1,
            },
        )
        .expect("f16 A gemm");
    let got = nn.download(&y).unwrap();
    let xs = |b: usize, kk: usize, j: usize| x[(b * c + kk) * hw + j];
    let (want16, _) = gemm_reference(dims, |_, i, kk| rounded[i * c + kk], xs, |i, _| bias[i]);
    assert_kernel_close(&got, &want16, "gemm, f16 weights as A (1x1 conv 45->70)");
    let (want, mag) = gemm_reference(dims, |_, i, kk| weight[i * c + kk], xs, |i, _| bias[i]);
    assert_within_f16_rounding(&got, &want, &mag, "gemm, f16 weights as A");

    // Weights as B (a linear layer on tokens read from NCHW).
    let dims = GemmDims {
        batch,
        m: hw,
        n: o,
        k: c,
    };
    let y = nn
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
            dims,
            Bias::Col(lin.bias.as_ref().unwrap()),
            None,
            OutSpec {
                shape: vec![batch, hw, o],
                batch_stride: hw * o,
                row_stride: o,
                col_stride: 1,
            },
        )
        .expect("f16 B gemm");
    let got = nn.download(&y).unwrap();
    let tokens = |b: usize, i: usize, kk: usize| x[(b * c + kk) * hw + i];
    let (want16, _) = gemm_reference(dims, tokens, |_, kk, j| rounded[j * c + kk], |_, j| bias[j]);
    assert_kernel_close(&got, &want16, "gemm, f16 weights as B (tokens x W^T)");
    let (want, mag) = gemm_reference(dims, tokens, |_, kk, j| weight[j * c + kk], |_, j| bias[j]);
    assert_within_f16_rounding(&got, &want, &mag, "gemm, f16 weights as B");

    // `linear` picks the f16 variant itself.
    let rows = nn.upload(&random(3 * c, 24), &[3, c]).unwrap();
    let y = nn.linear(&rows, &lin, None).expect("f16 linear");
    assert_eq!(y.shape(), &[3, o]);
    assert_eq!(y.precision(), Precision::F32);
}

#[test]
fn conv3x3_with_f16_weights_matches_the_reference() {
    let ctx = shared_gpu_context();
    if !offers_f16(ctx) {
        return;
    }
    let nn = nn_f16();
    let (b, cin, cout, h, w) = (2, 13, 70, 9, 11);
    let x = random(b * cin * h * w, 31);
    let weight = random(cout * cin * 9, 32);
    let bias = random(cout, 33);
    let conv = Conv3x3Weights::new(nn, &weight, Some(&bias), cout, cin).expect("f16 conv");
    let xt = nn.upload(&x, &[b, cin, h, w]).unwrap();
    let rounded = to_f16(&weight);
    let abs_weight: Vec<f32> = weight.iter().map(|v| v.abs()).collect();
    let abs_x: Vec<f32> = x.iter().map(|v| v.abs()).collect();
    let no_bias = vec![0f32; cout];
    for (stride, pad, up) in [
        (1, (1, 1), None),
        (2, (0, 1), None),
        (1, (1, 1), Some((14, 17))),
    ] {
        let opts = Conv3x3Opts {
            stride,
            pad,
            upsample_to: up,
            ..Default::default()
        };
        let y = nn.conv3x3(&xt, &conv, &opts).expect("conv");
        let got = nn.download(&y).unwrap();
        let what = format!("conv3x3 13->70 {h}x{w}, stride {stride}, pad {pad:?}, resize {up:?}");
        let reference = |weights: &[f32], xs: &[f32], bias: &[f32]| {
            conv_reference(
                xs,
                (b, cin, h, w),
                weights,
                bias,
                cout,
                stride,
                pad,
                up,
                None,
                None,
                1.0,
            )
        };
        let (want16, shape) = reference(&rounded, &x, &bias);
        assert_eq!(y.shape(), shape);
        assert_kernel_close(&got, &want16, &what);
        let (want, _) = reference(&weight, &x, &bias);
        // sum |w x| per output: the same convolution of |w| and |x|, without bias.
        let (magnitude, _) = reference(&abs_weight, &abs_x, &no_bias);
        assert_within_f16_rounding(&got, &want, &magnitude, &what);
    }
}

/// Downloads of the same products from a trusted and a checked context: bit for bit equal.
fn same_bits(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: length");
    let differ = a
        .iter()
        .zip(b)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count();
    assert_eq!(
        differ, 0,
        "{what}: {differ} values differ with bounds checks off"
    );
}

/// The products at awkward shapes (partial tiles, an offset view, a transposed A, a strided
/// residual, stride 2, resize, extra bias) in one context.
fn awkward_products(nn: &Nn) -> Vec<(String, Vec<f32>)> {
    let mut out = Vec::new();
    let (batch, m, n, k) = (2, 37, 70, 19);
    let a = nn
        .upload(&random(5 + batch * k * m, 41), &[5 + batch * k * m])
        .unwrap();
    let w = LinearWeights::new(nn, &random(n * k, 42), Some(&random(n, 43)), n, k).unwrap();
    let r = nn
        .upload(&random(batch * m * n, 44), &[batch, n, m])
        .unwrap();
    let y = nn
        .gemm(
            // A transposed and offset: A[b][i][kk] = a[5 + b*k*m + kk*m + i].
            MatView {
                tensor: &a,
                offset: 5,
                batch_stride: k * m,
                row_stride: 1,
                col_stride: m,
            },
            MatView {
                tensor: &w.wt,
                offset: 0,
                batch_stride: 0,
                row_stride: n,
                col_stride: 1,
            },
            GemmDims { batch, m, n, k },
            Bias::Col(w.bias.as_ref().unwrap()),
            Some(MatView {
                tensor: &r,
                offset: 0,
                batch_stride: m * n,
                row_stride: 1,
                col_stride: m,
            }),
            OutSpec {
                shape: vec![batch, n, m],
                batch_stride: m * n,
                row_stride: 1,
                col_stride: m,
            },
        )
        .expect("gemm");
    out.push(("gemm".to_string(), nn.download(&y).unwrap()));
    let (b, cin, cout, h, wd) = (2, 5, 67, 7, 9);
    let conv = Conv3x3Weights::new(
        nn,
        &random(cout * cin * 9, 45),
        Some(&random(cout, 46)),
        cout,
        cin,
    )
    .unwrap();
    let x = nn
        .upload(&random(b * cin * h * wd, 47), &[b, cin, h, wd])
        .unwrap();
    let extra = nn.upload(&random(b * cout, 48), &[b, cout]).unwrap();
    for (stride, pad, up) in [(2, (0, 1), None), (1, (1, 1), Some((13, 10)))] {
        let y = nn
            .conv3x3(
                &x,
                &conv,
                &Conv3x3Opts {
                    stride,
                    pad,
                    upsample_to: up,
                    extra_bias: Some(&extra),
                    ..Default::default()
                },
            )
            .expect("conv");
        out.push((
            format!("conv stride {stride} resize {up:?}"),
            nn.download(&y).unwrap(),
        ));
    }
    out
}

#[test]
fn products_without_bounds_checks_give_the_same_bits() {
    let ctx = shared_gpu_context();
    let mut precisions = vec![Precision::F32];
    if offers_f16(ctx) {
        precisions.push(Precision::F16);
    }
    for precision in precisions {
        let checked = awkward_products(&nn_with(precision, false));
        let trusted = awkward_products(&nn_with(precision, true));
        for ((what, a), (_, b)) in checked.iter().zip(&trusted) {
            same_bits(a, b, &format!("{what} ({precision:?})"));
        }
    }
}

fn scalar(t: &Tensor) -> f64 {
    f64::from(t.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0])
}

#[test]
fn fixture_unet_with_f16_weights_stays_near_diffusers() {
    let ctx = shared_gpu_context();
    if !offers_f16(ctx) {
        return;
    }
    let nn = nn_f16();
    let case = load_tensors("unet/case.safetensors");
    let config: UNetConfig =
        dreamwalk::model::weights::read_config(&fixture("unet/config.json")).unwrap();
    let vb = dreamwalk::model::weights::mmap_var_builder(
        &[fixture("unet/model.safetensors")],
        &Device::Cpu,
    )
    .unwrap();
    let unet = GpuUNet::load(nn, &vb, &config).unwrap();
    let upload = |t: &Tensor| {
        nn.upload(
            &t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            t.dims(),
        )
        .unwrap()
    };
    let sample = upload(&case["sample"]);
    let context = upload(&case["encoder_hidden_states"]);
    let out = unet
        .forward(nn, &sample, scalar(&case["timestep"]), &context)
        .unwrap();
    let values = nn.download(&out).unwrap();
    let out = Tensor::from_vec(values, out.shape(), &Device::Cpu).unwrap();
    let diff = max_abs_diff(&out, &case["out"]);
    eprintln!("unet/case with f16 weights: max |diff| {diff:.3e} against diffusers");
    // Whether f16 meets the tolerance decides what `Auto` picks: the constant must
    // say what is measured here.
    assert_eq!(
        F16_WITHIN_TOLERANCE,
        diff <= LATENT_TOL,
        "F16_WITHIN_TOLERANCE disagrees with the measured {diff:.3e}"
    );
    // f16 weights: each rounded by up to 2^-11 of itself, through every layer.
    assert!(
        diff <= F16_UNET_BOUND,
        "f16 UNet max |diff| {diff} > {F16_UNET_BOUND}"
    );
}

/// `(x / 2 + 0.5).clamp(0, 1)` as NHWC, rounded to u8 levels as a viewer shows it.
fn u8_levels(image: &Tensor) -> Vec<f32> {
    ((image / 2.0).unwrap() + 0.5)
        .unwrap()
        .clamp(0f32, 1f32)
        .unwrap()
        .permute((0, 2, 3, 1))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| (v * 255.0).round())
        .collect()
}

#[test]
fn tiny_sd_keyframes_with_f16_weights_stay_near_the_pipeline() {
    let ctx = shared_gpu_context();
    if !offers_f16(ctx) {
        return;
    }
    let loader = GpuSamplerLoader {
        device: ctx.device.clone(),
        queue: ctx.queue.clone(),
        adapter: ctx.adapter.get_info(),
        choice: GpuDecode::On,
        precision: SamplePrecision::F16,
    };
    let model = StableDiffusion::load_on(
        fixture("tiny-sd").to_str().unwrap(),
        None,
        &LoraSet::default(),
        Some(&loader),
    )
    .unwrap();
    let description = model.sampler_description();
    assert_eq!(
        description,
        format!("sampling on {}, f16", ctx.adapter_name()),
        "the display says f16"
    );
    let case = load_tensors("e2e/case.safetensors");
    let latents = model.endpoints(&e2e_request(), &mut |_| true).unwrap();
    let vae = VaeDecoder::load(&fixture("tiny-sd/vae"), &Device::Cpu).unwrap();
    let (mut worst_latent, mut worst_level) = (0f32, 0f32);
    for ((ours, name), image) in latents
        .iter()
        .zip(["final_latents_a", "final_latents_b"])
        .zip(["image_a", "image_b"])
    {
        let diff = max_abs_diff(ours, &case[name]);
        // The frame, decoded by the CPU VAE, against diffusers' image in u8 levels.
        let frame = u8_levels(&vae.decode(ours).unwrap());
        let reference: Vec<f32> = case[image]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|v| (v * 255.0).round())
            .collect();
        let levels = frame
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!(
            "{name} with f16 weights: max |diff| {diff:.3e}; {image} decoded from them: max \
             {levels}/255"
        );
        worst_latent = worst_latent.max(diff);
        worst_level = worst_level.max(levels);
    }
    assert_eq!(model.sampler_description(), description, "nothing failed");
    // `Auto`'s f16 needs the keyframes within the tolerances too.
    if F16_WITHIN_TOLERANCE {
        assert!(worst_latent <= LATENT_TOL, "latents: {worst_latent}");
        assert!(worst_level <= 2.0, "frames: {worst_level}/255");
    }
    // Guidance 7.5 over every step amplifies the UNet's f16 difference.
    assert!(
        worst_latent <= F16_KEYFRAME_BOUND,
        "latents: {worst_latent} > {F16_KEYFRAME_BOUND}"
    );
    assert!(
        worst_level <= F16_FRAME_LEVELS,
        "frames: {worst_level}/255 > {F16_FRAME_LEVELS}/255"
    );
}
