//! Single-file checkpoints (`tiny-sd-single/`: tiny-sd in the original LDM layout) give the
//! same model as the diffusers folder: the same `e2e/` endpoints, bit for bit the same
//! latents as the folder's; other families and damaged files are refused by name.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use dreamwalk::model::{Engine, SingleFileOptions, StableDiffusion};

use crate::e2e::e2e_request;

use crate::support::fixtures::{fixture, load_tensors, max_abs_diff};
use crate::support::process::dreamwalk;

/// A checkpoint loaded with `--config tiny-sd`, as `render --model FILE --config tiny-sd`.
fn load_with_tiny_sd_config(path: &std::path::Path) -> StableDiffusion {
    let options = SingleFileOptions {
        config: Some(fixture("tiny-sd")),
        prediction: None,
    };
    StableDiffusion::load_single_file(path, &options, None)
        .unwrap_or_else(|e| panic!("{} loads with --config tiny-sd: {e}", path.display()))
}

fn single_file_model() -> StableDiffusion {
    load_with_tiny_sd_config(&fixture("tiny-sd-single/model.safetensors"))
}

#[test]
fn single_file_gives_the_e2e_results_of_the_folder() {
    let case = load_tensors("e2e/case.safetensors");
    let single = single_file_model();
    let folder = StableDiffusion::load(fixture("tiny-sd").to_str().unwrap(), None).unwrap();
    let request = e2e_request();
    let ours = single.endpoints(&request, &mut |_| true).unwrap();
    let reference = folder.endpoints(&request, &mut |_| true).unwrap();
    for ((single, folder), name) in ours
        .iter()
        .zip(&reference)
        .zip(["final_latents_a", "final_latents_b"])
    {
        // The same weights through another key layout: the same numbers.
        assert_eq!(max_abs_diff(single, folder), 0.0, "{name}");
        let diff = max_abs_diff(single, &case[name]);
        assert!(diff <= 1e-3, "{name}: max |diff| {diff}");
    }
    // The VAE came through the renaming too.
    let decoded = single
        .decode(&ours[0], dreamwalk::model::DecoderKind::Vae)
        .unwrap();
    let expected = folder
        .decode(&reference[0], dreamwalk::model::DecoderKind::Vae)
        .unwrap();
    assert_eq!(decoded.pixels, expected.pixels);
}

#[test]
fn render_takes_a_single_file_model_with_its_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("walk.y4m");
    let output = dreamwalk()
        .args(["render", "--model"])
        .arg(fixture("tiny-sd-single/model.safetensors"))
        .arg("--config")
        .arg(fixture("tiny-sd"))
        .args(["--prompt", "a red fox", "--prompt", "a lighthouse"])
        .args(["--steps", "2", "--steps-between", "2", "--inbetween", "0"])
        .args(["--source", "64x48", "--size", "64x48", "--decoder", "vae"])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    assert!(log.contains("model.safetensors"), "names the model: {log}");
    assert!(out.is_file());
}

/// A copy of the fixture checkpoint with `edit` applied to its tensors.
fn edited_checkpoint(
    dir: &std::path::Path,
    edit: impl FnOnce(&mut HashMap<String, Tensor>),
) -> std::path::PathBuf {
    let mut tensors = load_tensors("tiny-sd-single/model.safetensors");
    edit(&mut tensors);
    let path = dir.join("edited.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    path
}

fn load_error(path: &std::path::Path, config: bool) -> String {
    let options = SingleFileOptions {
        config: config.then(|| fixture("tiny-sd")),
        prediction: None,
    };
    match StableDiffusion::load_single_file(path, &options, None) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

/// Early SD 1 checkpoints were saved with a transformers that had no `text_model.` level:
/// `cond_stage_model.transformer.encoder.*`. The same weights under those names give the
/// same model.
#[test]
fn a_checkpoint_without_the_text_model_level_gives_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = "cond_stage_model.transformer.text_model.";
    let path = edited_checkpoint(dir.path(), |tensors| {
        let old: Vec<String> = tensors
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        assert!(!old.is_empty());
        for key in old {
            let tensor = tensors.remove(&key).unwrap();
            let flat = format!("cond_stage_model.transformer.{}", &key[prefix.len()..]);
            tensors.insert(flat, tensor);
        }
    });
    let model = load_with_tiny_sd_config(&path);
    let latents = model.endpoints(&e2e_request(), &mut |_| true).unwrap();
    let reference = single_file_model()
        .endpoints(&e2e_request(), &mut |_| true)
        .unwrap();
    for (a, b) in latents.iter().zip(&reference) {
        assert_eq!(max_abs_diff(a, b), 0.0);
    }
}

#[test]
fn real_checkpoint_extras_are_ignored_and_f16_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = edited_checkpoint(dir.path(), |tensors| {
        // What real files carry besides the weights: the position-ids buffer, the DDPM
        // schedule, EMA copies.
        tensors.insert(
            "cond_stage_model.transformer.text_model.embeddings.position_ids".into(),
            Tensor::arange(0i64, 77, &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
        );
        tensors.insert(
            "alphas_cumprod".into(),
            Tensor::ones(1000, candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
        // Every weight in f16, as most shared checkpoints are.
        for tensor in tensors.values_mut() {
            if tensor.dtype() == candle_core::DType::F32 {
                *tensor = tensor.to_dtype(candle_core::DType::F16).unwrap();
            }
        }
    });
    let model = load_with_tiny_sd_config(&path);
    let latents = model.endpoints(&e2e_request(), &mut |_| true).unwrap();
    let reference = single_file_model()
        .endpoints(&e2e_request(), &mut |_| true)
        .unwrap();
    // f16 weights: close to the f32 results, not equal.
    let diff = max_abs_diff(&latents[0], &reference[0]);
    assert!(diff > 0.0 && diff < 0.1, "f16 vs f32: {diff}");
}

#[test]
fn damaged_or_foreign_checkpoints_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    // A missing UNet tensor.
    let path = edited_checkpoint(dir.path(), |tensors| {
        tensors.remove("model.diffusion_model.out.2.weight");
    });
    let err = load_error(&path, true);
    assert!(
        err.contains("edited.safetensors") && err.contains("model.diffusion_model.out.2.weight"),
        "{err}"
    );
    // An SDXL file.
    let path = edited_checkpoint(dir.path(), |tensors| {
        tensors.insert(
            "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight".into(),
            Tensor::ones(4, candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let err = load_error(&path, true);
    assert!(
        err.contains("edited.safetensors") && err.contains("SDXL"),
        "{err}"
    );
    // Not safetensors at all.
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"not a checkpoint").unwrap();
    let err = load_error(&junk, true);
    assert!(err.contains("junk.safetensors"), "{err}");
    // A pickle.
    let pickle = dir.path().join("model.ckpt");
    std::fs::write(&pickle, b"PK").unwrap();
    let err = load_error(&pickle, true);
    assert!(
        err.contains("model.ckpt") && err.contains("safetensors"),
        "{err}"
    );
    // Without --config, the tiny model's 32-wide context is no known family.
    let err = load_error(&fixture("tiny-sd-single/model.safetensors"), false);
    assert!(err.contains("--config"), "{err}");
}
