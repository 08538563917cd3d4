//! `dreamwalk render` end to end on the built-in demo model: frame count, order,
//! determinism, and clear errors.

use std::path::Path;

use crate::support::images::{png_files, png_texts, read_png};
use crate::support::process::dreamwalk;

/// Renders a short demo walk into `out`; returns the PNG files in name order.
fn render(out: &Path, seed: u64) -> Vec<std::path::PathBuf> {
    let status = dreamwalk()
        .args([
            "render",
            "--prompt",
            "a red fox",
            "--prompt",
            "a lighthouse",
        ])
        .args([
            "--seed",
            &seed.to_string(),
            "--steps",
            "3",
            "--steps-between",
            "3",
        ])
        .args(["--inbetween", "1", "--source", "128x64", "--size", "160x96"])
        .arg("--out")
        .arg(out)
        .status()
        .expect("run dreamwalk");
    assert!(status.success(), "render failed: {status}");
    png_files(out)
}

#[test]
fn demo_render_writes_every_frame_in_order_and_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    let first = render(&a, 7);
    // 2 keyframes, 3 steps between: 4 decoded frames and 3 in-betweens.
    assert_eq!(first.len(), 7);
    for (i, file) in first.iter().enumerate() {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.contains(&format!("{i:06}")), "frame {i} is {name}");
        let png = read_png(file);
        assert_eq!((png.width, png.height), (160, 96));
    }
    let images: Vec<_> = first.iter().map(|f| read_png(f).pixels).collect();
    assert!(images.windows(2).any(|w| w[0] != w[1]), "the walk moves");
    // Same settings, same bytes; another seed, other frames.
    let again = render(&b, 7);
    for (x, y) in first.iter().zip(&again) {
        assert_eq!(std::fs::read(x).unwrap(), std::fs::read(y).unwrap());
    }
    let other = render(&c, 8);
    assert_ne!(read_png(&first[0]).pixels, read_png(&other[0]).pixels);
    // What the demo model saves says so.
    for file in &first {
        let texts = png_texts(file);
        let comment = &texts[0].1;
        assert!(
            comment.starts_with("demo model (random weights)")
                && comment.contains("a red fox | a lighthouse"),
            "{comment}"
        );
    }
}

fn render_error(args: &[&str]) -> String {
    let out = dreamwalk().args(args).output().expect("run dreamwalk");
    assert!(!out.status.success(), "expected failure for {args:?}");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "no panic: {stderr}");
    assert!(!stderr.contains("RUST_BACKTRACE"), "no backtrace: {stderr}");
    stderr
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    let one = render_error(&["render", "--prompt", "a", "--out", out]);
    assert!(one.contains("two or more prompts"), "{one}");
    let empty = render_error(&["render", "--prompt", "a", "--prompt", " ", "--out", out]);
    assert!(empty.contains("prompt 2 is empty"), "{empty}");
    let size = render_error(&[
        "render", "--prompt", "a", "--prompt", "b", "--size", "12by4", "--out", out,
    ]);
    assert!(size.contains("not a size"), "{size}");
    let source = render_error(&[
        "render", "--prompt", "a", "--prompt", "b", "--source", "100x60", "--out", out,
    ]);
    assert!(source.contains("multiples of"), "{source}");
    let unwritable = render_error(&[
        "render",
        "--prompt",
        "a",
        "--prompt",
        "b",
        "--out",
        "/proc/dreamwalk-out",
    ]);
    assert!(unwritable.contains("/proc/dreamwalk-out"), "{unwritable}");
    let model = render_error(&[
        "render",
        "--model",
        "/nonexistent/model",
        "--prompt",
        "a",
        "--prompt",
        "b",
        "--out",
        out,
    ]);
    assert!(model.contains("/nonexistent/model"), "{model}");
}

/// A quick demo render (one sampler step, one walk step, 64x64, no upscale) with `extra`
/// arguments; returns its stderr, asserting it succeeded.
fn quick_render(out: &Path, extra: &[&str]) -> String {
    let result = dreamwalk()
        .args([
            "render",
            "--prompt",
            "a red fox",
            "--prompt",
            "a lighthouse",
        ])
        .args(["--steps", "1", "--guidance", "1", "--steps-between", "1"])
        .args(["--inbetween", "0", "--source", "64x64", "--upscale", "none"])
        .args(extra)
        .arg("--out")
        .arg(out)
        .output()
        .expect("run dreamwalk");
    let stderr = String::from_utf8_lossy(&result.stderr).into_owned();
    assert!(result.status.success(), "render failed: {stderr}");
    stderr
}

#[test]
fn save_latents_writes_the_keyframes_the_walk_used() {
    use dreamwalk::model::{EndpointRequest, Engine, StableDiffusion};
    let dir = tempfile::tempdir().unwrap();
    let latents = dir.path().join("latents.safetensors");
    quick_render(
        &dir.path().join("out.y4m"),
        &["--save-latents", latents.to_str().unwrap()],
    );
    let saved = candle_core::safetensors::load(&latents, &candle_core::Device::Cpu).unwrap();
    assert_eq!(saved.len(), 2, "{:?}", saved.keys());
    let request = EndpointRequest {
        keyframes: vec!["a red fox".into(), "a lighthouse".into()],
        negative: String::new(),
        seed: 42,
        seed_per_keyframe: false,
        steps: 1,
        guidance: 1.0,
        image_size: (64, 64),
        init_latents: None,
    };
    let expected = StableDiffusion::demo()
        .endpoints(&request, &mut |_| true)
        .unwrap();
    for (i, want) in expected.iter().enumerate() {
        let got = &saved[&format!("keyframe_{i}")];
        let diff = crate::support::fixtures::max_abs_diff(got, want);
        assert!(diff < 1e-5, "keyframe {i} differs by {diff}");
    }
}

#[test]
fn a_prompt_past_77_tokens_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let long = "a red fox in the snow ".repeat(20);
    let result = dreamwalk()
        .args(["render", "--prompt", &long, "--prompt", "a lighthouse"])
        .args(["--steps", "1", "--guidance", "1", "--steps-between", "1"])
        .args(["--inbetween", "0", "--source", "64x64", "--upscale", "none"])
        .arg("--out")
        .arg(dir.path().join("out.y4m"))
        .output()
        .expect("run dreamwalk");
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "render failed: {stderr}");
    assert!(stderr.contains("warning: prompt 1 is"), "{stderr}");
    assert!(stderr.contains("only the first 77"), "{stderr}");
    assert!(!stderr.contains("prompt 2 is"), "{stderr}");
}

/// `render --model tiny-sd` with an empty Hugging Face cache (so no TAESD is found), plus
/// `extra`; returns (stderr, the frames' sizes).
fn tiny_sd_render(extra: &[&str]) -> (String, Vec<(u32, u32)>) {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let result = dreamwalk()
        .env("HF_HOME", cache.path())
        .env_remove("HF_HUB_CACHE")
        .arg("render")
        .arg("--model")
        .arg(crate::support::fixtures::fixture("tiny-sd"))
        .args(["--prompt", "a red fox", "--prompt", "a lighthouse"])
        .args(["--steps", "1", "--guidance", "1", "--steps-between", "1"])
        .args(["--inbetween", "0", "--source", "64x64", "--upscale", "none"])
        .args(["--gpu-decode", "off"])
        .args(extra)
        .arg("--out")
        .arg(dir.path())
        .output()
        .expect("run dreamwalk");
    let stderr = String::from_utf8_lossy(&result.stderr).into_owned();
    assert!(result.status.success(), "render failed: {stderr}");
    let sizes = png_files(dir.path())
        .iter()
        .map(|p| {
            let png = read_png(p);
            (png.width, png.height)
        })
        .collect();
    (stderr, sizes)
}

#[test]
fn a_model_without_taesd_renders_with_its_vae_and_says_so() {
    let (stderr, sizes) = tiny_sd_render(&[]);
    let first = stderr.lines().next().unwrap_or_default();
    assert!(first.contains("no TAESD"), "{stderr}");
    assert!(first.contains("VAE"), "{stderr}");
    assert!(!sizes.is_empty());
    assert!(sizes.iter().all(|&s| s == (64, 64)), "{sizes:?}");
}

#[test]
fn the_header_states_the_size_the_decoder_makes() {
    let taesd = crate::support::fixtures::fixture("taesd");
    let (stderr, sizes) = tiny_sd_render(&["--taesd", taesd.to_str().unwrap()]);
    let (w, h) = sizes[0];
    assert!(
        stderr.contains(&format!("{w}x{h} frames")),
        "the header says the written size {w}x{h}: {stderr}"
    );
}
