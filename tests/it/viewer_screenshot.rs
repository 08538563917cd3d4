//! The real window under Xvfb on the demo model: it opens, plays, and its screenshot shows a
//! picture (varied pixels where the frame is drawn), not a blank window. Saved to
//! `target/screenshots/viewer.png` (and `viewer_gpu_decode.png`, TAESD on the window's GPU)
//! for people to look at. Needs `xvfb-run` (Debian `xvfb`, `xauth`; `.ci/run` installs them)
//! and a wgpu adapter (Mesa's llvmpipe / lavapipe).

use std::path::PathBuf;
use std::process::Command;

use crate::support::images::read_png;
use crate::support::process::DREAMWALK;

/// Runs the viewer under Xvfb with `args` until it saves its screenshot; returns the JSON
/// saved beside it and the RGB pixels with their width.
fn screenshot(name: &str, args: &[&str]) -> (serde_json::Value, Vec<u8>, usize) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    let png_path = dir.join(format!("{name}.png"));
    let _ = std::fs::remove_file(&png_path);
    let _ = std::fs::remove_file(png_path.with_extension("json"));
    let output = Command::new("timeout")
        .args(["300", "xvfb-run", "-a", "-s", "-screen 0 1600x1000x24"])
        .arg(DREAMWALK)
        .arg("--screenshot")
        .arg(&png_path)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("this test needs `timeout` and `xvfb-run` (Debian packages coreutils, xvfb)");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the viewer failed: {}\n{log}",
        output.status
    );
    assert!(png_path.is_file(), "no screenshot was saved:\n{log}");

    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(png_path.with_extension("json")).unwrap())
            .unwrap();
    let png = read_png(&png_path);
    assert_eq!(png.color_type, png::ColorType::Rgb);
    assert_eq!(meta["width"].as_u64(), Some(png.width as u64));
    (meta, png.pixels, png.width as usize)
}

/// The picture's rectangle, minus the heads-up display in its top-left corner, has varied
/// pixels: a frame was drawn, not a blank or flat texture.
fn assert_picture_is_not_blank(meta: &serde_json::Value, rgb: &[u8], width: usize) {
    let rect: Vec<f64> = meta["picture"]
        .as_array()
        .expect("a frame was on screen when the screenshot was taken")
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let (x0, y0, x1, y1) = (rect[0], rect[1], rect[2], rect[3]);
    assert!(
        x1 - x0 > 300.0 && y1 - y0 > 150.0,
        "picture {rect:?} is too small"
    );
    let (x0, y0) = (
        (x0 + (x1 - x0) * 0.4) as usize,
        (y0 + (y1 - y0) * 0.4) as usize,
    );
    let (x1, y1) = (x1 as usize - 2, y1 as usize - 2);
    let mut colors = std::collections::HashSet::new();
    let (mut sum, mut sum_sq, mut n) = (0f64, 0f64, 0f64);
    for y in y0..y1 {
        for x in x0..x1 {
            let p = &rgb[(y * width + x) * 3..][..3];
            colors.insert([p[0], p[1], p[2]]);
            let luma = 0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64;
            sum += luma;
            sum_sq += luma * luma;
            n += 1.0;
        }
    }
    let std_dev = (sum_sq / n - (sum / n).powi(2)).max(0.0).sqrt();
    eprintln!(
        "picture region {}x{}: {} colours, luma mean {:.1}, std dev {std_dev:.1}",
        x1 - x0,
        y1 - y0,
        colors.len(),
        sum / n
    );
    assert!(
        colors.len() > 500,
        "only {} colours: blank picture",
        colors.len()
    );
    assert!(std_dev > 2.0, "luma std dev {std_dev:.2}: blank picture");
}

fn hud(meta: &serde_json::Value) -> Vec<String> {
    meta["hud"]
        .as_array()
        .expect("the heads-up display's lines")
        .iter()
        .map(|line| line.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn viewer_plays_under_xvfb_and_its_screenshot_is_not_blank() {
    let (meta, rgb, width) = screenshot("viewer", &["--screenshot-after", "3"]);
    assert_picture_is_not_blank(&meta, &rgb, width);
    let hud = hud(&meta);
    assert!(hud[0].starts_with("demo model (random weights)"), "{hud:?}");
}

/// TAESD on eframe's own GPU device with the frames kept there: decoded into textures,
/// in-betweens blended by the present shader, drawn to 4K. (Small frames: lavapipe is slow.)
#[test]
fn frames_decoded_on_the_window_gpu_reach_the_screen() {
    let (meta, rgb, width) = screenshot(
        "viewer_gpu_decode",
        &[
            "--screenshot-after",
            "3",
            "--gpu-decode",
            "on",
            "--source",
            "288x160",
        ],
    );
    assert_picture_is_not_blank(&meta, &rgb, width);
    let hud = hud(&meta);
    assert!(
        hud[0].contains("TAESD on the GPU (") && hud[0].ends_with("frames stay there"),
        "{hud:?}"
    );
    assert!(
        hud[1].starts_with("288x160 → 3840x2160 GPU bicubic"),
        "{hud:?}"
    );
}

/// A model that fails to load: the viewer with `--screenshot` says why on stderr and exits
/// non-zero, long before the test's own timeout, instead of waiting for a frame forever.
#[test]
fn a_model_that_fails_to_load_ends_a_screenshot_run_with_its_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("broken-model");
    std::fs::create_dir(&model).unwrap();
    std::fs::write(model.join("model_index.json"), b"{ not json").unwrap();
    let png_path = dir.path().join("never.png");
    let started = std::time::Instant::now();
    let output = Command::new("timeout")
        .args(["120", "xvfb-run", "-a", "-s", "-screen 0 1600x1000x24"])
        .arg(DREAMWALK)
        .arg("--screenshot")
        .arg(&png_path)
        .arg("--model")
        .arg(&model)
        .env("RUST_LOG", "warn")
        .output()
        .expect("this test needs `timeout` and `xvfb-run` (Debian packages coreutils, xvfb)");
    let log = String::from_utf8_lossy(&output.stderr);
    // `timeout` exits 124 when it had to stop the viewer.
    assert_ne!(output.status.code(), Some(124), "the viewer waited: {log}");
    assert!(!output.status.success(), "{log}");
    assert!(
        log.contains("no screenshot") && log.contains("model_index.json"),
        "the error names the file: {log}"
    );
    assert!(!png_path.exists());
    assert!(started.elapsed() < std::time::Duration::from_secs(120));
}

/// SIGTERM closes the window as its close button does: the recording started with
/// `--record` is finished (whole frames, under its name, no partial file) and the process
/// ends cleanly.
#[test]
fn sigterm_closes_the_viewer_and_finishes_its_recording() {
    use std::os::unix::process::CommandExt;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("walk.y4m");
    let part = dreamwalk::record::partial_path(&out);
    let log_path = dir.path().join("viewer.log");
    let mut child = Command::new("xvfb-run")
        .args(["-a", "-s", "-screen 0 1280x800x24"])
        .arg(DREAMWALK)
        .args(["--source", "128x64", "--record"])
        .arg(&out)
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log_path).unwrap())
        .process_group(0)
        .spawn()
        .expect("this test needs `xvfb-run` (Debian packages xvfb, xauth)");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    // Recording: a few whole frames (3 bytes a pixel) are in the partial file.
    let frame_len = 6 + 3 * 128 * 64;
    let deadline = Instant::now() + Duration::from_secs(180);
    while std::fs::metadata(&part).map_or(0, |m| m.len()) < 4 * frame_len {
        assert!(
            child.try_wait().unwrap().is_none(),
            "ended early:\n{}",
            log()
        );
        assert!(Instant::now() < deadline, "nothing recorded:\n{}", log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // To the viewer alone (not xvfb-run, which waits for it and then stops Xvfb).
    let viewer = Command::new("pgrep")
        .args(["-g", &child.id().to_string(), "-x", "dreamwalk"])
        .output()
        .expect("pgrep (Debian procps)");
    let pid = String::from_utf8_lossy(&viewer.stdout).trim().to_string();
    assert!(!pid.is_empty(), "no viewer process:\n{}", log());
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still open:\n{}", log());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status}:\n{}", log());
    assert!(log().contains("closing the window"), "{}", log());
    assert!(!part.exists(), "the partial file is left:\n{}", log());
    let bytes = std::fs::read(&out).expect("the recording is under its name");
    let header_len = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
    let frames = (bytes.len() - header_len) as u64 / frame_len;
    assert!(frames >= 4, "{frames} frames");
    assert_eq!(
        (bytes.len() - header_len) as u64,
        frames * frame_len,
        "whole frames only"
    );
}
