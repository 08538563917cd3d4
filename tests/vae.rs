//! The AutoencoderKL decoder against diffusers (fixtures `vae_kl/`, `tiny-sd/vae/`, `e2e/`),
//! and its loading errors.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, IndexOp, Tensor};
use common::{fixture, load_tensors, max_abs_diff};
use dreamwalk::model::vae::{AutoencoderKlConfig, VaeDecoder};
use dreamwalk::model::weights;

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
