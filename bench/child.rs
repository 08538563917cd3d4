//! The child-process protocol: every case of ours runs in a process of its own,
//! `dreamwalk-bench --child --cases CASE ...`, so that the process's peak RSS (`VmHWM`)
//! belongs to that case alone. The child prints its figures as one JSON line on stdout
//! (a [`ChildResult`]); its stderr, with the progress bar, goes to the parent's.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::cases::Case;
use crate::BenchArgs;

/// What a child process reports.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChildResult {
    pub times_ms: Vec<f64>,
    pub peak_rss_mb: Option<f64>,
    pub detail: serde_json::Value,
}

/// Runs `case` in `dreamwalk-bench --child` and reads its figures (its stderr, with the
/// progress bar, goes to ours).
pub fn run_child(
    args: &BenchArgs,
    case: Case,
    (warmup, runs): (usize, usize),
    extra: &[&str],
) -> anyhow::Result<ChildResult> {
    let exe = std::env::current_exe().context("finding the dreamwalk-bench executable")?;
    let mut command = Command::new(&exe);
    command
        .args(["--child", "--cases", &case.name()])
        .args(["--warmup", &warmup.to_string(), "--runs", &runs.to_string()])
        .args(["--threads", &args.threads.to_string()])
        .args(["--keyframes", &args.keyframes.to_string()])
        .arg(format!(
            "--gpu-latent={}x{}",
            args.gpu_latent.0, args.gpu_latent.1
        ))
        .args(extra)
        .args(args.gpu_f16.then_some("--gpu-f16"))
        .args(args.gpu_bounds_checks.then_some("--gpu-bounds-checks"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let output = command
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    if !output.status.success() {
        bail!("the child process for {case} failed ({})", output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("the child process printed no figures")?;
    serde_json::from_str(line).context("reading the child's figures")
}

/// `dreamwalk-bench --child`: one case, here, figures as one JSON line on stdout.
pub fn child(args: &BenchArgs) -> anyhow::Result<()> {
    let [case] = args.cases[..] else {
        bail!("--child runs exactly one case");
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads as usize)
        .build_global()
        .context("starting the thread pool")?;
    let (warmup, runs) = args.runs_for(case);
    let result = match case {
        Case::Taesd72x128 | Case::Taesd64x64 => crate::decoders::child_taesd(case, warmup, runs)?,
        Case::Sdvae64x64
        | Case::Sdvae72x128
        | Case::Sdvae270x480Tiled
        | Case::Sdvae135x240Tiled => crate::decoders::child_vae(case, warmup, runs)?,
        Case::FourKPath => crate::four_k::child_4k_path(args, warmup, runs)?,
        Case::RenderRss => crate::render_rss::child_render_rss(args)?,
        Case::GpuTaesd => crate::gpu::child_gpu_taesd(args, warmup, runs)?,
        Case::Gpu4k => crate::gpu::child_gpu_4k(warmup, runs)?,
        Case::GpuWalk => crate::gpu::child_gpu_walk(args, warmup, runs)?,
        Case::UnetTurbo64x64
        | Case::UnetTurbo72x128
        | Case::UnetSd1564x64Cfg
        | Case::UnetSd1572x128Cfg
        | Case::ClipSd2
        | Case::ClipSd15 => crate::keyframe::child_keyframe(case, warmup, runs)?,
        Case::X4_540x960 | Case::X4_270x480 => crate::x4::child_x4(case, warmup, runs)?,
        Case::GpuUnetTurbo64x64
        | Case::GpuUnetSd1564x64Cfg
        | Case::GpuClip
        | Case::GpuKeyframeTurbo => {
            crate::gpu_keyframe::child_gpu_keyframe(args, case, warmup, runs)?
        }
    };
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

fn progress(case: Case, total: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>14} ours {bar:24} {pos}/{len} runs {elapsed} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_prefix(case.name());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Warm-ups then timed runs of `f`, which returns its own time in ms.
pub fn time_runs(
    case: Case,
    warmup: usize,
    runs: usize,
    mut f: impl FnMut() -> anyhow::Result<f64>,
) -> anyhow::Result<Vec<f64>> {
    let bar = progress(case, warmup + runs);
    let mut times = Vec::with_capacity(runs);
    for i in 0..warmup + runs {
        bar.set_message(if i < warmup { "warm-up" } else { "timed" });
        let ms = f()?;
        if i >= warmup {
            times.push(ms);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(times)
}
