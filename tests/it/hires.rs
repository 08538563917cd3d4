//! `render --hires x4`: a walk in the x4 upscaler's latent space. On tiny-sd + tiny-x4:
//! every frame of a render is the x4 VAE's decode of the walk between the keyframes as
//! `dreamwalk upscale` would upscale them (the base model's full-VAE picture, the same
//! seed), decoded by tiles within a budget; bad x4 settings are refused before any weights
//! load, naming the value.

use std::sync::Arc;

use candle_core::Tensor;
use dreamwalk::frame::RgbaImage;
use dreamwalk::model::decoders::{DecoderKind, Tiling as DecodeTiling};
use dreamwalk::model::tiled::Tiling;
use dreamwalk::model::x4::{
    rgba_of_unit, unit_tensor, HiresEngine, HiresOptions, X4Noise, X4Request, X4Upscaler,
};
use dreamwalk::model::{EndpointRequest, Engine, StableDiffusion};
use dreamwalk::pipeline::{Inbetweens, Settings};
use dreamwalk::record::RecordOptions;
use dreamwalk::upscale::UpscaleMode;
use dreamwalk::usecase::{render, HiresSource, RenderJob};
use dreamwalk::walk::{LoopMode, Walk, WalkSettings};

use crate::support::fixtures::{fixture, max_byte_diff};
use crate::support::images::{png_files, read_png_rgba};
use crate::support::process::dreamwalk;

const SEED: u64 = 7;

fn x4_options() -> HiresOptions {
    HiresOptions {
        steps: 3,
        guidance: 9.0,
        noise_level: 20,
        tiling: Tiling::Whole,
        noise_stop: None,
        // Tiles of 8 latent pixels, no checkpoints: every frame goes the tiled way.
        decode: DecodeTiling::Tiles {
            tile: 8,
            budget_bytes: 0,
        },
    }
}

fn base_model() -> Arc<dyn Engine> {
    let sd = StableDiffusion::load(fixture("tiny-sd").to_str().unwrap(), None).unwrap();
    Arc::new(sd)
}

fn x4_model() -> X4Upscaler {
    X4Upscaler::load(fixture("tiny-x4").to_str().unwrap()).unwrap()
}

fn settings() -> Settings {
    Settings {
        endpoints: EndpointRequest {
            keyframes: vec![
                "a red fox in the snow".into(),
                "a lighthouse on a cliff at night".into(),
            ],
            negative: String::new(),
            seed: SEED,
            seed_per_keyframe: false,
            steps: 3,
            guidance: 7.5,
            image_size: (64, 48),
            init_latents: None,
        },
        walk: WalkSettings {
            steps_between: 4,
            loop_mode: LoopMode::Once,
            ..Default::default()
        },
        decoder: DecoderKind::Vae,
        inbetweens: Inbetweens::Fixed(0),
        target_fps: 30.0,
        upscale: UpscaleMode::None,
        output_size: (256, 192),
        diffuse: 0,
    }
}

/// Keyframe `index` as a person would make it by hand: the base model's full-VAE picture
/// (a PNG's bytes), upscaled by the x4 pipeline with the walk's seed; its x4 latents.
fn upscaled_by_hand(base: &dyn Engine, x4: &X4Upscaler, index: usize) -> Tensor {
    let request = settings().endpoints;
    let latents = base
        .keyframe_latents(&request, index, &mut |_| true)
        .unwrap();
    let picture = base.decode(&latents, DecoderKind::Vae).unwrap();
    upscaled_latents(x4, &picture, request.keyframes[index].prompt())
}

/// The x4 latents of `picture` upscaled with `prompt`, the walk's seed and [`x4_options`].
fn upscaled_latents(x4: &X4Upscaler, picture: &RgbaImage, prompt: &str) -> Tensor {
    let options = x4_options();
    let request = X4Request {
        image: unit_tensor(picture).unwrap(),
        prompt: prompt.to_string(),
        negative: String::new(),
        steps: options.steps,
        guidance: options.guidance,
        noise_level: options.noise_level,
        noise: X4Noise::Seed(SEED),
        tiling: options.tiling,
        noise_stop: None,
    };
    x4.upscale(&request, |_| {}).unwrap().latents
}

#[test]
fn every_hires_frame_is_the_x4_decode_of_the_walk_between_upscaled_keyframes() {
    let base = base_model();
    let engine: Arc<dyn Engine> =
        Arc::new(HiresEngine::new(base.clone(), x4_model(), x4_options()).unwrap());
    assert_eq!(engine.decoders(), vec![DecoderKind::Vae]);
    assert_eq!(engine.decoded_size((64, 48), DecoderKind::Vae), (256, 192));

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("walk");
    let job = RenderJob {
        settings: settings(),
        laps: 1,
        out: out.clone(),
        record: RecordOptions::default(),
        save_latents: None,
        audio: None,
        frames: None,
    };
    let summary = render(engine, &job, &mut ()).expect("hires render");
    let frames = png_files(&out);
    assert_eq!(frames.len() as u64, summary.frames_written);
    assert_eq!(
        frames.len(),
        5,
        "a walk of 4 steps played once has 5 frames"
    );
    assert!(summary.peak_rss_bytes.is_some_and(|b| b > 0));

    // The reference: keyframes upscaled by hand, walked, decoded whole (untiled).
    let x4 = x4_model();
    let keyframes = vec![
        upscaled_by_hand(&*base, &x4, 0),
        upscaled_by_hand(&*base, &x4, 1),
    ];
    let walk = Walk::new(keyframes, settings().walk);
    assert_eq!(walk.path_len(), frames.len());
    let mut differences = Vec::new();
    for (i, png) in frames.iter().enumerate() {
        let frame = read_png_rgba(png);
        assert_eq!((frame.width, frame.height), (256, 192), "frame {i}");
        let latents = walk.latents_at(&walk.position(i)).unwrap();
        let expected = rgba_of_unit(&x4.decode(&latents).unwrap()).unwrap();
        let diff = max_byte_diff(&frame, &expected);
        assert!(
            diff <= 2,
            "frame {i} differs by {diff}/255 from the reference"
        );
        differences.push(frame);
    }
    // A walk, not one picture repeated: the ends differ, and the middle from both.
    assert!(max_byte_diff(&differences[0], &differences[4]) > 10);
    assert!(max_byte_diff(&differences[0], &differences[2]) > 0);
    assert!(max_byte_diff(&differences[4], &differences[2]) > 0);
}

/// The largest absolute difference between two tensors of one shape.
fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn a_hires_walk_diffuses_its_inbetweens_in_the_upscalers_space() {
    let base = base_model();
    let hires = HiresEngine::new(base.clone(), x4_model(), x4_options()).unwrap();
    assert!(hires.can_diffuse());
    let request = settings().endpoints;
    let x4 = x4_model();
    // At t = 0 the position is the first keyframe's x4 latents, as a keyframe is made.
    let at_start = hires
        .diffused_latents(&request, (0, 1), 0.0, &mut |_| true)
        .unwrap();
    let keyframe = upscaled_by_hand(&*base, &x4, 0);
    let start_diff = max_abs_diff(&at_start, &keyframe);
    assert!(start_diff < 1e-4, "t = 0 is keyframe 0 ({start_diff})");
    // Half-way, by hand: the base model's diffused position's picture, upscaled with the two
    // prompts mixed half and half (the same blend of their embeddings) and the walk's seed.
    let t = 0.5;
    let half = hires
        .diffused_latents(&request, (0, 1), t, &mut |_| true)
        .unwrap();
    let base_latents = base
        .diffused_latents(&request, (0, 1), t, &mut |_| true)
        .unwrap();
    let picture = base.decode(&base_latents, DecoderKind::Vae).unwrap();
    let prompts = (request.keyframes[0].prompt(), request.keyframes[1].prompt());
    let mixed = format!("{}:0.5 | {}:0.5", prompts.0, prompts.1);
    let by_hand = upscaled_latents(&x4, &picture, &mixed);
    let half_diff = max_abs_diff(&half, &by_hand);
    assert!(half_diff < 1e-4, "half-way differs by {half_diff}");
    // Sampled for real: not the slerp of the keyframes' x4 latents.
    let slerped = dreamwalk::walk::slerp(t, &keyframe, &upscaled_by_hand(&*base, &x4, 1)).unwrap();
    assert!(max_abs_diff(&half, &slerped) > 1e-2);

    // In a render: one diffused in-between in the pair, frames at 4x.
    let engine: Arc<dyn Engine> = Arc::new(hires);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("walk");
    let job = RenderJob {
        settings: Settings {
            diffuse: 1,
            ..settings()
        },
        laps: 1,
        out: out.clone(),
        record: RecordOptions::default(),
        save_latents: None,
        audio: None,
        frames: None,
    };
    let summary = render(engine, &job, &mut ()).expect("hires render with --diffuse");
    assert_eq!(summary.stats.positions_diffused, 1);
    let frames = png_files(&out);
    assert_eq!(frames.len(), 5);
    assert_eq!(read_png_rgba(&frames[2]).width, 256);
}

#[test]
fn bad_x4_settings_are_refused_before_any_weights_load() {
    let x4 = fixture("tiny-x4").to_str().unwrap().to_string();
    let refused = |options: HiresOptions| {
        HiresSource {
            model: x4.clone(),
            options,
        }
        .check()
        .unwrap_err()
        .to_string()
    };
    let too_noisy = refused(HiresOptions {
        noise_level: 351,
        ..x4_options()
    });
    assert!(too_noisy.contains("351"), "{too_noisy}");
    let no_steps = refused(HiresOptions {
        steps: 0,
        ..x4_options()
    });
    assert!(no_steps.contains("steps"), "{no_steps}");
    let missing = HiresSource {
        model: "/nowhere/x4".into(),
        options: x4_options(),
    }
    .check()
    .unwrap_err()
    .to_string();
    assert!(missing.contains("/nowhere/x4"), "{missing}");

    // The command line: refused before the walk's model loads, nothing written.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("walk.y4m");
    let output = dreamwalk()
        .args(["render", "--prompt", "a", "--prompt", "b", "--hires", "x4"])
        .args(["--hires-model", &x4, "--hires-noise-level", "400"])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("400"), "{stderr}");
    assert!(!out.exists());
}

#[test]
fn hires_render_from_the_command_line_writes_4x_frames() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("walk");
    let output = dreamwalk()
        .args(["render", "--model", fixture("tiny-sd").to_str().unwrap()])
        .args(["--prompt", "a red fox", "--prompt", "a lighthouse"])
        .args(["--steps", "2", "--steps-between", "2", "--inbetween", "0"])
        .args(["--source", "64x48", "--upscale", "none"])
        .args([
            "--hires",
            "x4",
            "--hires-model",
            fixture("tiny-x4").to_str().unwrap(),
        ])
        .args(["--hires-steps", "2", "--hires-decode-gib", "0.01"])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let frames = png_files(&out);
    assert_eq!(frames.len(), 3);
    for png in &frames {
        let frame = read_png_rgba(png);
        assert_eq!((frame.width, frame.height), (256, 192));
    }
    assert!(stderr.contains("x4 upscaler"), "{stderr}");
    assert!(stderr.contains("per frame"), "{stderr}");
    assert!(stderr.contains("peak memory"), "{stderr}");
}
