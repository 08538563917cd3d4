//! `dreamwalk-bench` end to end on its smallest case: the figures reach the JSON file.
//! No time is asserted (timed tests are forbidden): only that the fields are there and
//! the numbers are positive.

use crate::support::process::dreamwalk_bench;

#[test]
fn four_k_path_bench_writes_its_figures() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let output = dreamwalk_bench()
        .args(["--cases", "4k_path", "--runs", "1", "--warmup", "0"])
        .args(["--no-reference", "--keyframes", "3", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The table names the case and says the reference was not run.
    assert!(stdout.contains("4k_path"), "{stdout}");
    assert!(stdout.contains("skipped"), "{stdout}");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(report["machine"]["cores"].as_u64().unwrap() >= 1);
    assert_eq!(report["threads"], 2);
    let cases = report["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 1);
    let case = &cases[0];
    assert_eq!(case["case"], "4k_path");
    assert_eq!(case["unit"], "ms/frame");
    let ours = &case["ours"];
    for field in ["min_ms", "median_ms", "peak_rss_mb"] {
        let value = ours[field].as_f64().unwrap_or(f64::NAN);
        assert!(value > 0.0, "ours.{field} = {value}");
    }
    assert_eq!(ours["all_ms"].as_array().unwrap().len(), 1);
    // 3 decoded frames and 3 in-betweens after each but the first.
    assert_eq!(case["detail"]["frames_per_run"], 9);
    assert!(case["reference"].is_null());
    assert!(case["reference_skipped"]
        .as_str()
        .unwrap()
        .contains("no-reference"));
    assert!(
        case["pass"].is_null(),
        "nothing to compare without a reference"
    );
}

#[test]
fn unknown_case_is_a_clear_error() {
    let output = dreamwalk_bench()
        .args(["--cases", "taesd_1x1", "--no-reference"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("taesd_1x1"), "{stderr}");
    assert!(
        stderr.contains("4k_path"),
        "the error lists the cases: {stderr}"
    );
}

/// The GPU cases run on whatever adapter there is (lavapipe in CI) and name it; a software
/// adapter's rate is printed but not judged against the GPU targets.
#[test]
fn gpu_cases_name_the_adapter_and_judge_only_hardware() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let output = dreamwalk_bench()
        .args(["--cases", "gpu_4k,gpu_taesd,gpu_walk", "--runs", "1"])
        .args(["--warmup", "0", "--gpu-latent", "2x3", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let cases = report["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let name = case["case"].as_str().unwrap();
        assert!(stdout.contains(name), "{stdout}");
        let adapter = case["detail"]["adapter"].as_str().unwrap_or_default();
        assert!(!adapter.is_empty(), "{name}: no adapter named");
        assert!(case["ours"]["min_ms"].as_f64().unwrap() > 0.0);
        assert!(case["ratio"].as_f64().unwrap() > 0.0);
        if case["detail"]["software"].as_bool().unwrap() {
            assert!(
                case["pass"].is_null(),
                "{name}: a software adapter is not judged"
            );
        } else {
            assert!(case["pass"].is_boolean());
        }
    }
    assert!(cases[1]["work"].as_str().unwrap().contains("2x3 -> 16x24"));
    assert!(cases[2]["work"]
        .as_str()
        .unwrap()
        .contains("kept on the GPU"));
}

/// The GPU sampling cases run on whatever adapter there is (lavapipe here: 8x8 latents, not
/// judged) and report the fraction of the adapter's measured peak.
#[test]
fn gpu_clip_bench_runs_on_any_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let output = dreamwalk_bench()
        .args(["--cases", "gpu_clip", "--runs", "1", "--warmup", "0"])
        .args(["--no-reference", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed: {stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let case = &report["cases"][0];
    assert_eq!(case["case"], "gpu_clip");
    let detail = &case["detail"];
    for field in ["peak_gflops", "gflop_per_call", "achieved_gflops"] {
        let value = detail[field].as_f64().unwrap_or(f64::NAN);
        assert!(value > 0.0, "detail.{field} = {value}");
    }
    // CLIP ViT-L/14's text encoder over 77 tokens: ~13 GFLOP (12 layers of 768-wide
    // projections and 3072-wide MLPs, plus attention), counted by the kernels.
    let gflop = detail["gflop_per_call"].as_f64().unwrap();
    assert!((12.0..15.0).contains(&gflop), "{gflop} GFLOP per CLIP call");
    let fraction = detail["fraction_of_peak"].as_f64().unwrap();
    assert!(
        fraction > 0.0 && fraction.is_finite(),
        "fraction of peak {fraction}"
    );
    assert!(stderr.contains("% of the adapter's measured"), "{stderr}");
}
