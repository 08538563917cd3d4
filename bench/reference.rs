//! The reference scripts (`../shared/bench/`: PyTorch + diffusers decoders, the original
//! app's numpy + OpenCV pipeline): whether Python can run them, and running them, one
//! `python3` per case under a wrapper that reports its peak RSS.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::cases::Case;
use crate::report::Timing;
use crate::BenchArgs;

/// The reference scripts and whether Python can run them.
pub struct Reference {
    dir: PathBuf,
    /// This repository's own reference scripts (`bench/`), for what no shared one times.
    own_dir: PathBuf,
    python: String,
    /// `Ok` when Python can run the script; the reason otherwise.
    decoders: Result<(), String>,
    /// The same for `time_unet.py`.
    unet: Result<(), String>,
    pub seed: Result<(), String>,
    pub info: serde_json::Value,
}

impl Reference {
    pub fn find(args: &BenchArgs) -> Self {
        let dir = args
            .bench_dir
            .clone()
            .or_else(|| std::env::var_os("DREAMWALK_BENCH_DIR").map(PathBuf::from))
            .unwrap_or_else(|| {
                let beside_repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/bench");
                if beside_repo.is_dir() {
                    beside_repo
                } else {
                    PathBuf::from("../shared/bench")
                }
            });
        let mut reference = Self {
            dir,
            own_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("bench"),
            python: args.python.clone(),
            decoders: Err("--no-reference".to_string()),
            unet: Err("--no-reference".to_string()),
            seed: Err("--no-reference".to_string()),
            info: serde_json::Value::Null,
        };
        if args.no_reference {
            return reference;
        }
        reference.decoders = reference.check("time_decoders.py", "torch, diffusers");
        reference.unet = reference.check("time_unet.py", "torch, diffusers, transformers");
        reference.seed = reference.check("seed_pipeline.py", "numpy, cv2");
        for (what, status) in [
            ("torch + diffusers", &reference.decoders),
            ("torch + diffusers + transformers", &reference.unet),
            ("numpy + OpenCV", &reference.seed),
        ] {
            if let Err(reason) = status {
                eprintln!("reference ({what}) skipped: {reason}");
            }
        }
        reference.info = serde_json::json!({
            "dir": reference.dir.display().to_string(),
            "python": reference.python,
            "decoders": reference.decoders.as_ref().err(),
            "unet": reference.unet.as_ref().err(),
            "seed_pipeline": reference.seed.as_ref().err(),
        });
        reference
    }

    /// Whether `script` exists and Python imports `modules`.
    fn check(&self, script: &str, modules: &str) -> Result<(), String> {
        let path = self.dir.join(script);
        if !path.is_file() {
            return Err(format!("{} not found (set --bench-dir)", path.display()));
        }
        let output = Command::new(&self.python)
            .args(["-c", &format!("import {modules}")])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run `{}`: {e}", self.python))?;
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().last().unwrap_or("import failed").trim();
        Err(format!("`{}` cannot import {modules}: {last}", self.python))
    }

    /// Times `case` with the reference script; `Err` says why it could not.
    pub fn run(
        &self,
        args: &BenchArgs,
        case: Case,
        warmup: usize,
        runs: usize,
    ) -> Result<Timing, String> {
        match case {
            Case::FourKPath | Case::RenderRss | Case::GpuTaesd | Case::Gpu4k | Case::GpuWalk => {
                Err("not a decoder case".to_string())
            }
            _ if case.x4_hw().is_some() => Err(
                "no reference: diffusers' x4 pipeline denoises the whole latent at once"
                    .to_string(),
            ),
            _ if case.keyframe_work().is_some() => {
                self.unet.clone()?;
                let script = self.dir.join("time_unet.py");
                self.run_timing_script(&script, args, case, (warmup, runs), &[])
            }
            _ if case.is_tiled_vae() => {
                // PyTorch's own untiled decode of the same latents: no shared script times
                // these sizes, so ours does (it fails cleanly when it would need more
                // memory than half the machine's).
                self.decoders.clone()?;
                let (h, w) = case.latent_hw().unwrap_or_default();
                let latent = format!("{h}x{w}");
                let script = self.own_dir.join("time_vae_untiled.py");
                let extra = ["--latent", latent.as_str()];
                self.run_timing_script(&script, args, case, (warmup, runs), &extra)
            }
            _ => {
                self.decoders.clone()?;
                let runs_s = runs.to_string();
                let slow = ["--slow-runs", runs_s.as_str()];
                let script = self.dir.join("time_decoders.py");
                self.run_timing_script(&script, args, case, (warmup, runs), &slow)
            }
        }
    }

    /// Runs a script that times `--cases CASE` and writes `--json` (`time_decoders.py`,
    /// `time_unet.py`); the peak RSS is the one the script reports for the case's own
    /// process when it does, else its whole run's.
    fn run_timing_script(
        &self,
        script: &Path,
        args: &BenchArgs,
        case: Case,
        (warmup, runs): (usize, usize),
        extra: &[&str],
    ) -> Result<Timing, String> {
        let json = std::env::temp_dir().join(format!(
            "dreamwalk-bench-{}-{}.json",
            std::process::id(),
            case.name()
        ));
        let mut script_args = vec![
            "--cases".to_string(),
            case.name(),
            "--threads".to_string(),
            args.threads.to_string(),
            // At least one warm-up: the script times its first call as one.
            "--warmup".to_string(),
            warmup.max(1).to_string(),
            "--runs".to_string(),
            runs.to_string(),
            "--json".to_string(),
            json.display().to_string(),
        ];
        script_args.extend(extra.iter().map(|a| a.to_string()));
        let label = format!("{} reference (PyTorch)", case.name());
        let outcome = self.run_script(&label, script, &script_args)?;
        let text = std::fs::read_to_string(&json)
            .map_err(|e| format!("no figures from {}: {e}", script.display()))?;
        let _ = std::fs::remove_file(&json);
        let parsed: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", json.display()))?;
        let all_ms: Vec<f64> = parsed["results"][0]["all_s"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_f64())
                    .map(|s| s * 1e3)
                    .collect()
            })
            .unwrap_or_default();
        if let Some(error) = parsed["results"][0]["error"].as_str() {
            return Err(format!("{}: {error}", script.display()));
        }
        let peak_rss_mb = parsed["results"][0]["peak_rss_mib"]
            .as_f64()
            .or(outcome.peak_rss_mb);
        Timing::from_runs(all_ms, peak_rss_mb).map_err(|e| e.to_string())
    }

    /// One run of the seed pipeline script (it times a single pass over its keyframes):
    /// (ms per frame, peak RSS).
    pub fn run_seed_once(
        &self,
        args: &BenchArgs,
        label: &str,
    ) -> Result<(f64, Option<f64>), String> {
        let script = self.dir.join("seed_pipeline.py");
        let script_args = [
            "--keyframes".to_string(),
            args.keyframes.to_string(),
            "--threads".to_string(),
            args.threads.to_string(),
        ];
        let outcome = self.run_script(label, &script, &script_args)?;
        // "frames 157 seconds 1.234"
        let per_frame = outcome.stdout.lines().find_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words[..] {
                ["frames", frames, "seconds", seconds] => {
                    let frames: f64 = frames.parse().ok()?;
                    let seconds: f64 = seconds.parse().ok()?;
                    (frames > 0.0).then_some(seconds * 1e3 / frames)
                }
                _ => None,
            }
        });
        let per_frame = per_frame
            .ok_or_else(|| format!("{} printed no `frames N seconds S` line", script.display()))?;
        Ok((per_frame, outcome.peak_rss_mb))
    }

    /// Runs `python script args` under a wrapper that reports the process's peak RSS,
    /// with a spinner meanwhile.
    fn run_script(
        &self,
        label: &str,
        script: &Path,
        args: &[String],
    ) -> Result<ScriptOutcome, String> {
        const WRAPPER: &str = "import runpy, sys\n\
            script = sys.argv[1]\n\
            sys.argv = sys.argv[1:]\n\
            try:\n    runpy.run_path(script, run_name='__main__')\n\
            finally:\n    hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')]\n    \
            print('DREAMWALK_VMHWM_KB', hwm[0] if hwm else 0, file=sys.stderr, flush=True)\n";
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.set_message(label.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        let child = Command::new(&self.python)
            .args(["-c", WRAPPER])
            .arg(script)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run `{}`: {e}", self.python));
        let mut child = match child {
            Ok(child) => child,
            Err(e) => {
                bar.finish_and_clear();
                return Err(e);
            }
        };
        // Drain stderr on a thread so a chatty script never blocks on a full pipe.
        let stderr = child.stderr.take();
        let stderr_reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            if let Some(stderr) = stderr {
                lines.extend(BufReader::new(stderr).lines().map_while(Result::ok));
            }
            lines
        });
        let mut stdout = String::new();
        if let Some(mut out) = child.stdout.take() {
            let _ = out.read_to_string(&mut stdout);
        }
        let status = child.wait().map_err(|e| e.to_string());
        let stderr_lines = stderr_reader.join().unwrap_or_default();
        bar.finish_and_clear();
        let status = status?;
        let peak_rss_mb = stderr_lines.iter().find_map(|l| {
            let kb: f64 = l.strip_prefix("DREAMWALK_VMHWM_KB ")?.trim().parse().ok()?;
            (kb > 0.0).then_some(kb / 1024.0)
        });
        if !status.success() {
            let last = stderr_lines
                .iter()
                .rev()
                .find(|l| !l.starts_with("DREAMWALK_VMHWM_KB") && !l.trim().is_empty())
                .map_or("", |l| l.trim());
            return Err(format!("{} failed ({status}): {last}", script.display()));
        }
        Ok(ScriptOutcome {
            stdout,
            peak_rss_mb,
        })
    }
}

struct ScriptOutcome {
    stdout: String,
    peak_rss_mb: Option<f64>,
}
