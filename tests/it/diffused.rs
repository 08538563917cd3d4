//! Diffused in-betweens (`render --diffuse N`, the viewer's Refine): on tiny-sd, a diffused
//! position is the keyframe sampled from the two prompts' blended conditioning and the
//! slerp of their noises; positions go to the middle of the largest gap between decoded
//! frames; a render with them writes the same frames but the refined ones; bad input is
//! refused before any work; the viewer's session puts a refined position in the walk while
//! it plays.

use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Tensor;
use dreamwalk::app::session::Session;
use dreamwalk::frame::RgbaImage;
use dreamwalk::model::scripted::ScriptedEngine;
use dreamwalk::model::sd::{seeded_noise, StableDiffusion};
use dreamwalk::model::text::mix::blend;
use dreamwalk::model::{DecoderKind, EndpointRequest, Engine, ImageKeyframe, Keyframe};
use dreamwalk::pipeline::placement::mean_abs_diff;
use dreamwalk::pipeline::refine::{measure_decoder, RefineGrid, SegmentRefiner};
use dreamwalk::pipeline::{Inbetweens, Settings, SettingsError};
use dreamwalk::upscale::UpscaleMode;
use dreamwalk::walk::{slerp, Easing, LoopMode, WalkSettings};

use crate::support::fixtures::{fixture, max_abs_diff};
use crate::support::images::{png_files, read_png_rgba};
use crate::support::process::dreamwalk;

fn tiny_sd() -> StableDiffusion {
    StableDiffusion::load(fixture("tiny-sd").to_str().unwrap(), None).unwrap()
}

/// Two prompt keyframes on tiny-sd at 64x48, 4 DDIM steps with guidance, each keyframe
/// its own seed (so the two noises differ and their slerp is a third noise).
fn request() -> EndpointRequest {
    EndpointRequest {
        keyframes: vec![
            "a red fox in the snow".into(),
            "a lighthouse at night".into(),
        ],
        negative: "blurry".into(),
        seed: 3,
        seed_per_keyframe: true,
        steps: 4,
        guidance: 7.5,
        image_size: (64, 48),
        init_latents: None,
    }
}

#[test]
fn a_diffused_position_is_the_keyframe_of_the_blended_conditioning_and_noise() {
    let model = tiny_sd();
    let request = request();
    let t = 0.3;
    let diffused = model
        .diffused_latents(&request, (0, 1), t, &mut |_| true)
        .unwrap();
    // The same through the public API: each prompt's conditioning, the mix's blend (a
    // slerp of two), the two seeds' noises slerped, then the model's sampler.
    let conditioning = blend(&[
        (
            model.conditioning("a red fox in the snow").unwrap(),
            1.0 - t,
        ),
        (model.conditioning("a lighthouse at night").unwrap(), t),
    ])
    .unwrap();
    let shape = model.latent_shape(request.image_size);
    let device = candle_core::Device::Cpu;
    let noise = slerp(
        t,
        &seeded_noise(3, &shape, &device).unwrap(),
        &seeded_noise(4, &shape, &device).unwrap(),
    )
    .unwrap();
    let direct = model
        .sample_conditioned(&conditioning, "blurry", &noise, 4, 7.5, |_, _| true)
        .unwrap();
    // Both run the same arithmetic in the same order: 1e-5 is rounding, not a method.
    let diff = max_abs_diff(&diffused, &direct);
    assert!(diff < 1e-5, "diffused vs sampled directly: {diff}");
    // Not a keyframe, nor the slerp between them: those are far away.
    let first = model.keyframe_latents(&request, 0, &mut |_| true).unwrap();
    let second = model.keyframe_latents(&request, 1, &mut |_| true).unwrap();
    let slerped = slerp(t, &first, &second).unwrap();
    assert!(max_abs_diff(&diffused, &first) > 1e-2);
    assert!(max_abs_diff(&diffused, &slerped) > 1e-2);
}

/// The middle of the largest gap between `fixed` places (steps with their latents),
/// measured as the test sees it: each place decoded, the mean absolute difference.
fn expected_next(model: &StableDiffusion, fixed: &[(usize, Tensor)]) -> usize {
    let decoder = measure_decoder(model).unwrap();
    let frames: Vec<RgbaImage> = fixed
        .iter()
        .map(|(_, latents)| model.decode(latents, decoder).unwrap())
        .collect();
    let mut best = None;
    for i in 0..fixed.len() - 1 {
        let (a, b) = (fixed[i].0, fixed[i + 1].0);
        if b < a + 2 {
            continue;
        }
        let gap = mean_abs_diff(&frames[i], &frames[i + 1]);
        if best.is_none_or(|(_, largest)| gap > largest) {
            best = Some(((a + b) / 2, gap));
        }
    }
    best.unwrap().0
}

#[test]
fn positions_bisect_the_largest_gap_between_decoded_frames() {
    let model = tiny_sd();
    let request = request();
    let keyframes = model.endpoints(&request, &mut |_| true).unwrap();
    let grid = RefineGrid {
        steps_between: 12,
        easing: Easing::Linear,
    };
    // N = 1: the only gap is the whole pair; its middle.
    let mut one = SegmentRefiner::new(&model, &keyframes, 0, grid).unwrap();
    let first = one
        .diffuse_next(&model, &request, &mut |_| true)
        .unwrap()
        .unwrap()
        .clone();
    assert_eq!((first.step, first.t, first.blend), (6, 0.5, 0.5));
    let decoder = measure_decoder(&model).unwrap();
    let whole = mean_abs_diff(
        &model.decode(&keyframes[0], decoder).unwrap(),
        &model.decode(&keyframes[1], decoder).unwrap(),
    );
    assert_eq!(first.gap, whole);
    // N = 3: each next one the middle of the largest gap as the test measures it.
    let mut three = SegmentRefiner::new(&model, &keyframes, 0, grid).unwrap();
    let mut fixed = vec![(0, keyframes[0].clone()), (12, keyframes[1].clone())];
    for _ in 0..3 {
        let expected = expected_next(&model, &fixed);
        let made = three
            .diffuse_next(&model, &request, &mut |_| true)
            .unwrap()
            .unwrap()
            .clone();
        assert_eq!(
            made.step,
            expected,
            "fixed before: {:?}",
            three.fixed_steps()
        );
        let at = fixed.partition_point(|(step, _)| *step < made.step);
        fixed.insert(at, (made.step, made.latents.clone()));
    }
    let steps: Vec<usize> = three.made().iter().map(|p| p.step).collect();
    assert_eq!(steps[0], 6, "the first is N = 1's");
    let fixed_steps = three.fixed_steps();
    assert_eq!(fixed_steps.len(), 5);
    assert!(
        fixed_steps.windows(2).all(|w| w[0] < w[1]),
        "distinct and in order: {fixed_steps:?}"
    );
    assert!(steps.iter().all(|&s| 0 < s && s < 12), "{steps:?}");
    // The same pair asked again places and samples the same (a render is reproducible).
    let mut again = SegmentRefiner::new(&model, &keyframes, 0, grid).unwrap();
    for made in three.made() {
        let repeat = again
            .diffuse_next(&model, &request, &mut |_| true)
            .unwrap()
            .unwrap();
        assert_eq!(repeat.step, made.step);
        assert_eq!(max_abs_diff(&repeat.latents, &made.latents), 0.0);
    }
}

/// Renders tiny-sd's two-keyframe walk (4 steps between, no in-betweens, not upscaled) to
/// PNGs in `out` with `extra` arguments.
fn render(out: &std::path::Path, extra: &[&str]) -> Vec<std::path::PathBuf> {
    let result = dreamwalk()
        .arg("render")
        .arg("--model")
        .arg(fixture("tiny-sd"))
        .args(["--prompt", "a red fox in the snow"])
        .args(["--prompt", "a lighthouse at night"])
        .args(["--negative", "blurry", "--seed", "3", "--seed-per-keyframe"])
        .args(["--steps", "4", "--guidance", "7.5", "--steps-between", "4"])
        .args(["--inbetween", "0", "--source", "64x48", "--size", "64x48"])
        .args(["--upscale", "none", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .expect("run dreamwalk");
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "render failed: {stderr}");
    png_files(out)
}

#[test]
fn a_render_with_diffuse_writes_the_same_frames_but_the_refined_ones() {
    let dir = tempfile::tempdir().unwrap();
    let plain = render(&dir.path().join("plain"), &[]);
    let diffused = render(&dir.path().join("diffused"), &["--diffuse", "1"]);
    // 2 keyframes, 4 steps between, played once: 5 frames, numbered in order.
    assert_eq!(plain.len(), 5);
    assert_eq!(diffused.len(), 5);
    for (i, file) in diffused.iter().enumerate() {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.contains(&format!("{i:06}")), "frame {i} is {name}");
    }
    let frames = |files: &[std::path::PathBuf]| -> Vec<RgbaImage> {
        files.iter().map(|f| read_png_rgba(f)).collect()
    };
    let (plain, diffused) = (frames(&plain), frames(&diffused));
    // The keyframes are the same; the middle (N = 1's place) and the slerps beside it,
    // now between a keyframe and the diffused position, are not.
    assert_eq!(plain[0].pixels, diffused[0].pixels);
    assert_eq!(plain[4].pixels, diffused[4].pixels);
    for i in 1..4 {
        assert_ne!(plain[i].pixels, diffused[i].pixels, "frame {i}");
    }
    // Frame 2 is the position sampled at t = 0.5, decoded.
    let model = tiny_sd();
    let latents = model
        .diffused_latents(&request(), (0, 1), 0.5, &mut |_| true)
        .unwrap();
    let decoded = model.decode(&latents, DecoderKind::Vae).unwrap();
    assert_eq!(diffused[2].pixels, decoded.pixels);
}

fn scripted_settings(diffuse: usize) -> Settings {
    Settings {
        endpoints: EndpointRequest {
            keyframes: vec!["a".into(), "b".into()],
            negative: String::new(),
            seed: 0,
            seed_per_keyframe: false,
            steps: 1,
            guidance: 1.0,
            image_size: (32, 16),
            init_latents: None,
        },
        walk: WalkSettings {
            steps_between: 4,
            loop_mode: LoopMode::PingPong,
            ..Default::default()
        },
        decoder: DecoderKind::Taesd,
        inbetweens: Inbetweens::Fixed(0),
        target_fps: 60.0,
        upscale: UpscaleMode::None,
        output_size: (32, 16),
        diffuse,
    }
}

#[test]
fn bad_diffuse_values_are_refused_before_any_work() {
    let grey = ScriptedEngine::grey();
    let count = scripted_settings(4).validate(&grey).unwrap_err();
    assert_eq!(
        count,
        SettingsError::DiffuseCount {
            diffuse: 4,
            steps_between: 4
        }
    );
    assert!(count
        .to_string()
        .starts_with("--diffuse 4: a keyframe pair walked in 4 steps"));
    assert_eq!(scripted_settings(3).validate(&grey), Ok(()));
    // A model that cannot sample in-betweens is named.
    let premade = ScriptedEngine::premade(vec![RgbaImage::new(32, 16)]);
    let model = scripted_settings(1).validate(&premade).unwrap_err();
    assert_eq!(
        model.to_string(),
        "--diffuse 1: scripted engine (pre-made frames) cannot sample in-betweens"
    );
    // A picture keyframe has no prompt to blend: named by index and file.
    let mut pictured = scripted_settings(1);
    pictured.endpoints.keyframes[1] = Keyframe::Image(ImageKeyframe::new(
        "photo.png".into(),
        Arc::new(RgbaImage::new(8, 8)),
    ));
    let picture = pictured.validate(&grey).unwrap_err().to_string();
    assert!(
        picture.contains("keyframe 2 is a picture (photo.png)"),
        "{picture}"
    );

    // On the command line: refused, naming the value, before the output is made.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("walk.y4m");
    let result = dreamwalk()
        .arg("render")
        .arg("--model")
        .arg(fixture("tiny-sd"))
        .args(["--prompt", "a", "--prompt", "b", "--steps-between", "3"])
        .args([
            "--diffuse",
            "3",
            "--source",
            "64x48",
            "--size",
            "64x48",
            "--out",
        ])
        .arg(&out)
        .output()
        .expect("run dreamwalk");
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success(), "{stderr}");
    assert!(stderr.contains("--diffuse 3"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!out.exists(), "nothing written");
}

/// What the display shows: each frame's place in the pair and its grey level.
type Shown = crossbeam_channel::Receiver<(usize, f64, u8)>;

/// Waits for a shown frame at `t` in pair 0 whose grey is `grey`, counting the frames
/// shown meanwhile; panics after a minute.
fn wait_for_grey_at(shown: &Shown, t: f64, grey: u8) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut frames = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (segment, at, level) = shown
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no frame at t = {t} of grey {grey} within a minute"));
        frames += 1;
        if segment == 0 && (at - t).abs() < 1e-9 && level == grey {
            return frames;
        }
    }
}

#[test]
fn refine_replaces_a_position_while_the_walk_plays() {
    // Scripted keyframes 0 and 4 (grey 0 and 80); their line at 0.5 is 2 (grey 40); the
    // diffused position there sits DIFFUSED_BUMP = 1 above (grey 60).
    let engine: Arc<dyn Engine> = Arc::new(ScriptedEngine::grey());
    let mut session = Session::new(engine);
    let (tx, rx) = crossbeam_channel::unbounded();
    session.play(
        scripted_settings(0),
        Box::new(move |frame| {
            let image = frame.image.to_cpu().expect("CPU frames");
            let source = &frame.source;
            let _ = tx.send((source.segment, source.t, image.pixels[0]));
        }),
    );
    wait_for_grey_at(&rx, 0.5, 40);
    session.apply(&scripted_settings(1));
    // The walk plays on and, passing 0.5 again, shows the diffused position there.
    let frames = wait_for_grey_at(&rx, 0.5, 60);
    assert!(frames >= 1);
    let stats = session.stats().unwrap();
    assert_eq!(stats.refined, Some((1, 1)));
    assert_eq!(stats.positions_diffused, 1);
    // Its neighbours are slerped toward it now: t = 0.25 lies between 0 and 3 (grey 30).
    wait_for_grey_at(&rx, 0.25, 30);
    // Refine off: the plain slerp again.
    session.apply(&scripted_settings(0));
    wait_for_grey_at(&rx, 0.5, 40);
    assert!(session.stats().unwrap().frames_shown > 0);
    session.stop();
}

#[test]
fn the_refine_toggle_reaches_the_walk_and_its_counts_show() {
    use crate::viewer::{click, harness, settings, step_until};
    use egui_kittest::kittest::Queryable;
    let mut harness = harness();
    click(&mut harness, "Play");
    // The first frame, and the keyframes' thumbnails: they come into the prompt rows
    // above the controls, and a click aimed before they arrive would land beside Refine.
    step_until(&mut harness, "the first frame and the thumbnails", |app| {
        app.session()
            .is_some_and(|s| s.current_frame().is_some() && s.keyframe_thumbnails().is_some())
    });
    harness.run_steps(2);
    assert_eq!(settings(&harness).diffuse, 0);
    harness.get_by_label("Refine").click();
    harness.run_steps(2);
    // The form's 3 per pair, on the walk's one pair (ping-pong between A and B).
    step_until(&mut harness, "Refine in the walk's settings", |app| {
        app.session()
            .and_then(|s| s.settings())
            .is_some_and(|s| s.diffuse == 3)
    });
    step_until(&mut harness, "the refined count", |app| {
        app.session()
            .and_then(|s| s.stats())
            .is_some_and(|s| s.refined.is_some_and(|(_, total)| total == 3))
    });
    harness.get_by_label("Refine").click();
    harness.run_steps(2);
    step_until(&mut harness, "Refine off", |app| {
        app.session()
            .and_then(|s| s.settings())
            .is_some_and(|s| s.diffuse == 0)
    });
    click(&mut harness, "Stop");
}
