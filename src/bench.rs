//! `dreamwalk bench`: times this project's decoders and 4K path against the reference
//! scripts in `../shared/bench/` (PyTorch/diffusers decoders, the original app's numpy +
//! OpenCV pipeline), side by side in one run, and prints the ratios.
//!
//! These machines are noisy (other processes share the two cores), so only ratios measured
//! in one run mean anything: each case runs ours, then the reference, back to back. Every
//! case runs in a process of its own (ours: `dreamwalk bench --child`; the reference: one
//! `python3` per case) so that each process's peak RSS (`VmHWM`) belongs to that case alone.
//! Ratios use the fastest run of each side: load only ever adds time, so the minimum is the
//! steadiest estimate of what the code itself costs.
//!
//! Nothing here asserts a time: the bench reports, it never fails on speed.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::frame::RgbaImage;
use crate::model::{
    DecoderKind, EndpointError, EndpointRequest, Engine, ModelDefaults, SamplingProgress,
};
use crate::pipeline::{Inbetweens, Pipeline, PipelineOptions, RingPolicy, Settings};
use crate::upscale::{BicubicResizer, UpscaleMode};
use crate::walk::{Easing, Interp, LoopMode, WalkSettings};

/// What one bench case measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, Serialize, Deserialize)]
pub enum Case {
    /// TAESD decode, 72x128 latents -> 576x1024, f32 (vs PyTorch `AutoencoderTiny.decode`).
    #[value(name = "taesd_72x128")]
    #[serde(rename = "taesd_72x128")]
    Taesd72x128,
    /// TAESD decode, 64x64 latents -> 512x512.
    #[value(name = "taesd_64x64")]
    #[serde(rename = "taesd_64x64")]
    Taesd64x64,
    /// AutoencoderKL (SD 1.5 config) decode, 64x64 latents -> 512x512, with peak memory.
    #[value(name = "sdvae_64x64")]
    #[serde(rename = "sdvae_64x64")]
    Sdvae64x64,
    /// AutoencoderKL (SD 1.5 config) decode, 72x128 latents -> 576x1024 (slow; not run
    /// unless asked for).
    #[value(name = "sdvae_72x128")]
    #[serde(rename = "sdvae_72x128")]
    Sdvae72x128,
    /// The post-decode path: 3 in-betweens + bicubic 1024x576 -> 3840x2160, through the
    /// real pipeline fed pre-made decoded frames (vs the original app's numpy + OpenCV).
    #[value(name = "4k_path")]
    #[serde(rename = "4k_path")]
    FourKPath,
    /// Peak RSS of `dreamwalk render` of 4K frames on the demo model, for each of
    /// `--rss-frames` frame counts: it must not grow with the length (the longest render's
    /// second half peaks within two 4K frames of its first half).
    #[value(name = "render_rss")]
    #[serde(rename = "render_rss")]
    RenderRss,
    /// TAESD on the GPU (WGSL, the viewer's decoder on a hardware adapter): `--gpu-latent`
    /// latents (default 72x128 -> 576x1024) decoded into the upscaler's source texture,
    /// in decodes/s (target ≥ 30). Not run unless asked for: on a software adapter it takes
    /// minutes per decode.
    #[value(name = "gpu_taesd")]
    #[serde(rename = "gpu_taesd")]
    GpuTaesd,
    /// The viewer's GPU present: upload a 1024x576 frame and bicubic it to 3840x2160 in the
    /// WGSL shader, in frames/s (target ≥ 60). Not run unless asked for.
    #[value(name = "gpu_4k")]
    #[serde(rename = "gpu_4k")]
    Gpu4k,
    /// The viewer's whole GPU path per decoded frame: TAESD into a frame that stays on the
    /// GPU, then its 3 in-betweens and itself drawn to 3840x2160 by the present shader
    /// (blending as it reads), nothing read back; in shown frames/s (target ≥ 60). Not run
    /// unless asked for.
    #[value(name = "gpu_walk")]
    #[serde(rename = "gpu_walk")]
    GpuWalk,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::Taesd72x128 => "taesd_72x128",
            Case::Taesd64x64 => "taesd_64x64",
            Case::Sdvae64x64 => "sdvae_64x64",
            Case::Sdvae72x128 => "sdvae_72x128",
            Case::FourKPath => "4k_path",
            Case::RenderRss => "render_rss",
            Case::GpuTaesd => "gpu_taesd",
            Case::Gpu4k => "gpu_4k",
            Case::GpuWalk => "gpu_walk",
        }
    }

    /// Latent (h, w) of a decoder case.
    fn latent_hw(self) -> Option<(usize, usize)> {
        match self {
            Case::Taesd72x128 | Case::Sdvae72x128 => Some((72, 128)),
            Case::Taesd64x64 | Case::Sdvae64x64 => Some((64, 64)),
            _ => None,
        }
    }

    /// (warm-ups, timed runs) unless `--warmup` / `--runs` say otherwise.
    fn default_runs(self) -> (usize, usize) {
        match self {
            Case::Taesd72x128 | Case::Taesd64x64 => (1, 5),
            Case::Sdvae64x64 | Case::Sdvae72x128 => (1, 3),
            Case::FourKPath => (1, 5),
            Case::RenderRss => (0, 1),
            Case::GpuTaesd => (2, 10),
            Case::Gpu4k => (5, 60),
            Case::GpuWalk => (2, 15),
        }
    }
}

/// The cases run when `--cases` is not given.
const DEFAULT_CASES: [Case; 5] = [
    Case::Taesd72x128,
    Case::Taesd64x64,
    Case::Sdvae64x64,
    Case::FourKPath,
    Case::RenderRss,
];

/// `dreamwalk bench`: time each case, ours and the reference side by side, print a table.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Cases to run, comma-separated (default: all but sdvae_72x128).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub cases: Vec<Case>,
    /// Timed runs per case, ours and the reference alike (default: 5, 3 for the VAE).
    #[arg(long)]
    pub runs: Option<usize>,
    /// Untimed warm-up runs before them (default: 1).
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Threads for the decoders (rayon; torch.set_num_threads for the reference) and
    /// upscale workers of the 4K path (the reference's thread pool).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,
    /// Run only ours, not the reference scripts.
    #[arg(long)]
    pub no_reference: bool,
    /// Also write every figure to this JSON file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The reference scripts' folder (default: $DREAMWALK_BENCH_DIR, else ../shared/bench
    /// next to the repository).
    #[arg(long)]
    pub bench_dir: Option<PathBuf>,
    /// The Python that runs the reference scripts.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// 4k_path: decoded frames per run (each but the first brings 3 in-betweens).
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(2..=10_000))]
    pub keyframes: u32,
    /// render_rss: the render lengths to compare, in frames.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    pub rss_frames: Vec<u64>,
    /// gpu_taesd: latent height x width.
    #[arg(long, default_value = "72x128", value_parser = parse_hw)]
    pub gpu_latent: (usize, usize),
    /// Internal: run one case in this process and print its figures as JSON.
    #[arg(long, hide = true)]
    pub child: bool,
}

fn parse_hw(text: &str) -> Result<(usize, usize), String> {
    let parsed = text
        .split_once('x')
        .and_then(|(h, w)| Some((h.trim().parse().ok()?, w.trim().parse().ok()?)));
    match parsed {
        Some((h, w)) if h > 0 && w > 0 => Ok((h, w)),
        _ => Err(format!(
            "`{text}` is not HEIGHTxWIDTH in latent pixels, e.g. 72x128"
        )),
    }
}

/// Figures of one side of one case.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Timing {
    /// Fastest run (per frame for the 4K path).
    pub min_ms: f64,
    pub median_ms: f64,
    /// Every timed run, in order.
    pub all_ms: Vec<f64>,
    /// Peak resident memory of the process that ran the case (VmHWM), MiB.
    pub peak_rss_mb: Option<f64>,
}

impl Timing {
    fn from_runs(all_ms: Vec<f64>, peak_rss_mb: Option<f64>) -> anyhow::Result<Self> {
        if all_ms.is_empty() || all_ms.iter().any(|t| !t.is_finite() || *t < 0.0) {
            bail!("no usable timings: {all_ms:?}");
        }
        let mut sorted = all_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let mid = sorted.len() / 2;
        let median_ms = if sorted.len() % 2 == 1 {
            sorted[mid]
        } else {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        };
        Ok(Self {
            min_ms: sorted[0],
            median_ms,
            all_ms,
            peak_rss_mb,
        })
    }
}

/// One row of the report.
#[derive(Clone, Debug, Serialize)]
pub struct CaseReport {
    pub case: String,
    /// What is measured, in words.
    pub work: String,
    /// `ms` per call, or `ms/frame` for the 4K path.
    pub unit: String,
    pub ours: Option<Timing>,
    pub reference: Option<Timing>,
    /// Why the reference did not run, when it did not.
    pub reference_skipped: Option<String>,
    /// ours/reference for times, reference/ours (= our fps over theirs) for the 4K path,
    /// longest/shortest render for peak RSS.
    pub ratio: Option<f64>,
    pub target: String,
    /// `None` when there is nothing to compare.
    pub pass: Option<bool>,
    /// Peak RSS, ours over the reference's (the VAE's memory target).
    pub peak_rss_ratio: Option<f64>,
    /// Case-specific figures (render lengths, frames per run).
    pub detail: serde_json::Value,
}

/// The whole run, as written by `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub machine: MachineInfo,
    pub threads: u16,
    pub reference_info: serde_json::Value,
    pub cases: Vec<CaseReport>,
}

/// Where the figures were taken.
#[derive(Clone, Debug, Serialize)]
pub struct MachineInfo {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    /// 1-minute load average before and after the run: how busy the cores were.
    pub load_before: Option<f64>,
    pub load_after: Option<f64>,
}

impl MachineInfo {
    fn probe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).trim().to_string())
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        let memory_gib = proc_kb("/proc/meminfo", "MemTotal").unwrap_or(0) as f64 / 1048576.0;
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib,
            load_before: load_average(),
            load_after: None,
        }
    }
}

fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A `kB` field of a /proc status-like file.
fn proc_kb(path: &str, key: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix(key)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
}

/// This process's peak resident memory so far, MiB.
fn peak_rss_mb() -> Option<f64> {
    proc_kb("/proc/self/status", "VmHWM").map(|kb| kb as f64 / 1024.0)
}

/// `dreamwalk bench`.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if args.child {
        return child(args);
    }
    let cases = if args.cases.is_empty() {
        DEFAULT_CASES.to_vec()
    } else {
        args.cases.clone()
    };
    let mut machine = MachineInfo::probe();
    eprintln!(
        "dreamwalk bench: {} ({} cores, {:.0} GiB), {} threads, load {:.1}",
        machine.cpu,
        machine.cores,
        machine.memory_gib,
        args.threads,
        machine.load_before.unwrap_or(f64::NAN)
    );
    let reference = Reference::find(args);
    let mut reports = Vec::new();
    for &case in &cases {
        let report = match case {
            Case::RenderRss => bench_render_rss(args),
            Case::GpuTaesd | Case::Gpu4k | Case::GpuWalk => bench_gpu(args, case),
            _ => bench_timed(args, case, &reference),
        }
        .with_context(|| format!("bench case {}", case.name()))?;
        eprintln!("{}", summary_line(&report));
        reports.push(report);
    }
    machine.load_after = load_average();
    let report = BenchReport {
        machine,
        threads: args.threads,
        reference_info: reference.info.clone(),
        cases: reports,
    };
    println!("{}", table(&report));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn runs_for(args: &BenchArgs, case: Case) -> (usize, usize) {
    let (warmup, runs) = case.default_runs();
    (
        args.warmup.unwrap_or(warmup),
        args.runs.unwrap_or(runs).max(1),
    )
}

/// Ours in a child process, then the reference, for a timed case.
fn bench_timed(args: &BenchArgs, case: Case, reference: &Reference) -> anyhow::Result<CaseReport> {
    let (warmup, runs) = runs_for(args, case);
    let (ours, theirs) = match case {
        Case::FourKPath => interleaved_4k_path(args, reference, warmup, runs)?,
        _ => {
            let ours = run_child(args, case, (warmup, runs), &[])?;
            (ours, reference.run(args, case, warmup, runs))
        }
    };
    let ours_timing = Timing::from_runs(ours.times_ms.clone(), ours.peak_rss_mb)?;
    let (reference_timing, skipped) = match theirs {
        Ok(timing) => (Some(timing), None),
        Err(reason) => (None, Some(reason)),
    };
    let (work, unit, target) = match case {
        Case::FourKPath => (
            format!(
                "{} decoded + 3 in-betweens each, bicubic 1024x576 -> 3840x2160, {} workers",
                args.keyframes, args.threads
            ),
            "ms/frame",
            "≥ 1.5x fps",
        ),
        Case::Taesd72x128 | Case::Taesd64x64 => {
            let (h, w) = case.latent_hw().unwrap_or_default();
            (
                format!("TAESD {h}x{w} -> {}x{}, f32", h * 8, w * 8),
                "ms",
                "≤ 0.5x time",
            )
        }
        _ => {
            let (h, w) = case.latent_hw().unwrap_or_default();
            (
                format!("SD 1.5 VAE {h}x{w} -> {}x{}, f32", h * 8, w * 8),
                "ms",
                "≤ 1.0x time, ≤ 1.0x peak RSS",
            )
        }
    };
    let mut report = CaseReport {
        case: case.name().to_string(),
        work,
        unit: unit.to_string(),
        ours: Some(ours_timing.clone()),
        reference: reference_timing.clone(),
        reference_skipped: skipped,
        ratio: None,
        target: target.to_string(),
        pass: None,
        peak_rss_ratio: None,
        detail: ours.detail,
    };
    if let Some(theirs) = &reference_timing {
        match case {
            Case::FourKPath => {
                let speedup = theirs.min_ms / ours_timing.min_ms;
                report.ratio = Some(speedup);
                report.pass = Some(speedup >= 1.5);
            }
            Case::Taesd72x128 | Case::Taesd64x64 => {
                let ratio = ours_timing.min_ms / theirs.min_ms;
                report.ratio = Some(ratio);
                report.pass = Some(ratio <= 0.5);
            }
            _ => {
                let ratio = ours_timing.min_ms / theirs.min_ms;
                let rss = ours_timing.peak_rss_mb.zip(theirs.peak_rss_mb);
                report.ratio = Some(ratio);
                report.peak_rss_ratio = rss.map(|(o, t)| o / t);
                report.pass = Some(ratio <= 1.0 && report.peak_rss_ratio.is_none_or(|r| r <= 1.0));
            }
        }
    }
    Ok(report)
}

/// The 4K path, ours and the reference's runs taking turns (each in a fresh process), so
/// that a change of load on the machine hits both sides alike.
fn interleaved_4k_path(
    args: &BenchArgs,
    reference: &Reference,
    warmup: usize,
    runs: usize,
) -> anyhow::Result<(ChildResult, Result<Timing, String>)> {
    let mut ours = ChildResult {
        times_ms: Vec::new(),
        peak_rss_mb: None,
        detail: serde_json::Value::Null,
    };
    let mut theirs: Result<(Vec<f64>, Option<f64>), String> =
        reference.seed.clone().map(|()| (Vec::new(), None));
    for i in 0..warmup {
        if theirs.is_ok() {
            let label = format!(
                "4k_path reference (numpy + OpenCV) warm-up {}/{warmup}",
                i + 1
            );
            if let Err(e) = reference.run_seed_once(args, &label) {
                theirs = Err(e);
            }
        }
    }
    for i in 0..runs {
        let run = run_child(args, Case::FourKPath, (warmup, 1), &[])?;
        ours.times_ms.extend(run.times_ms);
        ours.peak_rss_mb = max_option(ours.peak_rss_mb, run.peak_rss_mb);
        ours.detail = run.detail;
        let label = format!("4k_path reference (numpy + OpenCV) run {}/{runs}", i + 1);
        let outcome = theirs
            .is_ok()
            .then(|| reference.run_seed_once(args, &label));
        match outcome {
            Some(Ok((ms, run_peak))) => {
                if let Ok((all_ms, peak)) = &mut theirs {
                    all_ms.push(ms);
                    *peak = max_option(*peak, run_peak);
                }
            }
            Some(Err(e)) => theirs = Err(e),
            None => {}
        }
    }
    let theirs = theirs
        .and_then(|(all_ms, peak)| Timing::from_runs(all_ms, peak).map_err(|e| e.to_string()));
    Ok((ours, theirs))
}

fn max_option(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// A GPU case in a child process: a rate against an absolute target (no reference runs on
/// the GPU). A software adapter's figure is printed but judged by nobody.
fn bench_gpu(args: &BenchArgs, case: Case) -> anyhow::Result<CaseReport> {
    let (warmup, runs) = runs_for(args, case);
    let ours = run_child(args, case, (warmup, runs), &[])?;
    let timing = Timing::from_runs(ours.times_ms.clone(), ours.peak_rss_mb)?;
    let software = ours.detail["software"].as_bool().unwrap_or(true);
    let adapter = ours.detail["adapter"].as_str().unwrap_or("?").to_string();
    // (what was timed, frames per timed run, target rate, target text)
    let (work, frames_per_run, target_rate, target) = match case {
        Case::GpuTaesd => {
            let (h, w) = args.gpu_latent;
            (
                format!("GPU TAESD {h}x{w} -> {}x{} on {adapter}", h * 8, w * 8),
                1.0,
                30.0,
                "≥ 30 decodes/s",
            )
        }
        Case::GpuWalk => {
            let (h, w) = args.gpu_latent;
            (
                format!(
                    "GPU TAESD {h}x{w} -> {}x{} kept on the GPU + {WALK_INBETWEENS} in-betweens, \
                     each of the {} frames drawn to 3840x2160, on {adapter}",
                    h * 8,
                    w * 8,
                    WALK_INBETWEENS + 1
                ),
                (WALK_INBETWEENS + 1) as f64,
                60.0,
                "≥ 60 shown fps",
            )
        }
        _ => (
            format!("GPU upload 1024x576 + bicubic -> 3840x2160 on {adapter}"),
            1.0,
            60.0,
            "≥ 60 fps",
        ),
    };
    let rate = frames_per_run * 1e3 / timing.median_ms;
    Ok(CaseReport {
        case: case.name().to_string(),
        work,
        unit: "ms".to_string(),
        ours: Some(timing),
        reference: None,
        reference_skipped: Some(if software {
            format!("software adapter ({adapter}): not a GPU figure")
        } else {
            "no reference: the target is a rate".to_string()
        }),
        ratio: Some(rate / target_rate),
        target: target.to_string(),
        pass: (!software).then_some(rate >= target_rate),
        peak_rss_ratio: None,
        detail: ours.detail,
    })
}

fn gpu_detail(ctx: &crate::gpu::GpuContext) -> serde_json::Value {
    serde_json::json!({ "adapter": ctx.adapter_name(), "software": ctx.is_software() })
}

fn wait_for_gpu(ctx: &crate::gpu::GpuContext) -> anyhow::Result<()> {
    ctx.device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| anyhow::anyhow!("waiting for the GPU: {e}"))?;
    Ok(())
}

/// Decodes into the upscaler's source texture, as the viewer's GPU path does, and waits.
fn child_gpu_taesd(args: &BenchArgs, warmup: usize, runs: usize) -> anyhow::Result<ChildResult> {
    use crate::model::{TaesdConfig, TaesdDecoder};
    let ctx = crate::gpu::GpuContext::new_headless()?;
    let decoder = TaesdDecoder::random(&TaesdConfig::default(), 0)?;
    let gpu = crate::gpu::GpuTaesd::new(&ctx, &decoder)?;
    let (h, w) = args.gpu_latent;
    let f = gpu.upscale_factor() as u32;
    let mut upscaler = crate::gpu::BicubicUpscaler::new(&ctx.device, crate::gpu::OUTPUT_FORMAT);
    let target = upscaler
        .source_texture(&ctx.device, w as u32 * f, h as u32 * f)?
        .clone();
    // Two latents taking turns, as a walk sends a new one each time.
    let latents = [
        Tensor::randn(0f32, 1f32, (1, 4, h, w), &Device::Cpu)?,
        Tensor::randn(0f32, 1f32, (1, 4, h, w), &Device::Cpu)?,
    ];
    let mut i = 0;
    let times = time_runs(Case::GpuTaesd, warmup, runs, || {
        let started = Instant::now();
        gpu.decode_to_texture(&latents[i % 2], &target)?;
        wait_for_gpu(&ctx)?;
        i += 1;
        Ok(started.elapsed().as_secs_f64() * 1e3)
    })?;
    let mut detail = gpu_detail(&ctx);
    detail["bands"] = gpu.band_count(h, w)?.into();
    Ok(ChildResult {
        times_ms: times,
        peak_rss_mb: peak_rss_mb(),
        detail,
    })
}

/// Uploads a source frame and upscales it to 4K into an output texture, and waits.
fn child_gpu_4k(warmup: usize, runs: usize) -> anyhow::Result<ChildResult> {
    let ctx = crate::gpu::GpuContext::new_headless()?;
    let frames = PremadeFrames::new(SOURCE_SIZE, 2).frames;
    let mut upscaler = crate::gpu::BicubicUpscaler::new(&ctx.device, crate::gpu::OUTPUT_FORMAT);
    let output = crate::gpu::create_output_texture(&ctx.device, OUTPUT_SIZE.0, OUTPUT_SIZE.1);
    let view = output.create_view(&wgpu::TextureViewDescriptor::default());
    let mut i = 0;
    let times = time_runs(Case::Gpu4k, warmup, runs, || {
        let started = Instant::now();
        upscaler.upload(&ctx.device, &ctx.queue, &frames[i % 2])?;
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("bench gpu_4k"),
            });
        upscaler.render(&ctx.device, &ctx.queue, &mut encoder, &view)?;
        ctx.queue.submit([encoder.finish()]);
        wait_for_gpu(&ctx)?;
        i += 1;
        Ok(started.elapsed().as_secs_f64() * 1e3)
    })?;
    Ok(ChildResult {
        times_ms: times,
        peak_rss_mb: peak_rss_mb(),
        detail: gpu_detail(&ctx),
    })
}

/// In-betweens per decoded frame in the `gpu_walk` case (the viewer's default).
const WALK_INBETWEENS: usize = 3;

/// The viewer's GPU path for one decoded frame: decode into a [`crate::gpu::GpuFrame`],
/// draw the in-betweens from the previous frame and the frame itself to 4K, and wait.
fn child_gpu_walk(args: &BenchArgs, warmup: usize, runs: usize) -> anyhow::Result<ChildResult> {
    use crate::frame::FrameImage;
    use crate::model::{TaesdConfig, TaesdDecoder};
    let ctx = crate::gpu::GpuContext::new_headless()?;
    let decoder = TaesdDecoder::random(&TaesdConfig::default(), 0)?;
    let gpu = crate::gpu::GpuTaesd::new(&ctx, &decoder)?;
    let (h, w) = args.gpu_latent;
    let latents = [
        Tensor::randn(0f32, 1f32, (1, 4, h, w), &Device::Cpu)?,
        Tensor::randn(0f32, 1f32, (1, 4, h, w), &Device::Cpu)?,
    ];
    let mut upscaler = crate::gpu::BicubicUpscaler::new(&ctx.device, crate::gpu::OUTPUT_FORMAT);
    let output = crate::gpu::create_output_texture(&ctx.device, OUTPUT_SIZE.0, OUTPUT_SIZE.1);
    let view = output.create_view(&wgpu::TextureViewDescriptor::default());
    let mut previous = Arc::new(gpu.decode_frame(&latents[1])?);
    let mut i = 0;
    let times = time_runs(Case::GpuWalk, warmup, runs, || {
        let started = Instant::now();
        let next = Arc::new(gpu.decode_frame(&latents[i % 2])?);
        let k = WALK_INBETWEENS;
        let shown = (0..k)
            .map(|j| FrameImage::GpuInbetween {
                prev: previous.clone(),
                next: next.clone(),
                j,
                k,
            })
            .chain([FrameImage::Gpu(next.clone())]);
        for image in shown {
            let mut encoder = ctx
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("bench gpu_walk"),
                });
            upscaler.render_frame(&ctx.device, &ctx.queue, &mut encoder, &image, &view)?;
            ctx.queue.submit([encoder.finish()]);
        }
        wait_for_gpu(&ctx)?;
        if previous.was_read_back() || next.was_read_back() {
            bail!("a frame was copied to the CPU");
        }
        previous = next;
        i += 1;
        Ok(started.elapsed().as_secs_f64() * 1e3)
    })?;
    Ok(ChildResult {
        times_ms: times,
        peak_rss_mb: peak_rss_mb(),
        detail: gpu_detail(&ctx),
    })
}

/// Peak RSS of renders of each length, each in its own process.
fn bench_render_rss(args: &BenchArgs) -> anyhow::Result<CaseReport> {
    let mut lengths = args.rss_frames.clone();
    lengths.sort_unstable();
    lengths.dedup();
    if lengths.is_empty() || lengths[0] == 0 {
        bail!("--rss-frames needs frame counts above 0");
    }
    let mut peaks = Vec::new();
    let mut details = Vec::new();
    for &frames in &lengths {
        let result = run_child(
            args,
            Case::RenderRss,
            (0, 1),
            &["--rss-frames", &frames.to_string()],
        )?;
        let peak = result
            .peak_rss_mb
            .context("the render's peak RSS could not be read (/proc/self/status)")?;
        peaks.push(peak);
        details.push(serde_json::json!({
            "frames_asked": frames,
            "detail": result.detail,
            "peak_rss_mb": peak,
            "seconds": result.times_ms.first().map(|ms| ms / 1e3),
        }));
    }
    // Flat: the longest render's second half peaks no higher than its first half (which also
    // holds the model load and the first decodes), give or take the 4K frames in flight.
    // Peaks move in steps of one 4K frame (31.6 MiB): how many frames sit in the ring, the
    // upscale workers and the recorder's queue at one moment (at most 8 + 2 + 8) depends on
    // scheduling, so renders of different lengths, or halves, differ by a frame or two by
    // chance. Two frames over 500 are 130 KB per frame: a per-frame leak shows above that.
    let longest = &details[details.len() - 1]["detail"];
    let (first, second) = (
        longest["first_half_peak_mb"].as_f64().unwrap_or(f64::NAN),
        longest["second_half_peak_mb"].as_f64().unwrap_or(f64::NAN),
    );
    let frame_mb = (3840.0 * 2160.0 * 4.0) / (1024.0 * 1024.0);
    let ratio = second / first;
    let flat = second <= first + 2.0 * frame_mb;
    Ok(CaseReport {
        case: Case::RenderRss.name().to_string(),
        work: format!(
            "peak RSS of `dreamwalk render` (demo model, 4K frames, y4m) for {:?} frames",
            lengths
        ),
        unit: "MiB".to_string(),
        ours: None,
        reference: None,
        reference_skipped: Some("no reference: the target is flat memory".to_string()),
        ratio: ratio.is_finite().then_some(ratio),
        target: "2nd half ≤ 1st + 2 4K frames".to_string(),
        pass: ratio.is_finite().then_some(flat),
        peak_rss_ratio: None,
        detail: serde_json::json!({ "renders": details }),
    })
}

/// What a child process reports.
#[derive(Debug, Serialize, Deserialize)]
struct ChildResult {
    times_ms: Vec<f64>,
    peak_rss_mb: Option<f64>,
    detail: serde_json::Value,
}

/// Runs `case` in `dreamwalk bench --child` and reads its figures (its stderr, with the
/// progress bar, goes to ours).
fn run_child(
    args: &BenchArgs,
    case: Case,
    (warmup, runs): (usize, usize),
    extra: &[&str],
) -> anyhow::Result<ChildResult> {
    let exe = std::env::current_exe().context("finding the dreamwalk executable")?;
    let mut command = Command::new(&exe);
    command
        .args(["bench", "--child", "--cases", case.name()])
        .args(["--warmup", &warmup.to_string(), "--runs", &runs.to_string()])
        .args(["--threads", &args.threads.to_string()])
        .args(["--keyframes", &args.keyframes.to_string()])
        .arg(format!(
            "--gpu-latent={}x{}",
            args.gpu_latent.0, args.gpu_latent.1
        ))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let output = command
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    if !output.status.success() {
        bail!(
            "the child process for {} failed ({})",
            case.name(),
            output.status
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("the child process printed no figures")?;
    serde_json::from_str(line).context("reading the child's figures")
}

/// `dreamwalk bench --child`: one case, here, figures as one JSON line on stdout.
fn child(args: &BenchArgs) -> anyhow::Result<()> {
    let [case] = args.cases[..] else {
        bail!("--child runs exactly one case");
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads as usize)
        .build_global()
        .context("starting the thread pool")?;
    let (warmup, runs) = runs_for(args, case);
    let result = match case {
        Case::Taesd72x128 | Case::Taesd64x64 => child_taesd(case, warmup, runs)?,
        Case::Sdvae64x64 | Case::Sdvae72x128 => child_vae(case, warmup, runs)?,
        Case::FourKPath => child_4k_path(args, warmup, runs)?,
        Case::RenderRss => child_render_rss(args)?,
        Case::GpuTaesd => child_gpu_taesd(args, warmup, runs)?,
        Case::Gpu4k => child_gpu_4k(warmup, runs)?,
        Case::GpuWalk => child_gpu_walk(args, warmup, runs)?,
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
fn time_runs(
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

fn child_taesd(case: Case, warmup: usize, runs: usize) -> anyhow::Result<ChildResult> {
    use crate::model::{TaesdConfig, TaesdDecoder};
    let (h, w) = case.latent_hw().context("not a decoder case")?;
    // Random weights like the reference's re-init: the weights do not change the work.
    let decoder = TaesdDecoder::random(&TaesdConfig::default(), 0)?;
    let latents = Tensor::randn(0f32, 1f32, (1, 4, h, w), &Device::Cpu)?;
    let times = time_runs(case, warmup, runs, || {
        let started = Instant::now();
        let image = decoder.decode(&latents)?;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        drop(image);
        Ok(ms)
    })?;
    Ok(ChildResult {
        times_ms: times,
        peak_rss_mb: peak_rss_mb(),
        detail: serde_json::json!({ "gflop": decoder.flops(h, w) / 1e9 }),
    })
}

fn child_vae(case: Case, warmup: usize, runs: usize) -> anyhow::Result<ChildResult> {
    use crate::model::{AutoencoderKlConfig, VaeDecoder};
    let (h, w) = case.latent_hw().context("not a decoder case")?;
    // Random weights from each layer's init hint (the diffusers default init's shapes):
    // the GroupNorms keep activations in range, and the weights do not change the work.
    let varmap = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let vae = VaeDecoder::new(vb, &AutoencoderKlConfig::stable_diffusion())?;
    let z = Tensor::randn(0f32, 1f32, (1, 4, h, w), &Device::Cpu)?;
    let times = time_runs(case, warmup, runs, || {
        let started = Instant::now();
        let image = vae.decode_raw(&z)?;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        drop(image);
        Ok(ms)
    })?;
    Ok(ChildResult {
        times_ms: times,
        peak_rss_mb: peak_rss_mb(),
        detail: serde_json::Value::Null,
    })
}

/// The source and output sizes of the 4K path.
const SOURCE_SIZE: (u32, u32) = (1024, 576);
const OUTPUT_SIZE: (u32, u32) = (3840, 2160);

/// An [`Engine`] whose "decoder" hands out pre-made frames: the pipeline's stages after
/// decoding then run exactly as in the app, and only they are timed.
pub struct PremadeFrames {
    frames: Vec<RgbaImage>,
    next: AtomicUsize,
}

impl PremadeFrames {
    /// `count` smooth-ish frames of `size` (noise at 1/8 size, enlarged: like decoded
    /// images, unlike white noise), as the reference script makes its keyframes.
    pub fn new(size: (u32, u32), count: usize) -> Self {
        let mut resizer = BicubicResizer::new();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let (w, h) = ((size.0 / 8).max(4), (size.1 / 8).max(4));
        let frames = (0..count.max(1))
            .map(|_| {
                let pixels = (0..w * h * 4)
                    .map(|i| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        if i % 4 == 3 {
                            255
                        } else {
                            (state >> 32) as u8
                        }
                    })
                    .collect();
                let small = RgbaImage {
                    width: w,
                    height: h,
                    pixels,
                };
                resizer.resize(&small, size.0, size.1)
            })
            .collect();
        Self {
            frames,
            next: AtomicUsize::new(0),
        }
    }

    fn size(&self) -> (u32, u32) {
        (self.frames[0].width, self.frames[0].height)
    }
}

impl Engine for PremadeFrames {
    fn name(&self) -> String {
        "pre-made frames (bench)".to_string()
    }

    fn decoders(&self) -> Vec<DecoderKind> {
        vec![DecoderKind::Taesd]
    }

    fn size_multiple(&self) -> u32 {
        8
    }

    fn defaults(&self) -> ModelDefaults {
        ModelDefaults {
            image_size: self.size(),
            steps: 1,
            guidance: 1.0,
        }
    }

    fn endpoints(
        &self,
        request: &EndpointRequest,
        _progress: &mut dyn FnMut(SamplingProgress) -> bool,
    ) -> Result<Vec<Tensor>, EndpointError> {
        let (w, h) = request.image_size;
        let shape = (1, 4, h as usize / 8, w as usize / 8);
        request
            .prompts
            .iter()
            .map(|_| Ok(Tensor::zeros(shape, DType::F32, &Device::Cpu)?))
            .collect()
    }

    fn decode(&self, _latents: &Tensor, _decoder: DecoderKind) -> crate::model::Result<RgbaImage> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        Ok(self.frames[i % self.frames.len()].clone())
    }
}

/// One pass of the 4K path: `decoded` frames through the pipeline (in-betweens, upscale
/// workers, ring), every frame popped in order as `render` does. Returns (frames, seconds).
pub fn run_4k_path(
    engine: Arc<PremadeFrames>,
    decoded: u32,
    workers: usize,
    output_size: (u32, u32),
) -> anyhow::Result<(u64, f64)> {
    let settings = Settings {
        endpoints: EndpointRequest {
            prompts: vec!["start".to_string(), "end".to_string()],
            negative: String::new(),
            seed: 0,
            seed_per_keyframe: false,
            steps: 1,
            guidance: 1.0,
            image_size: engine.size(),
            init_latents: None,
        },
        walk: WalkSettings {
            // A once-through walk of two keyframes visits steps_between + 1 positions.
            steps_between: decoded.saturating_sub(1).max(1) as usize,
            interp: Interp::Lerp,
            easing: Easing::Linear,
            loop_mode: LoopMode::Once,
        },
        decoder: DecoderKind::Taesd,
        inbetweens: Inbetweens::Fixed(3),
        target_fps: 30.0,
        upscale: UpscaleMode::Cpu,
        output_size,
    };
    let options = PipelineOptions {
        policy: RingPolicy::Record,
        stop_at_end: true,
        upscale_workers: workers,
        ..Default::default()
    };
    let started = Instant::now();
    let pipeline = Pipeline::start(engine, settings, options);
    let mut frames = 0u64;
    while let Some(frame) = pipeline.ring().pop() {
        if frame.image.size() != output_size {
            bail!(
                "frame {} is {}x{}, not {}x{}",
                frame.index,
                frame.image.size().0,
                frame.image.size().1,
                output_size.0,
                output_size.1
            );
        }
        frames += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    let stats = pipeline.stats_snapshot();
    pipeline.shutdown();
    if let Some(error) = stats.last_error {
        bail!("the pipeline failed: {error}");
    }
    if frames == 0 {
        bail!("the pipeline produced no frames");
    }
    Ok((frames, seconds))
}

fn child_4k_path(args: &BenchArgs, warmup: usize, runs: usize) -> anyhow::Result<ChildResult> {
    let engine = Arc::new(PremadeFrames::new(SOURCE_SIZE, args.keyframes as usize));
    let mut frames_per_run = 0;
    let times = time_runs(Case::FourKPath, warmup, runs, || {
        let (frames, seconds) = run_4k_path(
            engine.clone(),
            args.keyframes,
            args.threads as usize,
            OUTPUT_SIZE,
        )?;
        frames_per_run = frames;
        Ok(seconds * 1e3 / frames as f64)
    })?;
    Ok(ChildResult {
        times_ms: times,
        peak_rss_mb: peak_rss_mb(),
        detail: serde_json::json!({ "frames_per_run": frames_per_run }),
    })
}

/// `dreamwalk render` of about `--rss-frames` 4K frames on the demo model, in this process.
/// The frames go through the whole render path at 3840x2160 (pipeline, ring, recorder
/// queue); the y4m is recorded at 64x36 (`--record-size`) so that 1000 frames do not
/// write 25 GB to the disk.
fn child_render_rss(args: &BenchArgs) -> anyhow::Result<ChildResult> {
    use clap::Parser;
    let &[frames] = &args.rss_frames[..] else {
        bail!("--child render_rss takes one --rss-frames count");
    };
    // Once through two keyframes with 3 in-betweens: 4 * steps_between + 1 frames.
    let steps_between = frames.saturating_sub(1).div_ceil(4).max(1);
    let dir = std::env::temp_dir().join(format!("dreamwalk-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = dir.join("render.y4m");
    let argv = [
        "dreamwalk".to_string(),
        "render".to_string(),
        "--prompt=a red fox in the snow".to_string(),
        "--prompt=a lighthouse at night".to_string(),
        "--steps=2".to_string(),
        format!("--steps-between={steps_between}"),
        "--inbetween=3".to_string(),
        "--size=3840x2160".to_string(),
        "--record-size=64x36".to_string(),
        format!("--out={}", out.display()),
    ];
    let cli = crate::cli::Cli::try_parse_from(&argv).context("building the render command")?;
    let Some(crate::cli::Command::Render(render_args)) = &cli.command else {
        bail!("not a render command");
    };
    let sampler = RssSampler::start();
    let started = Instant::now();
    let rendered = crate::cli::render(render_args, &cli.model);
    let seconds = started.elapsed().as_secs_f64();
    let samples = sampler.finish();
    let written = y4m_frames(&out);
    let _ = std::fs::remove_dir_all(&dir);
    rendered?;
    // The peak of each half of the render: a length-dependent leak makes the second higher;
    // equal halves see the same chance of the bounded stages all being full at once.
    let half = seconds / 2.0;
    let peak_of = |keep: &dyn Fn(f64) -> bool| {
        samples
            .iter()
            .filter(|(t, _)| keep(*t))
            .map(|(_, mb)| *mb)
            .fold(f64::NAN, f64::max)
    };
    Ok(ChildResult {
        times_ms: vec![seconds * 1e3],
        peak_rss_mb: peak_rss_mb(),
        detail: serde_json::json!({
            "frames": written,
            "steps_between": steps_between,
            "rss_samples": samples.len(),
            "first_half_peak_mb": peak_of(&|t| t < half),
            "second_half_peak_mb": peak_of(&|t| t >= half),
        }),
    })
}

/// Samples this process's resident memory every 20 ms on a thread, until finished.
struct RssSampler {
    stop: crossbeam_channel::Sender<()>,
    thread: std::thread::JoinHandle<Vec<(f64, f64)>>,
}

impl RssSampler {
    fn start() -> Self {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut samples = Vec::new();
            loop {
                if let Some(kb) = proc_kb("/proc/self/status", "VmRSS") {
                    samples.push((started.elapsed().as_secs_f64(), kb as f64 / 1024.0));
                }
                match stopped.recv_timeout(Duration::from_millis(20)) {
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
                    _ => return samples,
                }
            }
        });
        Self { stop, thread }
    }

    /// (seconds since start, MiB) samples.
    fn finish(self) -> Vec<(f64, f64)> {
        let _ = self.stop.send(());
        self.thread.join().unwrap_or_default()
    }
}

/// Frames in a y4m file (counts `FRAME` markers; the tiny test frames hold no such bytes
/// by chance often enough to matter for a count shown to a person).
fn y4m_frames(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    Some(bytes.windows(6).filter(|w| w == b"FRAME\n").count() as u64)
}

/// The reference scripts and whether Python can run them.
struct Reference {
    dir: PathBuf,
    python: String,
    /// `Ok` when Python can run the script; the reason otherwise.
    decoders: Result<(), String>,
    seed: Result<(), String>,
    info: serde_json::Value,
}

impl Reference {
    fn find(args: &BenchArgs) -> Self {
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
            python: args.python.clone(),
            decoders: Err("--no-reference".to_string()),
            seed: Err("--no-reference".to_string()),
            info: serde_json::Value::Null,
        };
        if args.no_reference {
            return reference;
        }
        reference.decoders = reference.check("time_decoders.py", "torch, diffusers");
        reference.seed = reference.check("seed_pipeline.py", "numpy, cv2");
        for (what, status) in [
            ("torch + diffusers", &reference.decoders),
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
    fn run(
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
            _ => {
                self.decoders.clone()?;
                self.run_decoders(args, case, warmup, runs)
            }
        }
    }

    fn run_decoders(
        &self,
        args: &BenchArgs,
        case: Case,
        warmup: usize,
        runs: usize,
    ) -> Result<Timing, String> {
        let json = std::env::temp_dir().join(format!(
            "dreamwalk-bench-{}-{}.json",
            std::process::id(),
            case.name()
        ));
        let script = self.dir.join("time_decoders.py");
        let script_args = vec![
            "--cases".to_string(),
            case.name().to_string(),
            "--threads".to_string(),
            args.threads.to_string(),
            // At least one warm-up: the script times its first call as one.
            "--warmup".to_string(),
            warmup.max(1).to_string(),
            "--runs".to_string(),
            runs.to_string(),
            "--slow-runs".to_string(),
            runs.to_string(),
            "--json".to_string(),
            json.display().to_string(),
        ];
        let label = format!("{} reference (PyTorch)", case.name());
        let outcome = self.run_script(&label, &script, &script_args)?;
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
        Timing::from_runs(all_ms, outcome.peak_rss_mb).map_err(|e| e.to_string())
    }

    /// One run of the seed pipeline script (it times a single pass over its keyframes):
    /// (ms per frame, peak RSS).
    fn run_seed_once(&self, args: &BenchArgs, label: &str) -> Result<(f64, Option<f64>), String> {
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

fn summary_line(report: &CaseReport) -> String {
    if report.case == Case::RenderRss.name() {
        return format!("{}: {}", report.case, render_peaks(report).join(", "));
    }
    let ours = report.ours.as_ref().map_or(String::new(), |t| {
        format!("ours min {:.2} {}", t.min_ms, report.unit)
    });
    let theirs = match (&report.reference, &report.reference_skipped) {
        (Some(t), _) => format!(", reference min {:.2} {}", t.min_ms, report.unit),
        (None, Some(why)) => format!(", reference skipped ({why})"),
        _ => String::new(),
    };
    format!("{}: {ours}{theirs}", report.case)
}

fn ms_pair(t: &Timing, unit: &str) -> String {
    let fps = |ms: f64| 1e3 / ms;
    if unit == "ms/frame" {
        format!(
            "{:.2} / {:.2} ms ({:.0} fps)",
            t.min_ms,
            t.median_ms,
            fps(t.min_ms)
        )
    } else {
        format!("{:.0} / {:.0} ms", t.min_ms, t.median_ms)
    }
}

/// "273 MiB @ 101 frames" for each render of a `render_rss` report.
fn render_peaks(report: &CaseReport) -> Vec<String> {
    let renders = report.detail["renders"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    renders
        .iter()
        .map(|r| {
            format!(
                "{:.0} MiB @ {} frames (halves {:.0}, {:.0})",
                r["peak_rss_mb"].as_f64().unwrap_or(f64::NAN),
                r["detail"]["frames"]
                    .as_u64()
                    .or(r["frames_asked"].as_u64())
                    .unwrap_or(0),
                r["detail"]["first_half_peak_mb"]
                    .as_f64()
                    .unwrap_or(f64::NAN),
                r["detail"]["second_half_peak_mb"]
                    .as_f64()
                    .unwrap_or(f64::NAN),
            )
        })
        .collect()
}

/// The table printed at the end.
pub fn table(report: &BenchReport) -> String {
    let mut rows: Vec<[String; 6]> = vec![[
        "case".into(),
        "ours min / median".into(),
        "reference min / median".into(),
        "ratio".into(),
        "target".into(),
        "".into(),
    ]];
    let mark = |pass: Option<bool>| match pass {
        Some(true) => "pass".to_string(),
        Some(false) => "FAIL".to_string(),
        None => "-".to_string(),
    };
    for case in &report.cases {
        if case.case == Case::RenderRss.name() {
            let peaks = render_peaks(case);
            rows.push([
                format!("{} (peak RSS)", case.case),
                peaks.join(", "),
                "-".into(),
                case.ratio.map_or("-".into(), |r| format!("{r:.2}x")),
                case.target.clone(),
                mark(case.pass),
            ]);
            continue;
        }
        let ours = case
            .ours
            .as_ref()
            .map_or("-".into(), |t| ms_pair(t, &case.unit));
        let theirs = match (&case.reference, &case.reference_skipped) {
            (Some(t), _) => ms_pair(t, &case.unit),
            (None, Some(_)) => "skipped".into(),
            _ => "-".into(),
        };
        let ratio = case.ratio.map_or("-".into(), |r| match case.unit.as_str() {
            _ if case.case.starts_with("gpu_") => format!("{r:.2}x target rate"),
            "ms/frame" => format!("{r:.2}x fps"),
            _ => format!("{r:.2}x time"),
        });
        rows.push([
            case.case.clone(),
            ours,
            theirs,
            ratio,
            case.target.clone(),
            mark(case.pass),
        ]);
        let rss = case.ours.as_ref().and_then(|t| t.peak_rss_mb);
        if case.case.starts_with("sdvae") {
            let theirs_rss = case.reference.as_ref().and_then(|t| t.peak_rss_mb);
            rows.push([
                format!("{} (peak RSS)", case.case),
                rss.map_or("-".into(), |mb| format!("{mb:.0} MiB")),
                theirs_rss.map_or("-".into(), |mb| format!("{mb:.0} MiB")),
                case.peak_rss_ratio
                    .map_or("-".into(), |r| format!("{r:.2}x")),
                "≤ 1.0x".into(),
                mark(case.peak_rss_ratio.map(|r| r <= 1.0)),
            ]);
        }
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, &w)| format!("{cell}{}", " ".repeat(w - cell.chars().count())))
            .collect();
        out.push_str(cells.join(" | ").trim_end());
        out.push('\n');
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
            out.push_str(&rule.join("-|-"));
            out.push('\n');
        }
    }
    let skipped: Vec<String> = report
        .cases
        .iter()
        .filter(|c| c.reference.is_none() && c.case != Case::RenderRss.name())
        .filter_map(|c| Some(format!("{}: {}", c.case, c.reference_skipped.as_ref()?)))
        .collect();
    if !skipped.is_empty() {
        out.push_str(&format!("reference skipped: {}\n", skipped.join("; ")));
    }
    out.push_str(&format!(
        "{}, {} cores, {} threads; load {:.1} before, {:.1} after; ratios from the fastest runs\n",
        report.machine.cpu,
        report.machine.cores,
        report.threads,
        report.machine.load_before.unwrap_or(f64::NAN),
        report.machine.load_after.unwrap_or(f64::NAN),
    ));
    out
}
