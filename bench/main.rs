//! `dreamwalk-bench`: times this project's decoders and 4K path against the reference
//! scripts in `../shared/bench/` (PyTorch/diffusers decoders, the original app's numpy +
//! OpenCV pipeline), side by side in one run, and prints the ratios.
//!
//! These machines are noisy (other processes share the two cores), so only ratios measured
//! in one run mean anything: each case runs ours, then the reference, back to back. Every
//! case runs in a process of its own (ours: `dreamwalk-bench --child`, see [`child`]; the
//! reference: one `python3` per case) so that each process's peak RSS (`VmHWM`) belongs to
//! that case alone. Ratios use the fastest run of each side: load only ever adds time, so
//! the minimum is the steadiest estimate of what the code itself costs.
//!
//! Nothing here asserts a time: the bench reports, it never fails on speed.
//!
//! Run it with `cargo run --release --bin dreamwalk-bench -- --cases ...`.

mod alloc;
mod cases;
mod child;
mod decoders;
mod four_k;
mod gpu;
mod gpu_keyframe;
mod keyframe;
mod probe;
mod reference;
mod render_rss;
mod report;
mod side_by_side;
mod x4;

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

use cases::{Case, DEFAULT_CASES};

/// Counts live heap bytes, for the decoders' working buffers.
#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;
use probe::{load_average, MachineInfo};
use reference::Reference;
use report::{summary_line, table, BenchReport};

/// Time the decoders and the 4K path against the reference scripts, side by side.
#[derive(Parser, Debug, Clone)]
#[command(name = "dreamwalk-bench", version)]
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
    /// gpu_unet_*, gpu_clip, gpu_keyframe_turbo: store the weight matrices as f16 (the adapter
    /// needs SHADER_F16); the sums stay f32.
    #[arg(long)]
    pub gpu_f16: bool,
    /// gpu_unet_*, gpu_clip, gpu_keyframe_turbo: keep wgpu's runtime bounds checks in gemm and
    /// conv (by default they run without, their indices proven in range).
    #[arg(long)]
    pub gpu_bounds_checks: bool,
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

impl BenchArgs {
    /// (warm-ups, timed runs) of `case`: `--warmup` / `--runs`, else the case's own.
    pub fn runs_for(&self, case: Case) -> (usize, usize) {
        let (warmup, runs) = case.default_runs();
        (
            self.warmup.unwrap_or(warmup),
            self.runs.unwrap_or(runs).max(1),
        )
    }
}

fn main() -> std::process::ExitCode {
    dreamwalk::gpu::quiet_vulkan_layers();
    dreamwalk::cli::init_logging();
    match run(&BenchArgs::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One clear sentence per cause, no backtrace.
            eprintln!("dreamwalk: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the cases (or, with `--child`, one case here) and prints the table.
fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if args.child {
        return child::child(args);
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
            Case::RenderRss => render_rss::bench_render_rss(args),
            Case::GpuTaesd | Case::Gpu4k | Case::GpuWalk => gpu::bench_gpu(args, case),
            c if c.is_gpu_sampling() => gpu_keyframe::bench_gpu_keyframe(args, case),
            _ => side_by_side::bench_timed(args, case, &reference),
        }
        .with_context(|| format!("bench case {case}"))?;
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
