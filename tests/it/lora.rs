//! LoRA files merged at load, in the kohya and the diffusers/PEFT layouts: a LoRA made and
//! applied by diffusers + peft (`tests/fixtures/lora/`, made by `make_lora.py` there) gives
//! diffusers' own pipeline output; a model loaded with a LoRA gives the same keyframes as the
//! same model whose weight files were merged by hand here (`W + strength x alpha / rank x up
//! @ down`); strength 0 gives the base model exactly; a LoRA for another model is refused by
//! name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use dreamwalk::model::lora::{LoraSet, LoraSpec};
use dreamwalk::model::{EndpointRequest, Engine, StableDiffusion};

use crate::support::fixtures::{
    copy_dir, fixture, load_tensors, load_tensors_at, made_from_this_set, max_abs_diff, own_fixture,
};
use crate::support::process::dreamwalk;

/// The layers the test LoRA patches: (component, module path, weight file of the folder).
const LAYERS: [(&str, &str); 3] = [
    (
        "unet",
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    ),
    ("unet", "mid_block.attentions.0.proj_in"),
    (
        "text_encoder",
        "text_model.encoder.layers.0.self_attn.q_proj",
    ),
];
const RANK: usize = 2;
const ALPHA: f64 = 4.0;

fn weight_file(component: &str) -> PathBuf {
    match component {
        "unet" => fixture("tiny-sd/unet/diffusion_pytorch_model.safetensors"),
        _ => fixture("tiny-sd/text_encoder/model.safetensors"),
    }
}

/// Random down/up matrices for each layer, shaped after the base weights.
pub(crate) fn lora_tensors() -> Vec<(&'static str, &'static str, Tensor, Tensor)> {
    LAYERS
        .iter()
        .map(|&(component, module)| {
            let weights = load_tensors_at(&weight_file(component));
            let weight = &weights[&format!("{module}.weight")];
            let (out, inner) = (
                weight.dim(0).unwrap(),
                weight.elem_count() / weight.dim(0).unwrap(),
            );
            let mut down_shape = weight.dims().to_vec();
            down_shape[0] = RANK;
            let mut up_shape = vec![out, RANK];
            up_shape.extend(std::iter::repeat_n(1, weight.rank() - 2));
            let down = (Tensor::randn(0f32, 1.0, RANK * inner, &Device::Cpu).unwrap() * 0.3)
                .unwrap()
                .reshape(down_shape)
                .unwrap();
            let up = (Tensor::randn(0f32, 1.0, out * RANK, &Device::Cpu).unwrap() * 0.3)
                .unwrap()
                .reshape(up_shape)
                .unwrap();
            (component, module, down, up)
        })
        .collect()
}

/// Writes a safetensors file with header metadata (candle's writer has none).
fn save_with_metadata(tensors: &[(String, Tensor)], metadata: &serde_json::Value, path: &Path) {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), metadata.clone());
    let mut data = Vec::new();
    for (name, tensor) in tensors {
        let values = tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let start = data.len();
        data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        header.insert(
            name.clone(),
            serde_json::json!({
                "dtype": "F32",
                "shape": tensor.dims(),
                "data_offsets": [start, data.len()],
            }),
        );
    }
    let header = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header);
    bytes.extend(data);
    std::fs::write(path, bytes).unwrap();
}

/// The kohya / A1111 file: flattened names, a per-layer alpha, `lora_te_` for SD 1's text
/// encoder.
fn kohya_file(dir: &Path, lora: &[(&str, &str, Tensor, Tensor)]) -> PathBuf {
    let mut tensors = HashMap::new();
    for (component, module, down, up) in lora {
        let prefix = match *component {
            "unet" => "lora_unet_",
            _ => "lora_te_",
        };
        let name = format!("{prefix}{}", module.replace('.', "_"));
        tensors.insert(format!("{name}.lora_down.weight"), down.clone());
        tensors.insert(format!("{name}.lora_up.weight"), up.clone());
        tensors.insert(
            format!("{name}.alpha"),
            Tensor::new(ALPHA as f32, &Device::Cpu).unwrap(),
        );
    }
    let path = dir.join("kohya.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    path
}

/// The diffusers / PEFT file: `lora_A` / `lora_B` under `unet.` and `text_encoder.`, alpha
/// and rank only in the header's `lora_adapter_metadata`.
pub(crate) fn peft_file(dir: &Path, lora: &[(&str, &str, Tensor, Tensor)]) -> PathBuf {
    let mut tensors = Vec::new();
    for (component, module, down, up) in lora {
        tensors.push((format!("{component}.{module}.lora_A.weight"), down.clone()));
        tensors.push((format!("{component}.{module}.lora_B.weight"), up.clone()));
    }
    let adapter = serde_json::json!({
        "unet.r": RANK, "unet.lora_alpha": ALPHA,
        "text_encoder.r": RANK, "text_encoder.lora_alpha": ALPHA,
    });
    let metadata = serde_json::json!({
        "format": "pt",
        "lora_adapter_metadata": adapter.to_string(),
    });
    let path = dir.join("peft.safetensors");
    save_with_metadata(&tensors, &metadata, &path);
    path
}

/// A copy of tiny-sd whose weight files hold `W + strength x alpha / rank x up @ down`.
fn merged_by_hand(dir: &Path, lora: &[(&str, &str, Tensor, Tensor)], strength: f64) -> PathBuf {
    let model = dir.join("merged");
    copy_dir(&fixture("tiny-sd"), &model);
    for component in ["unet", "text_encoder"] {
        let mut weights = load_tensors_at(&weight_file(component));
        for (c, module, down, up) in lora.iter().filter(|l| l.0 == component) {
            assert_eq!(*c, component);
            let key = format!("{module}.weight");
            let weight = &weights[&key];
            let down = down.reshape((RANK, ())).unwrap();
            let up = up.reshape((up.dim(0).unwrap(), RANK)).unwrap();
            let delta = (up.matmul(&down).unwrap() * (strength * ALPHA / RANK as f64))
                .unwrap()
                .reshape(weight.dims())
                .unwrap();
            let merged = (weight + delta).unwrap();
            weights.insert(key, merged);
        }
        let file = weight_file(component);
        let relative = file.strip_prefix(fixture("tiny-sd")).unwrap();
        candle_core::safetensors::save(&weights, model.join(relative)).unwrap();
    }
    model
}

fn request() -> EndpointRequest {
    EndpointRequest {
        keyframes: vec!["a red fox".into(), "a lighthouse".into()],
        negative: String::new(),
        seed: 7,
        seed_per_keyframe: false,
        steps: 4,
        guidance: 7.5,
        image_size: (64, 48),
        init_latents: None,
    }
}

fn keyframes(model: &StableDiffusion) -> Vec<Tensor> {
    model.endpoints(&request(), &mut |_| true).unwrap()
}

fn with_lora(file: &Path, strength: f64) -> StableDiffusion {
    let set = LoraSet::load(&[LoraSpec {
        path: file.to_path_buf(),
        strength,
    }])
    .unwrap();
    StableDiffusion::load_with_loras(fixture("tiny-sd").to_str().unwrap(), None, &set).unwrap()
}

/// A file of `tests/fixtures/lora/` (made by diffusers + peft; see its README.md).
fn diffusers_fixture(name: &str) -> PathBuf {
    own_fixture("lora", name)
}

fn diffusers_settings() -> serde_json::Value {
    let text = std::fs::read_to_string(diffusers_fixture("settings.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The LoRA fixture's pipeline call (`settings.json`: the `e2e/` prompts, size, steps,
/// guidance and initial latents) and its strength.
fn diffusers_request() -> (EndpointRequest, f64) {
    let s = diffusers_settings();
    let case = load_tensors_at(&diffusers_fixture("case.safetensors"));
    let request = crate::e2e::request_from(&s, &case);
    (request, s["strength"].as_f64().unwrap())
}

/// Loads tiny-sd with the fixture LoRA `file` at the fixture's strength and compares both
/// keyframes with what diffusers' pipeline sampled with it loaded.
fn assert_matches_the_diffusers_pipeline(file: &str) {
    let (request, strength) = diffusers_request();
    let case = load_tensors_at(&diffusers_fixture("case.safetensors"));
    let model = with_lora(&diffusers_fixture(file), strength);
    let latents = model.endpoints(&request, &mut |_| true).unwrap();
    if !made_from_this_set(&diffusers_settings()) {
        // Another fixture set: diffusers' numbers are for another tiny-sd. The file still
        // loads, matches layers and changes the keyframes.
        eprintln!("{file}: tests/fixtures/lora was made from another tiny-sd; comparison skipped");
        let base = StableDiffusion::load(fixture("tiny-sd").to_str().unwrap(), None).unwrap();
        let plain = base.endpoints(&request, &mut |_| true).unwrap();
        assert!(
            max_abs_diff(&latents[0], &plain[0]) > 1e-3,
            "{file} changed nothing"
        );
        return;
    }
    let without_lora = load_tensors("e2e/case.safetensors");
    for (ours, name) in latents.iter().zip(["final_latents_a", "final_latents_b"]) {
        // 1e-3, as the e2e test without a LoRA: guidance 7.5 amplifies f32 rounding over
        // 10 steps of latents whose values reach ~60.
        let diff = max_abs_diff(ours, &case[name]);
        eprintln!("{file} {name}: max |diff| {diff:.2e}");
        assert!(diff <= 1e-3, "{file} {name}: max |diff| {diff}");
        // The bound means something: the LoRA moves these latents by far more (the script
        // asserts > 0.05; it is ~25), so a LoRA applied to nothing, or at another scale,
        // cannot pass.
        let moved = max_abs_diff(&case[name], &without_lora[name]);
        assert!(
            moved > 1.0,
            "{name}: the LoRA moved the latents by only {moved}"
        );
    }
}

#[test]
fn a_diffusers_peft_lora_gives_the_diffusers_pipeline_output() {
    // alpha (8) != rank (4) and kept only in the header's `lora_adapter_metadata`, so a
    // loader that misses it is 2x off; the LoRA patches the UNet's attention and the text
    // encoder's, so one that skipped the text encoder is off too.
    assert_matches_the_diffusers_pipeline("diffusers_lora.safetensors");
}

#[test]
fn the_kohya_copy_of_it_gives_the_same_output() {
    // `lora_unet_*` / `lora_te_text_model_*` names, `.alpha` tensors; diffusers read this
    // file as the same LoRA when the fixture was made (settings.json's checks).
    assert_matches_the_diffusers_pipeline("kohya_lora.safetensors");
}

#[test]
fn kohya_and_peft_loras_give_the_hand_merged_model() {
    let dir = tempfile::tempdir().unwrap();
    let lora = lora_tensors();
    let reference = keyframes(
        &StableDiffusion::load(
            merged_by_hand(dir.path(), &lora, 0.75).to_str().unwrap(),
            None,
        )
        .unwrap(),
    );
    let base =
        keyframes(&StableDiffusion::load(fixture("tiny-sd").to_str().unwrap(), None).unwrap());
    for file in [kohya_file(dir.path(), &lora), peft_file(dir.path(), &lora)] {
        let ours = keyframes(&with_lora(&file, 0.75));
        for (a, b) in ours.iter().zip(&reference) {
            let diff = max_abs_diff(a, b);
            assert!(diff < 1e-4, "{}: max |diff| {diff}", file.display());
        }
        // And the LoRA changed something.
        assert!(
            max_abs_diff(&ours[0], &base[0]) > 1e-3,
            "{}",
            file.display()
        );
    }
}

#[test]
fn strength_zero_is_the_base_model() {
    let dir = tempfile::tempdir().unwrap();
    let file = kohya_file(dir.path(), &lora_tensors());
    let base =
        keyframes(&StableDiffusion::load(fixture("tiny-sd").to_str().unwrap(), None).unwrap());
    let zero = keyframes(&with_lora(&file, 0.0));
    for (a, b) in zero.iter().zip(&base) {
        assert_eq!(max_abs_diff(a, b), 0.0);
    }
}

#[test]
fn a_lora_for_another_model_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = HashMap::new();
    tensors.insert(
        "lora_unet_input_blocks_1_1_proj_in.lora_down.weight".to_string(),
        Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap(),
    );
    tensors.insert(
        "lora_unet_input_blocks_1_1_proj_in.lora_up.weight".to_string(),
        Tensor::zeros((4, 2), DType::F32, &Device::Cpu).unwrap(),
    );
    let path = dir.path().join("other.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let set = LoraSet::load(&[LoraSpec {
        path: path.clone(),
        strength: 1.0,
    }])
    .unwrap();
    let err = StableDiffusion::load_with_loras(fixture("tiny-sd").to_str().unwrap(), None, &set)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("other.safetensors") && err.contains("matches"),
        "{err}"
    );
    // Not a LoRA at all.
    let junk = dir.path().join("junk.safetensors");
    candle_core::safetensors::save(
        &HashMap::from([(
            "weight".to_string(),
            Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap(),
        )]),
        &junk,
    )
    .unwrap();
    let err = LoraSet::load(&[LoraSpec {
        path: junk,
        strength: 1.0,
    }])
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("junk.safetensors") && err.contains("no LoRA layers"),
        "{err}"
    );
}

#[test]
fn render_takes_loras_with_strengths_and_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = peft_file(dir.path(), &lora_tensors());
    let out = dir.path().join("walk.y4m");
    let output = dreamwalk()
        .args(["render", "--model"])
        .arg(fixture("tiny-sd"))
        .arg("--lora")
        .arg(format!("{}:0.5", file.display()))
        .args(["--prompt", "a red fox", "--prompt", "a lighthouse"])
        .args(["--steps", "2", "--steps-between", "2", "--inbetween", "0"])
        .args(["--source", "64x48", "--size", "64x48", "--decoder", "vae"])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    assert!(log.contains("LoRA peft.safetensors x0.5"), "{log}");
    // The demo model has no use for one.
    let output = dreamwalk()
        .args(["render", "--lora"])
        .arg(&file)
        .args(["--prompt", "a", "--prompt", "b", "--out"])
        .arg(dir.path().join("demo.y4m"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--model"));
}
