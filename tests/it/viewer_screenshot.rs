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
