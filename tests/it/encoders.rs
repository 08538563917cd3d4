//! The encoders (images -> latents, for images used as keyframes) against diffusers:
//! `AutoencoderTiny.encode(...).latents` (fixtures `taesd/encode_case*.safetensors`) and
//! `AutoencoderKL.encode(...).latent_dist` (`vae_kl/encode_case.safetensors`).

use candle_core::{Device, Tensor};
use dreamwalk::model::{TaesdEncoder, VaeEncoder};

use crate::support::fixtures::{fixture, load_tensors, max_abs_diff};

/// Latents are O(1) (|x| < 4); the fixtures' float32-vs-float64 spread is ~5e-6, and the
/// Winograd convolutions add ~1e-6 per layer relative to the values. A wrong padding,
/// stride offset or layer moves the latents by 1e-2 or more.
const TOLERANCE: f32 = 1e-4;

fn taesd_encoder() -> TaesdEncoder {
    TaesdEncoder::load(&fixture("taesd")).expect("TAESD encoder")
}

#[test]
fn taesd_encoder_matches_diffusers() {
    let encoder = taesd_encoder();
    assert_eq!(encoder.downscale_factor(), 8);
    for case in [
        "taesd/encode_case.safetensors",
        "taesd/encode_case_b2.safetensors",
    ] {
        let tensors = load_tensors(case);
        let latents = encoder.encode(&tensors["encode_input"]).unwrap();
        assert_eq!(latents.dims(), tensors["latents"].dims(), "{case}");
        let diff = max_abs_diff(&latents, &tensors["latents"]);
        assert!(diff < TOLERANCE, "{case}: max |diff| {diff}");
    }
}

#[test]
fn taesd_encoder_loads_the_original_key_layout() {
    // madebyollin/taesd's taesd_encoder.safetensors: a bare Sequential, keys `N.*`.
    let weights = load_tensors("taesd/model.safetensors");
    let original: std::collections::HashMap<String, Tensor> = weights
        .into_iter()
        .filter_map(|(name, t)| Some((name.strip_prefix("encoder.layers.")?.to_string(), t)))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("taesd_encoder.safetensors");
    candle_core::safetensors::save(&original, &file).unwrap();
    let encoder = TaesdEncoder::load(&file).unwrap();
    let tensors = load_tensors("taesd/encode_case.safetensors");
    let latents = encoder.encode(&tensors["encode_input"]).unwrap();
    assert!(max_abs_diff(&latents, &tensors["latents"]) < TOLERANCE);
}

#[test]
fn taesd_encoder_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("decoder_only.safetensors");
    let weights = load_tensors("taesd/decoder.safetensors");
    candle_core::safetensors::save(&weights, &file).unwrap();
    let err = TaesdEncoder::load(&file).unwrap_err().to_string();
    assert!(err.contains("decoder_only.safetensors"), "{err}");
    // An image of zero size, or of the wrong channel count.
    let encoder = taesd_encoder();
    let empty = Tensor::zeros((1, 3, 0, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(encoder.encode(&empty).is_err());
    let gray = Tensor::zeros((1, 1, 8, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(encoder.encode(&gray).is_err());
}

#[test]
fn vae_encoder_matches_diffusers_moments_mean_and_scaling() {
    let encoder = VaeEncoder::load(&fixture("vae_kl"), &Device::Cpu).expect("VAE encoder");
    assert_eq!(encoder.downscale_factor(), 2);
    let case = load_tensors("vae_kl/encode_case.safetensors");
    let moments = encoder.moments(&case["image"]).unwrap();
    assert_eq!(moments.dims(), case["moments"].dims());
    let diff = max_abs_diff(&moments, &case["moments"]);
    assert!(diff < TOLERANCE, "moments: max |diff| {diff}");
    let mean = encoder.encode_mean(&case["image"]).unwrap();
    let diff = max_abs_diff(&mean, &case["mean"]);
    assert!(diff < TOLERANCE, "mean: max |diff| {diff}");
    // In the UNet's latent space: 0.18215 * mean, as img2img makes them.
    let latents = encoder.encode(&case["image"]).unwrap();
    let expected = (&case["mean"] * 0.18215).unwrap();
    let diff = max_abs_diff(&latents, &expected);
    assert!(diff < TOLERANCE * 0.18215, "scaled: max |diff| {diff}");
}
