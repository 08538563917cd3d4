//! Prompt mixes (`"a fox:0.7 | a wolf:0.3"`): on tiny-sd, a mix's keyframe is the one
//! sampled from the blend of its parts' text-encoder outputs, computed here from the
//! encoder's own outputs (slerp for two parts, a normalised weighted sum for more); bad
//! weights are refused before any work; the pipeline re-samples only changed keyframes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use dreamwalk::model::scripted::ScriptedEngine;
use dreamwalk::model::sd::{seeded_noise, StableDiffusion};
use dreamwalk::model::{DecoderKind, EndpointRequest, Engine, Keyframe};
use dreamwalk::pipeline::{Inbetweens, Pipeline, PipelineOptions, RingPolicy, Settings};
use dreamwalk::upscale::UpscaleMode;
use dreamwalk::walk::WalkSettings;

use crate::support::fixtures::fixture;
use crate::support::process::dreamwalk;

fn tiny_sd() -> StableDiffusion {
    StableDiffusion::load(fixture("tiny-sd").to_str().unwrap(), None).unwrap()
}

/// Two keyframes on tiny-sd at 64x48, 6 DDIM steps with guidance (so the negative prompt's
/// half of the batch runs too).
fn request(first: &str) -> EndpointRequest {
    EndpointRequest {
        keyframes: vec![first.into(), "a lighthouse at night".into()],
        negative: "blurry".into(),
        seed: 7,
        seed_per_keyframe: false,
        steps: 6,
        guidance: 7.5,
        image_size: (64, 48),
        init_latents: None,
    }
}

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(candle_core::DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    values(a)
        .iter()
        .zip(values(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// The largest magnitude in `t`.
fn largest(t: &Tensor) -> f64 {
    values(t).iter().fold(0.0, |m, v| m.max(v.abs()))
}

/// Slerp as stable-diffusion-videos writes it, in f64: one angle over the whole tensor.
fn reference_slerp(t: f64, a: &Tensor, b: &Tensor) -> Tensor {
    let (x, y) = (values(a), values(b));
    let dot: f64 = x.iter().zip(&y).map(|(p, q)| p * q).sum();
    let norm = |v: &[f64]| v.iter().map(|p| p * p).sum::<f64>().sqrt();
    let cos = dot / (norm(&x) * norm(&y));
    let (s0, s1) = if cos.abs() > 0.9995 {
        (1.0 - t, t)
    } else {
        let theta = cos.acos();
        (
            ((1.0 - t) * theta).sin() / theta.sin(),
            (t * theta).sin() / theta.sin(),
        )
    };
    let blended: Vec<f32> = x
        .iter()
        .zip(&y)
        .map(|(p, q)| (s0 * p + s1 * q) as f32)
        .collect();
    Tensor::from_vec(blended, a.dims(), &Device::Cpu).unwrap()
}

/// Keyframe 0 of `request` as the engine samples it, and the same noise sampled from
/// `cond` by hand.
fn mix_and_reference(
    model: &StableDiffusion,
    request: &EndpointRequest,
    cond: &Tensor,
) -> (Tensor, Tensor) {
    let mixed = model.keyframe_latents(request, 0, &mut |_| true).unwrap();
    let shape = model.latent_shape(request.image_size);
    let init = seeded_noise(request.seed, &shape, &Device::Cpu).unwrap();
    let reference = model
        .sample_conditioned(
            cond,
            &request.negative,
            &init,
            request.steps,
            request.guidance,
            |_, _| true,
        )
        .unwrap();
    (mixed, reference)
}

#[test]
fn a_two_part_mix_samples_the_slerp_of_its_parts_embeddings() {
    let model = tiny_sd();
    let fox = model.encode_prompt("a red fox").unwrap();
    let wolf = model.encode_prompt("a grey wolf").unwrap();
    // Weights 0.7 and 0.3: 30% of the way from the fox to the wolf.
    let expected = reference_slerp(0.3, &fox, &wolf);
    let prompt = "a red fox:0.7 | a grey wolf:0.3";
    let blended = model.conditioning(prompt).unwrap();
    // f32 arithmetic against f64: rounding of values of order 1 (the hidden states are
    // layer-normed), ~1e-7; 1e-5 leaves room and still fails any other weight or formula.
    let diff = max_abs_diff(&blended, &expected);
    assert!(diff < 1e-5, "conditioning vs slerp: {diff}");
    // And the parts really differ: a wrong t would be seen.
    assert!(max_abs_diff(&reference_slerp(0.4, &fox, &wolf), &expected) > 1e-3);

    let (mixed, reference) = mix_and_reference(&model, &request(prompt), &expected);
    // The same noise and sampler from conditionings one f32 ulp apart (~2e-7 at values of
    // ~3): six DDIM steps with guidance 7.5 amplify that to ~6e-6 of the latents' largest
    // value (tiny-sd's random weights give latents up to ~30); 5e-5 of it is the bound.
    let bound = 5e-5 * largest(&reference);
    let diff = max_abs_diff(&mixed, &reference);
    assert!(
        diff < bound,
        "keyframe vs sampled from the slerped embeddings: {diff} (bound {bound})"
    );
    // A slightly different mix (t = 0.35) is far outside it, and so is the fox alone.
    let (off, _) = mix_and_reference(
        &model,
        &request("a red fox:0.65 | a grey wolf:0.35"),
        &expected,
    );
    assert!(max_abs_diff(&off, &reference) > 10.0 * bound);
    let fox_only = model
        .keyframe_latents(&request("a red fox"), 0, &mut |_| true)
        .unwrap();
    assert!(max_abs_diff(&mixed, &fox_only) > 10.0 * bound);
    // The keyframe is the sampler run on the engine's own blend, exactly.
    let (_, own) = mix_and_reference(&model, &request(prompt), &blended);
    assert_eq!(values(&mixed), values(&own));
}

#[test]
fn weight_one_to_zero_is_the_plain_prompt_exactly() {
    let model = tiny_sd();
    let plain = model
        .keyframe_latents(&request("a red fox"), 0, &mut |_| true)
        .unwrap();
    for mix in [
        "a red fox:1 | a grey wolf:0",
        "a grey wolf:0 | a red fox:0.25",
        "a red fox:3",
    ] {
        let mixed = model
            .keyframe_latents(&request(mix), 0, &mut |_| true)
            .unwrap();
        assert_eq!(values(&mixed), values(&plain), "{mix}");
    }
}

#[test]
fn three_parts_are_the_normalised_weighted_sum() {
    let model = tiny_sd();
    let parts = ["a red fox", "a grey wolf", "a brown bear"];
    let embeddings: Vec<Vec<f64>> = parts
        .iter()
        .map(|p| values(&model.encode_prompt(p).unwrap()))
        .collect();
    // Weights 1, 2, 1: a quarter, a half, a quarter.
    let sum: Vec<f32> = (0..embeddings[0].len())
        .map(|i| {
            (0.25 * embeddings[0][i] + 0.5 * embeddings[1][i] + 0.25 * embeddings[2][i]) as f32
        })
        .collect();
    let dims = model.encode_prompt("x").unwrap().dims().to_vec();
    let expected = Tensor::from_vec(sum, dims, &Device::Cpu).unwrap();
    let prompt = "a red fox | a grey wolf:2 | a brown bear:1";
    let diff = max_abs_diff(&model.conditioning(prompt).unwrap(), &expected);
    assert!(diff < 1e-5, "conditioning vs weighted sum: {diff}");
    let (mixed, reference) = mix_and_reference(&model, &request(prompt), &expected);
    // As for two parts: conditionings an ulp apart, amplified by the guided sampler.
    let bound = 5e-5 * largest(&reference);
    let diff = max_abs_diff(&mixed, &reference);
    assert!(
        diff < bound,
        "keyframe vs sampled from the weighted sum: {diff} (bound {bound})"
    );
    // Weights 1, 1, 2 instead: far outside it.
    let (off, _) = mix_and_reference(
        &model,
        &request("a red fox | a grey wolf | a brown bear:2"),
        &expected,
    );
    assert!(max_abs_diff(&off, &reference) > 10.0 * bound);
}

#[test]
fn bad_weights_are_refused_naming_the_keyframe_and_the_weight() {
    let engine = ScriptedEngine::grey();
    let settings = |prompt: &str| Settings {
        endpoints: EndpointRequest {
            keyframes: vec!["a lighthouse".into(), prompt.into()],
            image_size: (32, 16),
            ..request("x")
        },
        ..scripted_settings()
    };
    let error = |prompt: &str| settings(prompt).validate(&engine).unwrap_err().to_string();
    assert_eq!(
        error("a fox:0.5 | a wolf:-0.5"),
        "keyframe 2 (\"a fox:0.5 | a wolf:-0.5\"): part 2 (\"a wolf\") has weight -0.5: \
         weights must be 0 or more"
    );
    assert_eq!(
        error("a fox:0 | a wolf:0"),
        "keyframe 2 (\"a fox:0 | a wolf:0\"): the mix's weights sum to 0: give at least one \
         part a weight above 0"
    );
    assert!(error("a fox | ").contains("part 2 of the mix is empty"));
    // Prose with colons and a clock time are plain prompts, and run.
    for fine in [
        "a sign that says: hello",
        "the clock at 10:30",
        "a fox:0.7 | a wolf:0.3",
    ] {
        assert_eq!(settings(fine).validate(&engine), Ok(()), "{fine}");
    }
}

#[test]
fn render_refuses_bad_weights_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("walk.y4m");
    let result = dreamwalk()
        .args([
            "render",
            "--prompt",
            "a lighthouse",
            "--prompt",
            "a fox:-1 | a wolf",
        ])
        .args(["--source", "64x64", "--size", "64x64", "--out"])
        .arg(&out)
        .output()
        .expect("run dreamwalk");
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success(), "{stderr}");
    assert!(
        stderr.contains("keyframe 2") && stderr.contains("weight -1"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!out.exists(), "nothing written");
}

fn scripted_settings() -> Settings {
    Settings {
        endpoints: EndpointRequest {
            keyframes: vec!["a".into(), "b:1 | c:1".into(), "d".into()],
            negative: String::new(),
            seed: 0,
            seed_per_keyframe: false,
            steps: 2,
            guidance: 1.0,
            image_size: (32, 16),
            init_latents: None,
        },
        walk: WalkSettings {
            steps_between: 1000,
            ..Default::default()
        },
        decoder: DecoderKind::Taesd,
        inbetweens: Inbetweens::Fixed(0),
        target_fps: 30.0,
        upscale: UpscaleMode::None,
        output_size: (32, 16),
        diffuse: 0,
    }
}

/// Pops frames until one of `generation` comes (frames keep coming meanwhile).
fn wait_for_generation(pipeline: &Pipeline, generation: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while pipeline.ring().pop().unwrap().source.generation < generation {
        assert!(
            Instant::now() < deadline,
            "generation {generation} never came"
        );
    }
}

#[test]
fn moving_one_weight_re_samples_only_that_keyframe() {
    let engine = Arc::new(ScriptedEngine::grey());
    let options = PipelineOptions {
        ring_capacity: 4,
        policy: RingPolicy::Record,
        upscale_workers: 1,
        ..Default::default()
    };
    let pipeline = Pipeline::start(engine.clone(), scripted_settings(), options);
    wait_for_generation(&pipeline, 1);
    assert_eq!(
        engine.keyframes_sampled(),
        3,
        "the first walk samples all three"
    );

    // The mix's weight moves: keyframe B alone is sampled again.
    pipeline.update_settings(|s| s.endpoints.keyframes[1] = Keyframe::from("b:0.3 | c:0.7"));
    wait_for_generation(&pipeline, 2);
    assert_eq!(engine.keyframes_sampled(), 4);
    // Back to a weight sampled before: nothing to sample, the kept latents return.
    pipeline.update_settings(|s| s.endpoints.keyframes[1] = Keyframe::from("b:1 | c:1"));
    wait_for_generation(&pipeline, 3);
    assert_eq!(engine.keyframes_sampled(), 4);
    // A keyframe added at the end: one more.
    pipeline.update_settings(|s| s.endpoints.keyframes.push(Keyframe::from("e")));
    wait_for_generation(&pipeline, 4);
    assert_eq!(engine.keyframes_sampled(), 5);
    // Inputs every keyframe shares (the steps, the negative, the seed): all again.
    pipeline.update_settings(|s| s.endpoints.steps = 3);
    wait_for_generation(&pipeline, 5);
    assert_eq!(engine.keyframes_sampled(), 9);
    pipeline.update_settings(|s| s.endpoints.negative = "blurry".into());
    wait_for_generation(&pipeline, 6);
    assert_eq!(engine.keyframes_sampled(), 13);
    // With a seed per keyframe, each keyframe's own seed decides: keyframe A keeps seed 0
    // (0 + 0); B, C, D get 1, 2, 3 and are sampled again.
    pipeline.update_settings(|s| s.endpoints.seed_per_keyframe = true);
    wait_for_generation(&pipeline, 7);
    assert_eq!(engine.keyframes_sampled(), 16);
}

#[test]
fn a_mix_row_has_a_weight_slider_per_part_that_re_samples_only_its_keyframe() {
    use crate::viewer::{click, frames_shown, harness, set_slider, set_text, settings, step_until};
    use dreamwalk::app::{PlayState, ViewerApp};
    use egui::accesskit::Role;
    use egui_kittest::kittest::Queryable;

    let stats = |app: &ViewerApp| app.session().and_then(|s| s.stats()).unwrap_or_default();
    let mut harness = harness();
    set_text(&mut harness, "Prompt A", "a red fox:0.7 | a grey wolf:0.3");
    set_text(&mut harness, "Prompt B", "a city at night");
    click(&mut harness, "Play");
    step_until(&mut harness, "the first walk", |app| {
        stats(app).generation >= 1
    });
    assert_eq!(stats(harness.state()).keyframes_sampled, 2);

    // One slider per part, named by the keyframe's letter, the part's number and text.
    let first = "weight A1: a red fox";
    let second = "weight A2: a grey wolf";
    let slider = |h: &egui_kittest::Harness<'_, ViewerApp>, label: &str| {
        h.query_by_role_and_label(Role::SpinButton, label).is_some()
    };
    assert!(slider(&harness, first) && slider(&harness, second));
    assert!(
        !slider(&harness, "weight B1: a city at night"),
        "B is no mix"
    );
    set_slider(&mut harness, second, 0.55);
    // The row's text and the walk's keyframe take the weight at once.
    let wanted = Keyframe::from("a red fox:0.7 | a grey wolf:0.55");
    assert_eq!(settings(&harness).endpoints.keyframes[0], wanted);
    let generation = stats(harness.state()).generation;
    let shown = frames_shown(harness.state());
    step_until(&mut harness, "the keyframe re-sampled", |app| {
        stats(app).generation > generation
    });
    // Only keyframe A was sampled again; the walk played on meanwhile.
    assert_eq!(stats(harness.state()).keyframes_sampled, 3);
    assert!(frames_shown(harness.state()) > shown);
    assert_eq!(
        harness.state().session().unwrap().state(),
        PlayState::Playing
    );

    // Both weights at 0: refused with a notice naming the keyframe; the walk keeps its mix.
    set_slider(&mut harness, first, 0.0);
    set_slider(&mut harness, second, 0.0);
    let notice = harness.state().notice().unwrap_or_default().to_string();
    assert!(
        notice.contains("prompt A") && notice.contains("sum to 0"),
        "{notice}"
    );
    assert_eq!(
        settings(&harness).endpoints.keyframes[0],
        Keyframe::from("a red fox:0 | a grey wolf:0.55")
    );
    assert_eq!(
        harness.state().session().unwrap().state(),
        PlayState::Playing
    );
}
