//! Every bad value `dreamwalk render` is given is refused before anything starts: a non-zero
//! exit, a message naming the value or its limit, and no output written.

use std::path::Path;

use crate::support::process::dreamwalk;

/// The arguments of a small demo render to `out`, before the value under test.
fn demo_args(out: &Path) -> Vec<String> {
    [
        "render",
        "--prompt",
        "a red fox",
        "--prompt",
        "a lighthouse",
        "--source",
        "64x64",
        "--size",
        "64x64",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([out.to_str().unwrap().to_string()])
    .collect()
}

/// Runs a demo render with `extra` arguments; asserts that it is refused and wrote nothing;
/// returns its stderr.
fn refused(extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.y4m");
    let result = dreamwalk()
        .args(demo_args(&out))
        .args(extra)
        .output()
        .expect("run dreamwalk");
    let stderr = String::from_utf8_lossy(&result.stderr).into_owned();
    assert!(!result.status.success(), "{extra:?} was accepted: {stderr}");
    assert!(!stderr.contains("panicked"), "no panic: {stderr}");
    assert!(!out.exists(), "{extra:?}: the output was opened");
    stderr
}

#[test]
fn sampler_steps_out_of_range_are_refused() {
    for steps in ["0", "1001", "5000"] {
        let stderr = refused(&["--steps", steps]);
        assert!(stderr.contains("between 1 and 1000"), "{stderr}");
        assert!(stderr.contains(steps), "{stderr}");
    }
}

#[test]
fn guidance_not_finite_or_huge_is_refused() {
    for guidance in ["inf", "NaN", "1e30", "-101"] {
        let stderr = refused(&[&format!("--guidance={guidance}")]);
        assert!(stderr.contains("guidance"), "{stderr}");
        assert!(stderr.contains("100"), "names the limit: {stderr}");
    }
}

#[test]
fn laps_past_the_bound_are_refused() {
    for laps in ["0", "4611686018427387904", "1000001"] {
        let stderr = refused(&["--loop", "pingpong", "--laps", laps]);
        assert!(stderr.contains("--laps"), "{stderr}");
        assert!(stderr.contains("1000000"), "names the bound: {stderr}");
    }
}

#[test]
fn init_latents_of_the_wrong_shape_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("init.safetensors");
    // 64x64 images on the demo model need (1, 4, 8, 8).
    let wrong = candle_core::Tensor::zeros(
        (1, 4, 16, 8),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("init_latents".to_string(), wrong)]),
        &file,
    )
    .unwrap();
    let stderr = refused(&["--init-latents", file.to_str().unwrap()]);
    assert!(
        stderr.contains("[1, 4, 16, 8]"),
        "names the shape: {stderr}"
    );
    assert!(
        stderr.contains("[1, 4, 8, 8]"),
        "names the expected shape: {stderr}"
    );
}

#[test]
fn source_size_message_matches_the_help() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.y4m");
    let mut args = demo_args(&out);
    let source = args.iter().position(|a| a == "--source").unwrap();
    args[source + 1] = "63x64".into();
    let result = dreamwalk().args(&args).output().expect("run dreamwalk");
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success(), "{stderr}");
    assert!(!out.exists());
    assert!(stderr.contains("multiples of 32"), "{stderr}");
    let help = dreamwalk().args(["render", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("32 for the demo model"), "{help}");
}

#[test]
fn negative_guidance_parses() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.y4m");
    let result = dreamwalk()
        .args(demo_args(&out))
        .args(["--guidance", "-5", "--steps", "1", "--steps-between", "1"])
        .args(["--inbetween", "0", "--upscale", "none"])
        .output()
        .expect("run dreamwalk");
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "--guidance -5 refused: {stderr}");
    assert!(out.exists());
}

#[test]
fn a_render_without_a_desktop_session_prints_no_gpu_probe_noise() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.y4m");
    // `--gpu-decode auto` probes the GPU adapters, which loads the system's Vulkan layers.
    let result = dreamwalk()
        .args(demo_args(&out))
        .args(["--steps", "1", "--steps-between", "1", "--inbetween", "0"])
        .args(["--gpu-decode", "auto"])
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("NODEVICE_SELECT")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run dreamwalk");
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    assert!(!stderr.contains("XDG_RUNTIME_DIR"), "{stderr}");
    assert!(stderr.lines().all(|l| !l.starts_with("error")), "{stderr}");
}

#[test]
fn an_unwritable_output_says_why_once_and_no_recording_summary_follows() {
    let dir = tempfile::tempdir().unwrap();
    // A path under a regular file: the OS refuses it (ENOTDIR).
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"x").unwrap();
    let out = blocker.join("out.y4m");
    let result = dreamwalk()
        .args(demo_args(&out))
        .output()
        .expect("run dreamwalk");
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success());
    assert!(stderr.contains("out.y4m"), "{stderr}");
    let reason = "Not a directory";
    assert_eq!(
        stderr.matches(reason).count(),
        1,
        "the OS error once: {stderr}"
    );
    assert!(!stderr.contains("recorded"), "{stderr}");
    assert!(!stderr.contains("0x0"), "{stderr}");
}
