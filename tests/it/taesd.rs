//! TAESD decoder against diffusers (`fixtures/taesd/`, README section 1) and against a
//! plain candle-ops decode for other configs.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use dreamwalk::model::{ModelError, TaesdConfig, TaesdDecoder};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

use crate::support::fixtures::{fixture, load_tensors, max_abs_diff};
use crate::support::gpu::original_names;

/// diffusers' f32 output is ~8.5e-6 from an f64 decode (README noise floor); ours adds
/// Winograd F(4x4, 3x3) rounding (~2e-6 of the values per convolution, 34 of them) on
/// outputs of magnitude up to ~6. 1e-4 leaves room for both while still catching any real
/// mistake (a wrong weight or a missing bias moves outputs by 1e-2 or more).
const FIXTURE_TOL: f32 = 1e-4;

fn decoder_file() -> std::path::PathBuf {
    fixture("taesd/decoder.safetensors")
}

fn check_case(decoder: &TaesdDecoder, case: &str) -> f32 {
    let t = load_tensors(case);
    let image = decoder.decode(&t["latents"]).unwrap();
    let diff = max_abs_diff(&image, &t["image"]);
    eprintln!("{case}: max |diff| {diff:.3e}");
    diff
}

#[test]
fn matches_diffusers_batch_1_and_2() {
    let decoder = TaesdDecoder::load(&decoder_file()).unwrap();
    assert_eq!(decoder.upscale_factor(), 8);
    assert!(check_case(&decoder, "taesd/case.safetensors") < FIXTURE_TOL);
    assert!(check_case(&decoder, "taesd/case_b2.safetensors") < FIXTURE_TOL);
}

#[test]
fn folder_with_config_and_encoder_keys_gives_the_same_result() {
    let folder = fixture("taesd");
    let from_folder = TaesdDecoder::load(&folder).unwrap();
    let from_file = TaesdDecoder::load(&decoder_file()).unwrap();
    let expected: TaesdConfig =
        serde_json::from_str(&std::fs::read_to_string(folder.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(from_folder.config(), &expected);
    let latents = &load_tensors("taesd/case.safetensors")["latents"];
    let a = from_folder.decode(latents).unwrap();
    let b = from_file.decode(latents).unwrap();
    // Same weights, same arithmetic in the same order: identical.
    assert_eq!(max_abs_diff(&a, &b), 0.0);
}

#[test]
fn original_taesd_key_layout_loads() {
    let tensors = load_tensors("taesd/decoder.safetensors");
    let renamed = original_names(&tensors);
    assert!(renamed.contains_key("1.weight") && renamed.contains_key("19.bias"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("taesd_decoder.safetensors");
    candle_core::safetensors::save(&renamed, &path).unwrap();

    let latents = &load_tensors("taesd/case_b2.safetensors")["latents"];
    let expected = TaesdDecoder::load(&decoder_file())
        .unwrap()
        .decode(latents)
        .unwrap();
    for source in [path.as_path(), dir.path()] {
        let decoder = TaesdDecoder::load(source).unwrap();
        // Same weights under other names: the same computation.
        assert!(max_abs_diff(&decoder.decode(latents).unwrap(), &expected) <= 1e-6);
    }
}

/// The float output mapped the way `decode_rgba` documents it.
fn expected_rgba(image: &Tensor, row: usize) -> Vec<u8> {
    let planes = image.get(row).unwrap(); // (3, H, W)
    let (_, h, w) = planes.dims3().unwrap();
    let hwc: Vec<f32> = planes
        .permute((1, 2, 0))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let mut rgba = Vec::with_capacity(h * w * 4);
    for px in hwc.chunks(3) {
        for &v in px {
            rgba.push((((v + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0).round() as u8);
        }
        rgba.push(255);
    }
    rgba
}

#[test]
fn rgba_matches_float_output() {
    let decoder = TaesdDecoder::load(&decoder_file()).unwrap();
    let latents = &load_tensors("taesd/case_b2.safetensors")["latents"];
    let image = decoder.decode(latents).unwrap();
    let rgba = decoder.decode_rgba(latents).unwrap();
    assert_eq!(rgba.len(), 2);
    for (row, got) in rgba.iter().enumerate() {
        assert_eq!((got.width, got.height), (256, 144));
        let want = expected_rgba(&image, row);
        let worst = got
            .pixels
            .iter()
            .zip(&want)
            .map(|(&a, &b)| a.abs_diff(b))
            .max()
            .unwrap();
        // The last rounding may fall either way when (x+1)/2 lands on a half step.
        assert!(worst <= 1, "row {row}: max byte diff {worst}");
        assert!(got.pixels.chunks(4).all(|p| p[3] == 255));
    }
}

fn tiny_config() -> TaesdConfig {
    TaesdConfig {
        decoder_block_out_channels: vec![8; 4],
        num_decoder_blocks: vec![1, 1, 1, 1],
        ..TaesdConfig::default()
    }
}

fn randn(shape: &[usize], std: f32, rng: &mut StdRng) -> Tensor {
    let values: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|_| std * rng.sample::<f32, _>(StandardNormal))
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

/// Weights ~ N(0, 1/fan_in) so activations stay O(1) through the layers; biases 0.1 N(0, 1).
fn random_tensors(config: &TaesdConfig, rng: &mut StdRng) -> HashMap<String, Tensor> {
    config
        .decoder_tensor_shapes()
        .into_iter()
        .map(|(name, shape)| {
            let std = match shape[..] {
                [_, cin, kh, kw] => 1.0 / ((cin * kh * kw) as f32).sqrt(),
                _ => 0.1,
            };
            let t = randn(&shape, std, rng);
            (name, t)
        })
        .collect()
}

/// The decoder written with candle ops, layer by layer as diffusers' `DecoderTiny`.
fn reference_decode(
    tensors: &HashMap<String, Tensor>,
    config: &TaesdConfig,
    latents: &Tensor,
) -> Tensor {
    let conv = |x: &Tensor, name: &str, bias: bool| -> Tensor {
        let y = x
            .conv2d(&tensors[&format!("{name}.weight")], 1, 1, 1, 1)
            .unwrap();
        if bias {
            let b = &tensors[&format!("{name}.bias")];
            y.broadcast_add(&b.reshape((1, b.dims1().unwrap(), 1, 1)).unwrap())
                .unwrap()
        } else {
            y
        }
    };
    let mut x = ((latents / 3.0).unwrap().tanh().unwrap() * 3.0).unwrap();
    x = conv(&x, "decoder.layers.0", true).relu().unwrap();
    let mut index = 2;
    let stages = config.num_decoder_blocks.len();
    for (stage, &blocks) in config.num_decoder_blocks.iter().enumerate() {
        for _ in 0..blocks {
            let name = format!("decoder.layers.{index}.conv");
            let h = conv(&x, &format!("{name}.0"), true).relu().unwrap();
            let h = conv(&h, &format!("{name}.2"), true).relu().unwrap();
            let h = conv(&h, &format!("{name}.4"), true);
            x = (h + &x).unwrap().relu().unwrap();
            index += 1;
        }
        let last = stage + 1 == stages;
        if !last {
            let (_, _, h, w) = x.dims4().unwrap();
            let f = config.upsampling_scaling_factor;
            x = x.upsample_nearest2d(h * f, w * f).unwrap();
            index += 1;
        }
        x = conv(&x, &format!("decoder.layers.{index}"), last);
        index += 1;
    }
    ((x * 2.0).unwrap() - 1.0).unwrap()
}

#[test]
fn tiny_config_matches_candle_reference() {
    let mut rng = StdRng::seed_from_u64(7);
    let config = tiny_config();
    let tensors = random_tensors(&config, &mut rng);
    let decoder = TaesdDecoder::from_tensors(&tensors, &config).unwrap();
    // Non-square, odd sizes (partial Winograd tiles at the latent level), batch 1 and 2.
    for shape in [(1, 4, 5, 7), (2, 4, 6, 3), (1, 4, 1, 1)] {
        let latents = randn(&[shape.0, shape.1, shape.2, shape.3], 1.5, &mut rng);
        let got = decoder.decode(&latents).unwrap();
        let want = reference_decode(&tensors, &config, &latents);
        let diff = max_abs_diff(&got, &want);
        let scale = want
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        eprintln!("{shape:?}: max |diff| {diff:.3e}, largest value {scale:.2}");
        // Both are f32 (candle's conv2d a direct sum, ours Winograd); 1e-4 on outputs of
        // magnitude ~1-10 is ~1e-5 relative, a few times the Winograd rounding.
        assert!(diff < 1e-4 * scale.max(1.0), "{shape:?}: {diff}");
    }
}

#[test]
fn other_widths_and_latent_channels_match_candle_reference() {
    // 16 latent channels (TAEF1/TAESD3-like), 24-wide stages (a 16 + 8 channel split in
    // the kernel), three stages with x2 upsampling and uneven block counts.
    let config = TaesdConfig {
        latent_channels: 16,
        decoder_block_out_channels: vec![24; 3],
        num_decoder_blocks: vec![2, 0, 1],
        ..TaesdConfig::default()
    };
    let mut rng = StdRng::seed_from_u64(3);
    let tensors = random_tensors(&config, &mut rng);
    let decoder = TaesdDecoder::from_tensors(&tensors, &config).unwrap();
    assert_eq!(decoder.upscale_factor(), 4);
    let latents = randn(&[2, 16, 3, 9], 1.0, &mut rng);
    let got = decoder.decode(&latents).unwrap();
    assert_eq!(got.dims(), &[2, 3, 12, 36]);
    let want = reference_decode(&tensors, &config, &latents);
    let diff = max_abs_diff(&got, &want);
    let scale = want
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    eprintln!("wide: max |diff| {diff:.3e}, largest value {scale:.2}");
    assert!(diff < 1e-4 * scale.max(1.0), "{diff}");
}

fn write_without(dir: &Path, drop: &str, replace: Option<(&str, Tensor)>) -> std::path::PathBuf {
    let mut tensors = load_tensors("taesd/decoder.safetensors");
    tensors.remove(drop);
    if let Some((name, t)) = replace {
        tensors.insert(name.to_string(), t);
    }
    let path = dir.join("broken.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    path
}

#[test]
fn errors_name_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();

    let path = write_without(dir.path(), "decoder.layers.7.conv.2.weight", None);
    let err = TaesdDecoder::load(&path).unwrap_err().to_string();
    assert!(err.contains("broken.safetensors"), "{err}");
    assert!(err.contains("decoder.layers.7.conv.2.weight"), "{err}");

    let wrong = Tensor::zeros((64, 64, 1, 1), DType::F32, &Device::Cpu).unwrap();
    let name = "decoder.layers.16.weight";
    let path = write_without(dir.path(), name, Some((name, wrong)));
    let err = TaesdDecoder::load(&path).unwrap_err().to_string();
    assert!(err.contains("broken.safetensors"), "{err}");
    assert!(
        err.contains(name) && err.contains("[64, 64, 1, 1]"),
        "{err}"
    );

    let bytes = std::fs::read(decoder_file()).unwrap();
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = TaesdDecoder::load(&truncated).unwrap_err().to_string();
    assert!(err.contains("truncated.safetensors"), "{err}");

    let missing = dir.path().join("nothing-here");
    assert!(matches!(
        TaesdDecoder::load(&missing),
        Err(ModelError::Missing { .. })
    ));

    // A config this decoder cannot run names the file and the key.
    let folder = dir.path().join("silu");
    std::fs::create_dir(&folder).unwrap();
    std::fs::copy(decoder_file(), folder.join("decoder.safetensors")).unwrap();
    let config = std::fs::read_to_string(fixture("taesd/config.json")).unwrap();
    let config = config.replace("\"relu\"", "\"silu\"");
    std::fs::write(folder.join("config.json"), config).unwrap();
    let err = TaesdDecoder::load(&folder).unwrap_err().to_string();
    assert!(
        err.contains("config.json") && err.contains("act_fn"),
        "{err}"
    );

    // Latents of the wrong shape are refused, not misread.
    let decoder = TaesdDecoder::load(&decoder_file()).unwrap();
    let bad = Tensor::zeros((1, 3, 8, 8), DType::F32, &Device::Cpu).unwrap();
    assert!(decoder.decode(&bad).is_err());
}
