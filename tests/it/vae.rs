//! The AutoencoderKL decoder against diffusers (fixtures `vae_kl/`, `tiny-sd/vae/`, `e2e/`),
//! its loading errors, and its NHWC kernels against plain references.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, IndexOp, Tensor};
use dreamwalk::model::{kernels, weights, AutoencoderKlConfig, VaeDecoder};

use crate::support::fixtures::{fixture, load_tensors, max_abs_diff, random};

#[test]
fn decode_raw_matches_diffusers() {
    let dir = fixture("vae_kl");
    let vae = VaeDecoder::load(&dir, &Device::Cpu).unwrap();
    assert_eq!(vae.upscale_factor(), 2);
    let case = load_tensors("vae_kl/case.safetensors");
    let image = vae.decode_raw(&case["latents"]).unwrap();
    // Bound 1e-4: README section 2 puts float32 at 1.6e-6 from float64; candle's blocks sum
    // in another order, so allow some margin over that noise floor.
    let diff = max_abs_diff(&image, &case["image"]);
    println!("vae_kl decode max diff {diff:e}");
    assert!(diff <= 1e-4, "max diff {diff}");
}

#[test]
fn new_from_var_builder_matches_load() {
    let dir = fixture("vae_kl");
    let cfg: AutoencoderKlConfig = weights::read_config(&dir.join("config.json")).unwrap();
    let vb = weights::mmap_var_builder(&[dir.join("model.safetensors")], &Device::Cpu).unwrap();
    let vae = VaeDecoder::new(vb, &cfg).unwrap();
    let case = load_tensors("vae_kl/case.safetensors");
    let image = vae.decode_raw(&case["latents"]).unwrap();
    assert!(max_abs_diff(&image, &case["image"]) <= 1e-4);
}

/// `(x / 2 + 0.5).clamp(0, 1)` as NHWC, the pipeline's image post-processing.
fn to_unit_nhwc(image: &Tensor) -> Tensor {
    ((image / 2.0).unwrap() + 0.5)
        .unwrap()
        .clamp(0f32, 1f32)
        .unwrap()
        .permute((0, 2, 3, 1))
        .unwrap()
}

#[test]
fn decode_tiny_sd_latents_like_the_pipeline() {
    let vae = VaeDecoder::load(&fixture("tiny-sd/vae"), &Device::Cpu).unwrap();
    let case = load_tensors("e2e/case.safetensors");
    for (latents, expected) in [
        ("final_latents_a", "image_a"),
        ("final_latents_b", "image_b"),
    ] {
        let image = to_unit_nhwc(&vae.decode(&case[latents]).unwrap());
        // Bound 1e-4 on [0, 1] values (decoder noise floor ~2e-6, see vae_kl).
        let diff = max_abs_diff(&image, &case[expected]);
        println!("{expected}: max diff {diff:e}");
        assert!(diff <= 1e-4, "{expected}: max diff {diff}");
        // After rounding to u8 as a viewer shows it: within 2/255 (a value at a rounding
        // boundary may flip by one level).
        let to_u8 = |t: &Tensor| {
            (t * 255.0)
                .unwrap()
                .round()
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let worst = to_u8(&image)
            .iter()
            .zip(to_u8(&case[expected]))
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst <= 2.0, "{expected}: u8 levels differ by {worst}");
    }
    // A batch of two decodes each row as alone.
    let batch = Tensor::cat(&[&case["final_latents_a"], &case["final_latents_b"]], 0).unwrap();
    let images = to_unit_nhwc(&vae.decode(&batch).unwrap());
    let d0 = max_abs_diff(&images.i(0..1).unwrap(), &case["image_a"]);
    let d1 = max_abs_diff(&images.i(1..2).unwrap(), &case["image_b"]);
    println!("batch of 2: max diffs {d0:e} {d1:e}");
    assert!(d0 <= 1e-4 && d1 <= 1e-4);
}

/// A copy of the `vae_kl` folder in a temp dir, with `config.json` and the weights as given.
fn temp_vae(
    config: &str,
    tensors: Option<&HashMap<String, Tensor>>,
    raw: Option<&[u8]>,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    let weights = dir.path().join("diffusion_pytorch_model.safetensors");
    if let Some(tensors) = tensors {
        candle_core::safetensors::save(tensors, &weights).unwrap();
    }
    if let Some(bytes) = raw {
        std::fs::write(&weights, bytes).unwrap();
    }
    dir
}

fn config_text() -> String {
    std::fs::read_to_string(fixture("vae_kl/config.json")).unwrap()
}

fn all_weights() -> HashMap<String, Tensor> {
    load_tensors("vae_kl/model.safetensors")
}

fn load_err(dir: &Path) -> String {
    VaeDecoder::load(dir, &Device::Cpu).unwrap_err().to_string()
}

#[test]
fn missing_config_key_names_file_and_key() {
    let mut config: serde_json::Value = serde_json::from_str(&config_text()).unwrap();
    config.as_object_mut().unwrap().remove("block_out_channels");
    let dir = temp_vae(&config.to_string(), Some(&all_weights()), None);
    let err = load_err(dir.path());
    println!("{err}");
    assert!(
        err.contains("config.json") && err.contains("block_out_channels"),
        "{err}"
    );
}

#[test]
fn unsupported_config_names_file_and_key() {
    let mut config: serde_json::Value = serde_json::from_str(&config_text()).unwrap();
    config["mid_block_add_attention"] = serde_json::Value::Bool(false);
    let dir = temp_vae(&config.to_string(), Some(&all_weights()), None);
    let err = load_err(dir.path());
    println!("{err}");
    assert!(
        err.contains("config.json") && err.contains("mid_block_add_attention"),
        "{err}"
    );
}

#[test]
fn truncated_weights_name_the_file() {
    let bytes = std::fs::read(fixture("vae_kl/model.safetensors")).unwrap();
    let dir = temp_vae(&config_text(), None, Some(&bytes[..bytes.len() / 2]));
    let err = load_err(dir.path());
    println!("{err}");
    assert!(err.contains("diffusion_pytorch_model.safetensors"), "{err}");
}

#[test]
fn missing_tensor_names_the_file_and_tensor() {
    let mut tensors = all_weights();
    tensors
        .remove("decoder.up_blocks.1.resnets.0.conv_shortcut.weight")
        .unwrap();
    let dir = temp_vae(&config_text(), Some(&tensors), None);
    let err = load_err(dir.path());
    println!("{err}");
    assert!(
        err.contains("diffusion_pytorch_model.safetensors") && err.contains("conv_shortcut"),
        "{err}"
    );
}

#[test]
fn decoder_only_weights_suffice() {
    // The encoder is never read: a file with only decoder + post_quant_conv loads.
    let tensors: HashMap<String, Tensor> = all_weights()
        .into_iter()
        .filter(|(k, _)| k.starts_with("decoder.") || k.starts_with("post_quant_conv."))
        .collect();
    let dir = temp_vae(&config_text(), Some(&tensors), None);
    assert!(VaeDecoder::load(dir.path(), &Device::Cpu).is_ok());
}

fn to_f64(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

/// GroupNorm (+ SiLU) in f64, straight from the definition.
fn naive_group_norm(
    x: &Tensor,
    gamma: &[f64],
    beta: &[f64],
    groups: usize,
    silu: bool,
) -> Vec<f64> {
    let (n, c, h, w) = x.dims4().unwrap();
    let values = to_f64(x);
    let mut out = vec![0f64; values.len()];
    let (per_group, plane) = (c / groups, h * w);
    for b in 0..n {
        for g in 0..groups {
            let start = (b * c + g * per_group) * plane;
            let group = &values[start..start + per_group * plane];
            let mean = group.iter().sum::<f64>() / group.len() as f64;
            let var = group.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / group.len() as f64;
            for (i, v) in group.iter().enumerate() {
                let ch = g * per_group + i / plane;
                let y = (v - mean) / (var + 1e-6).sqrt() * gamma[ch] + beta[ch];
                out[start + i] = if silu { y / (1.0 + (-y).exp()) } else { y };
            }
        }
    }
    out
}

#[test]
fn group_norm_silu_matches_the_definition() {
    // SD's 32 groups of 16 channels; 12 channels in 4 groups (not a multiple of 8: padded
    // lanes); a mean far from zero (the variance must not lose digits); batch 2; SiLU on
    // and off.
    for (shape, groups, offset, silu) in [
        ([1, 512, 9, 7], 32, 0.0, true),
        ([2, 12, 5, 11], 4, 0.0, true),
        ([1, 64, 33, 17], 32, 300.0, false),
        ([1, 64, 33, 17], 8, -20.0, true),
    ] {
        let c = shape[1];
        let x = random(&shape, 1, 2.0, offset);
        let gamma = random(&[c], 2, 0.5, 1.0);
        let beta = random(&[c], 3, 0.5, 0.0);
        let got = kernels::group_norm(&x, &gamma, &beta, groups, 1e-6, silu).unwrap();
        let want = naive_group_norm(&x, &to_f64(&gamma), &to_f64(&beta), groups, silu);
        let worst = to_f64(&got)
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f64, f64::max);
        // Outputs are O(1..5); f32 rounding of the normalised values and the SIMD exp
        // (~2 ulp) stay far below 1e-5.
        println!("group norm {shape:?} offset {offset}: max diff {worst:e}");
        assert!(worst < 1e-5, "{shape:?}: max diff {worst}");
    }
}

#[test]
fn group_norm_rejects_bad_groups() {
    let x = random(&[1, 12, 2, 2], 1, 1.0, 0.0);
    let ones = Tensor::ones(12, candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = kernels::group_norm(&x, &ones, &ones, 5, 1e-6, true).unwrap_err();
    assert!(err.to_string().contains("5 groups"), "{err}");
}

#[test]
fn residual_conv3x3_matches_candle_conv2d() {
    // Upsampled input (the decoder's upsamplers), a residual added in place (its resnets),
    // channel counts that are not multiples of 8 or 16, wide layers (k-blocked sums).
    for (n, cin, cout, h, w, up, residual) in [
        (1, 20, 12, 10, 13, 2, true),
        (2, 4, 40, 7, 5, 1, false),
        (1, 256, 136, 9, 22, 1, true),
        (1, 8, 3, 16, 16, 1, false),
    ] {
        let x = random(&[n, cin, h, w], 4, 1.0, 0.0);
        let weight = random(&[cout, cin, 3, 3], 5, (1.0 / (9 * cin) as f64).sqrt(), 0.0);
        let bias = random(&[cout], 6, 0.1, 0.0);
        let (oh, ow) = (h * up, w * up);
        let skip = random(&[n, cout, oh, ow], 7, 1.0, 0.0);
        let got =
            kernels::conv3x3(&x, &weight, Some(&bias), up, residual.then_some(&skip)).unwrap();
        let upsampled = x.upsample_nearest2d(oh, ow).unwrap();
        let conv = upsampled
            .conv2d(&weight, 1, 1, 1, 1)
            .unwrap()
            .broadcast_add(&bias.reshape((1, cout, 1, 1)).unwrap())
            .unwrap();
        let want = if residual {
            (conv + &skip).unwrap()
        } else {
            conv
        };
        let diff = max_abs_diff(&got, &want);
        let scale = want
            .abs()
            .unwrap()
            .max_keepdim(0)
            .unwrap()
            .max_all()
            .unwrap();
        let scale = scale.to_scalar::<f32>().unwrap();
        // Winograd F(4x4, 3x3) in f32: its transforms scale values by up to ~100 before
        // they cancel, so it stays within ~1e-5 of the largest output (a direct
        // convolution, ~1e-6); the error grows slowly with the input channels.
        println!(
            "conv3x3 {cin}->{cout} x{up} residual {residual}: max diff {diff:e}, largest {scale}"
        );
        assert!(diff < 2e-5 * scale, "{cin}->{cout}: max diff {diff}");
    }
}

#[test]
fn conv1x1_matches_candle_conv2d() {
    let x = random(&[2, 24, 5, 9], 8, 1.0, 0.0);
    let weight = random(&[13, 24, 1, 1], 9, 0.2, 0.0);
    let bias = random(&[13], 10, 0.1, 0.0);
    let got = kernels::conv1x1(&x, &weight, &bias).unwrap();
    let want = x
        .conv2d(&weight, 0, 1, 1, 1)
        .unwrap()
        .broadcast_add(&bias.reshape((1, 13, 1, 1)).unwrap())
        .unwrap();
    let diff = max_abs_diff(&got, &want);
    // Sums of 24 products of O(1) values, f32 in another order: ~1e-6.
    assert!(diff < 1e-5, "max diff {diff}");
}

#[test]
fn attention_in_row_blocks_matches_plain_attention() {
    let (tokens, c) = (300, 40);
    let q = random(&[tokens, c], 11, 1.5, 0.0);
    let k = random(&[tokens, c], 12, 1.5, 0.0);
    let v = random(&[tokens, c], 13, 1.0, 0.0);
    let scores = (q.matmul(&k.t().unwrap()).unwrap() / (c as f64).sqrt()).unwrap();
    let probs = candle_nn::ops::softmax_last_dim(&scores).unwrap();
    let want = probs.matmul(&v).unwrap();
    for block_rows in [1, 7, 64, 300, 1000] {
        let got = kernels::attention(&q, &k, &v, block_rows).unwrap();
        let diff = max_abs_diff(&got, &want);
        // Weighted means of O(1) values: f32 rounding (and the SIMD exp, ~2 ulp) ~1e-7.
        println!("attention, {block_rows} rows per block: max diff {diff:e}");
        assert!(diff < 1e-5, "{block_rows} rows per block: max diff {diff}");
    }
}

#[test]
fn random_decoder_decodes_any_latent_size() {
    // Sizes that are not multiples of the 4x4 Winograd tile at any stage, batch 2: the
    // decoder must match itself decoding each image alone.
    let cfg: AutoencoderKlConfig = weights::read_config(&fixture("vae_kl/config.json")).unwrap();
    let vae = VaeDecoder::random(&cfg, 3).unwrap();
    let z = random(&[2, 4, 5, 3], 14, 1.0, 0.0);
    let both = vae.decode_raw(&z).unwrap();
    assert_eq!(both.dims(), &[2, 3, 10, 6]);
    for i in 0..2 {
        let alone = vae.decode_raw(&z.i(i..i + 1).unwrap()).unwrap();
        assert_eq!(max_abs_diff(&both.i(i..i + 1).unwrap(), &alone), 0.0);
    }
    assert!(to_f64(&both).iter().all(|v| v.is_finite()));
}
