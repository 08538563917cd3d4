//! Loading whole models the way users keep them: a diffusers folder, a Hugging Face cache
//! id, and the errors for folders that are not a supported model.

use std::path::{Path, PathBuf};

use dreamwalk::model::{Engine, StableDiffusion};

use crate::support::fixtures::{copy_dir, fixture, max_abs_diff};
use crate::support::process::{run_alone, running_alone};

fn load_error(model: &str) -> String {
    match StableDiffusion::load(model, None) {
        Ok(_) => panic!("{model} should not load"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_hugging_face_id_loads_from_the_local_cache_and_bad_folders_say_why() {
    // HF_HOME is process-wide and every test module runs in this process: the test runs
    // alone in a child process, with HF_HOME set there to a fresh folder.
    if !running_alone() {
        let tmp = tempfile::tempdir().unwrap();
        run_alone(
            module_path!(),
            "a_hugging_face_id_loads_from_the_local_cache_and_bad_folders_say_why",
            &[("HF_HOME", tmp.path())],
        );
        return;
    }
    let tmp = PathBuf::from(std::env::var_os("HF_HOME").expect("HF_HOME"));
    // The cache layout hf-hub reads: hub/models--ORG--NAME/{refs/main, snapshots/HASH/...}.
    let repo = tmp.join("hub/models--dreamwalk-test--tiny-sd");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    copy_dir(&fixture("tiny-sd"), &repo.join("snapshots/0123abcd"));
    let model = StableDiffusion::load("dreamwalk-test/tiny-sd", None).unwrap();
    assert_eq!(model.name(), "dreamwalk-test/tiny-sd");
    assert!(model
        .decoders()
        .contains(&dreamwalk::model::DecoderKind::Vae));

    let missing = load_error("dreamwalk-test/not-downloaded");
    assert!(
        missing.contains("not-downloaded") && missing.contains("cache"),
        "{missing}"
    );

    // An unknown pipeline class names model_index.json and the family.
    let sdxl = tmp.join("sdxl");
    copy_dir(&fixture("tiny-sd"), &sdxl);
    let index = std::fs::read_to_string(sdxl.join("model_index.json")).unwrap();
    std::fs::write(
        sdxl.join("model_index.json"),
        index.replace("StableDiffusionPipeline", "StableDiffusionXLPipeline"),
    )
    .unwrap();
    let family = load_error(sdxl.to_str().unwrap());
    assert!(
        family.contains("model_index.json") && family.contains("unknown model family"),
        "{family}"
    );

    // A folder without a UNet names the missing path.
    let no_unet = tmp.join("no-unet");
    copy_dir(&fixture("tiny-sd"), &no_unet);
    std::fs::remove_dir_all(no_unet.join("unet")).unwrap();
    let unet = load_error(no_unet.to_str().unwrap());
    assert!(unet.contains("unet"), "{unet}");
}

/// Copies every `*.safetensors` under `from` into `half` as fp16 (named `*.fp16.safetensors`,
/// the original removed, as diffusers' `variant="fp16"` saves them) and into `rounded` as f32
/// holding the same fp16-rounded values under the original name.
fn write_fp16_variants(from: &Path, half: &Path, rounded: &Path) {
    use candle_core::DType;
    copy_dir(from, half);
    copy_dir(from, rounded);
    let mut converted = 0;
    for dir in [half, rounded] {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                let Some(stem) = name.strip_suffix(".safetensors") else {
                    continue;
                };
                let tensors =
                    candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
                let to_half: std::collections::HashMap<String, candle_core::Tensor> = tensors
                    .into_iter()
                    .map(|(k, t)| (k, t.to_dtype(DType::F16).unwrap()))
                    .collect();
                if dir == half {
                    std::fs::remove_file(&path).unwrap();
                    let target = path.with_file_name(format!("{stem}.fp16.safetensors"));
                    candle_core::safetensors::save(&to_half, target).unwrap();
                    converted += 1;
                } else {
                    let back: std::collections::HashMap<String, candle_core::Tensor> = to_half
                        .into_iter()
                        .map(|(k, t)| (k, t.to_dtype(DType::F32).unwrap()))
                        .collect();
                    candle_core::safetensors::save(&back, &path).unwrap();
                }
            }
        }
    }
    assert!(converted > 0, "no safetensors under {}", from.display());
}

/// fp16 weights (`.fp16.safetensors` variants) load, converted to f32 as they are read: the
/// model computes exactly what the same values stored as f32 compute.
#[test]
fn fp16_variant_files_load_and_compute_like_their_f32_values() {
    use dreamwalk::model::{DecoderKind, EndpointRequest};
    let tmp = tempfile::tempdir().unwrap();
    let (half, rounded) = (tmp.path().join("half"), tmp.path().join("rounded"));
    write_fp16_variants(&fixture("tiny-sd"), &half, &rounded);
    let (taesd_half, taesd_rounded) = (tmp.path().join("taesd16"), tmp.path().join("taesd32"));
    write_fp16_variants(&fixture("taesd"), &taesd_half, &taesd_rounded);
    assert!(half
        .join("unet/diffusion_pytorch_model.fp16.safetensors")
        .is_file());
    assert!(!half
        .join("unet/diffusion_pytorch_model.safetensors")
        .exists());

    let run = |model: &Path, taesd: &Path| {
        let model = StableDiffusion::load(model.to_str().unwrap(), Some(taesd)).unwrap();
        let request = EndpointRequest {
            keyframes: vec!["a red fox".into(), "a lighthouse at dusk".into()],
            negative: String::new(),
            seed: 3,
            seed_per_keyframe: false,
            steps: 3,
            guidance: 7.5,
            image_size: (64, 64),
            init_latents: None,
        };
        let latents = model.endpoints(&request, &mut |_| true).unwrap();
        let vae = model.decode(&latents[0], DecoderKind::Vae).unwrap();
        let taesd = model.decode(&latents[1], DecoderKind::Taesd).unwrap();
        (latents, vae, taesd)
    };
    let (latents16, vae16, taesd16) = run(&half, &taesd_half);
    let (latents32, vae32, taesd32) = run(&rounded, &taesd_rounded);
    for (a, b) in latents16.iter().zip(&latents32) {
        let diff = max_abs_diff(a, b);
        assert!(diff <= 1e-6, "latents differ by {diff}");
    }
    assert_eq!(vae16.pixels, vae32.pixels);
    assert_eq!(taesd16.pixels, taesd32.pixels);
    // And the rounding did change the model: the fp16 files are not just copies.
    let original =
        std::fs::read(fixture("tiny-sd/unet/diffusion_pytorch_model.safetensors")).unwrap();
    assert_ne!(
        original,
        std::fs::read(rounded.join("unet/diffusion_pytorch_model.safetensors")).unwrap()
    );
}
