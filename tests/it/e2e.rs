//! The whole model against diffusers: the sampling loops with the fixture UNet (ddim,
//! ddim_v, euler), and `tiny-sd/` end to end against `e2e/` (library and `render`).

use candle_core::{Device, Tensor};
use dreamwalk::model::schedulers::{denoise, Sampler, SamplerKind, SchedulerConfig};
use dreamwalk::model::sd::StableDiffusion;
use dreamwalk::model::unet::UNet2DConditionModel;
use dreamwalk::model::{EndpointRequest, Engine};

use crate::support::fixtures::{fixture, load_tensors, max_abs_diff};
use crate::support::images::read_png;
use crate::support::process::dreamwalk;

fn fixture_unet() -> UNet2DConditionModel {
    // unet/ keeps config.json + model.safetensors side by side, like a diffusers folder.
    UNet2DConditionModel::load(&fixture("unet"), &Device::Cpu).unwrap()
}

/// Runs a guided sampling loop like the SD pipeline: context row 0 uncond, row 1 cond.
fn run_loop(
    case: &str,
    config: &SchedulerConfig,
    kind: SamplerKind,
    steps: usize,
    guidance: f64,
    init: &Tensor,
) -> Tensor {
    let case = load_tensors(case);
    let unet = fixture_unet();
    let context = if guidance > 1.0 {
        Tensor::cat(&[&case["uncond"], &case["cond"]], 0).unwrap()
    } else {
        case["cond"].clone()
    };
    let sampler = Sampler::new(config, kind, steps).unwrap();
    denoise(
        &sampler,
        init,
        guidance,
        |x, t| unet.forward(x, t, &context),
        |_, _| {},
    )
    .unwrap()
}

#[test]
fn ddim_twenty_steps_with_guidance_matches() {
    let case = load_tensors("ddim/case.safetensors");
    let mut config =
        SchedulerConfig::stable_diffusion(dreamwalk::model::schedulers::PredictionType::Epsilon);
    config.set_alpha_to_one = false;
    let guidance = case["guidance_scale"].to_vec1::<f32>().unwrap()[0] as f64;
    let out = run_loop(
        "ddim/case.safetensors",
        &config,
        SamplerKind::Ddim,
        20,
        guidance,
        &case["init_latents"],
    );
    // 1e-3: guidance 7.5 amplifies f32 rounding over 20 steps (README: f32 vs f64 5.5e-5).
    let diff = max_abs_diff(&out, &case["final_latents"]);
    assert!(diff <= 1e-3, "ddim final latents max |diff| {diff}");
}

#[test]
fn ddim_v_prediction_matches() {
    let case = load_tensors("ddim_v/case.safetensors");
    let config = SchedulerConfig::load(&fixture("ddim_v/scheduler_config.json")).unwrap();
    let guidance = case["guidance_scale"].to_vec1::<f32>().unwrap()[0] as f64;
    let steps = case["timesteps"].dim(0).unwrap();
    let out = run_loop(
        "ddim_v/case.safetensors",
        &config,
        SamplerKind::Ddim,
        steps,
        guidance,
        &case["init_latents"],
    );
    let diff = max_abs_diff(&out, &case["final_latents"]);
    assert!(diff <= 1e-3, "ddim_v final latents max |diff| {diff}");
}

#[test]
fn euler_trailing_few_steps_match() {
    let case = load_tensors("euler/case.safetensors");
    let config = SchedulerConfig::load(&fixture("euler/scheduler_config.json")).unwrap();
    for n in [1, 2, 4] {
        let out = run_loop(
            "euler/case.safetensors",
            &config,
            SamplerKind::Euler,
            n,
            0.0,
            &case["init_latents"],
        );
        let diff = max_abs_diff(&out, &case[&format!("final_latents_{n}")]);
        assert!(diff <= 1e-3, "euler {n} steps: max |diff| {diff}");
    }
}

fn settings() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("e2e/settings.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The `e2e/` pipeline call: both prompts, the negative prompt, size, steps, guidance and
/// the given initial latents of `e2e/settings.json` and `e2e/case.safetensors`.
pub fn e2e_request() -> EndpointRequest {
    request_from(&settings(), &load_tensors("e2e/case.safetensors"))
}

/// The pipeline call a fixture's `settings.json` (`s`) and case file describe: its two
/// prompts, negative prompt, steps, guidance, size and initial latents.
pub fn request_from(
    s: &serde_json::Value,
    case: &std::collections::HashMap<String, candle_core::Tensor>,
) -> EndpointRequest {
    EndpointRequest {
        keyframes: vec![
            s["prompt_a"].as_str().unwrap().into(),
            s["prompt_b"].as_str().unwrap().into(),
        ],
        negative: s["negative"].as_str().unwrap().into(),
        seed: 0,
        seed_per_keyframe: false,
        steps: s["steps"].as_u64().unwrap() as usize,
        guidance: s["guidance"].as_f64().unwrap(),
        image_size: (
            s["width"].as_u64().unwrap() as u32,
            s["height"].as_u64().unwrap() as u32,
        ),
        init_latents: Some(case["init_latents"].clone()),
    }
}

#[test]
fn tiny_sd_endpoints_match_the_diffusers_pipeline() {
    let case = load_tensors("e2e/case.safetensors");
    let model = StableDiffusion::load(fixture("tiny-sd").to_str().unwrap(), None).unwrap();
    let request = e2e_request();
    let latents = model.endpoints(&request, &mut |_| true).unwrap();
    for (ours, name) in latents.iter().zip(["final_latents_a", "final_latents_b"]) {
        let diff = max_abs_diff(ours, &case[name]);
        assert!(diff <= 1e-3, "{name}: max |diff| {diff}");
    }
}

#[test]
fn tiny_sd_render_frames_match_the_walk_images() {
    let printed = render_matches_the_walk_images(&["--gpu", "off"]);
    assert!(printed.contains("| sampling on the CPU |"), "{printed}");
}

/// `dreamwalk render` of the `e2e/` walk (with `extra` arguments) writes frames within
/// 2/255 of diffusers' decoded walk images; returns what it printed.
pub fn render_matches_the_walk_images(extra: &[&str]) -> String {
    let s = settings();
    let case = load_tensors("e2e/case.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let size = format!("{}x{}", s["width"], s["height"]);
    let walk_t = case["walk_t"].to_vec1::<f32>().unwrap();
    let output = dreamwalk()
        .arg("render")
        .arg("--model")
        .arg(fixture("tiny-sd"))
        .args([
            "--prompt",
            s["prompt_a"].as_str().unwrap(),
            "--prompt",
            s["prompt_b"].as_str().unwrap(),
        ])
        .args(["--negative", s["negative"].as_str().unwrap()])
        .args([
            "--steps",
            &s["steps"].to_string(),
            "--guidance",
            &s["guidance"].to_string(),
        ])
        .args([
            "--source",
            &size,
            "--size",
            &size,
            "--upscale",
            "none",
            "--decoder",
            "vae",
        ])
        .args([
            "--inbetween",
            "0",
            "--steps-between",
            &(walk_t.len() - 1).to_string(),
        ])
        .arg("--init-latents")
        .arg(fixture("e2e/case.safetensors"))
        .args(extra)
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    let expected = case["walk_images"]
        .to_dtype(candle_core::DType::F32)
        .unwrap();
    for i in 0..walk_t.len() {
        let path = dir.path().join(format!("frame_{i:06}.png"));
        let png = read_png(&path);
        let channels = png.color_type.samples();
        let reference = expected
            .get(i)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mut worst = 0f32;
        for (p, r) in png
            .pixels
            .chunks_exact(channels)
            .zip(reference.chunks_exact(3))
        {
            for c in 0..3 {
                worst = worst.max((p[c] as f32 / 255.0 - r[c]).abs());
            }
        }
        // 2/255: u8 rounding of the reference plus f32 differences in the VAE.
        assert!(
            worst <= 2.0 / 255.0,
            "frame {i}: max diff {:.2}/255",
            worst * 255.0
        );
    }
    stderr
}
