//! The command line, and nothing else: clap's argument structs, their conversion into the
//! library's types, and the terminal's progress display. `dreamwalk` opens the viewer,
//! `dreamwalk render` runs the same engine headless (or one segment of its frames),
//! `dreamwalk join` makes one video of segments, `dreamwalk upscale` makes a picture 4x
//! larger; the work itself is in [`crate::usecase`]
//! and [`crate::app`].

mod args;
mod hires;
mod join;
mod progress;
mod upscale;
mod values;

pub use args::{Cli, Command, KeyframeArg, ModelArgs, RenderArgs, Size, ViewerArgs};
pub use join::JoinArgs;
pub use progress::{RenderBar, UpscaleBar};
pub use upscale::UpscaleArgs;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::gpu::GpuDecode;
use anyhow::Context;
use signal_hook::consts::{SIGINT, SIGTERM};
use values::GpuDecodeArg;

/// Logs to stderr at INFO (or as `RUST_LOG` says), with wgpu and naga kept below WARN and
/// symphonia quiet (the audio's errors are reported once, by name).
pub fn init_logging() {
    let default_filter = format!(
        "info,{},{}",
        crate::gpu::QUIET_WGPU_LOG_DIRECTIVES,
        crate::audio::QUIET_SYMPHONIA_LOG_DIRECTIVES
    );
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Runs what the command line asks for; the exit code says how it ended (130 or 143 for a
/// render stopped by SIGINT or SIGTERM).
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Some(Command::Render(args)) => render(args, &cli.model),
        Some(Command::Upscale(args)) => upscale(args, &cli.model).map(|()| ExitCode::SUCCESS),
        Some(Command::Join(args)) => join(args).map(|()| ExitCode::SUCCESS),
        None => run_viewer(&cli.model, &cli.viewer).map(|()| ExitCode::SUCCESS),
    }
}

/// `dreamwalk render`: loads the model, renders the walk, prints what was written.
///
/// A first SIGINT (Ctrl-C) or SIGTERM stops the render: the frames already on their way to
/// the file are written, the output is finalized under its name, what was kept is printed,
/// and the exit code is 128 + the signal. A second one exits at once; whatever is under the
/// output's name is still whole (unfinished files stay under their temporary names).
fn render(args: &RenderArgs, model: &ModelArgs) -> anyhow::Result<ExitCode> {
    args.check_frames()?;
    let keyframes = args.read_keyframes()?;
    // A sound track that cannot time the walk (unreadable, not audio, silent) fails before
    // the model loads, and so does a bad --out (unknown extension, .gif without ffmpeg, an
    // existing file); a sound track the output cannot hold is said.
    let audio = args.read_audio()?;
    crate::record::check_output(&args.out, &args.record_options())?;
    if let crate::record::AudioPlan::Left(reason) =
        crate::record::audio_plan(&args.out, &args.record_options())?
    {
        eprintln!("dreamwalk: note: {reason}");
    }
    let hires = args.hires.source()?;
    let gpu_decode = match &hires {
        // The frames are the x4 VAE's, decoded on the CPU.
        Some(_) if args.gpu_decode == Some(GpuDecodeArg::On) => {
            anyhow::bail!("--gpu-decode on decodes TAESD; --hires x4 frames are the x4 upscaler's VAE decodes")
        }
        Some(hires) => {
            hires.check()?;
            GpuDecode::Off
        }
        None => args.gpu_decode.unwrap_or(args.gpu).into(),
    };
    let (engine, note) = crate::usecase::headless_engine(
        &model.source(),
        args.gpu.into(),
        args.gpu_precision.into(),
        gpu_decode,
    )?;
    if let Some(note) = note {
        eprintln!("dreamwalk: {note}");
    }
    let engine = match &hires {
        Some(hires) => crate::usecase::with_hires(engine, hires)?,
        None => engine,
    };
    let job = args.job(&*engine, keyframes, audio)?;
    if args.decoder.is_none()
        && hires.is_none()
        && job.settings.decoder != crate::model::DecoderKind::Taesd
    {
        eprintln!(
            "dreamwalk: this model has no TAESD decoder: decoding with its {} ({})",
            job.settings.decoder.label(),
            engine.decoder_description(job.settings.decoder)
        );
    }
    for warning in job.settings.warnings(&*engine) {
        eprintln!("dreamwalk: warning: {warning}");
    }
    let interrupts = Interrupts::watch()?;
    let mut progress = progress::RenderBar::new();
    let summary = crate::usecase::render_until(engine, &job, &mut progress, &interrupts.stop)?;
    progress.finish();
    eprintln!("{summary}");
    if summary.interrupted {
        let signal = interrupts.signal();
        let name = if signal == SIGTERM {
            "SIGTERM"
        } else {
            "SIGINT"
        };
        match summary.frames_written {
            0 => eprintln!(
                "dreamwalk: stopped by {name} before the first frame; {} was not touched",
                job.out.display()
            ),
            n => eprintln!(
                "dreamwalk: stopped by {name}: kept {n} frames, {} is complete",
                job.out.display()
            ),
        }
        return Ok(ExitCode::from(128 + signal as u8));
    }
    Ok(ExitCode::SUCCESS)
}

/// `dreamwalk upscale`: checks everything, loads the x4 upscaler, upscales, prints what
/// was written.
fn upscale(args: &UpscaleArgs, model: &ModelArgs) -> anyhow::Result<()> {
    let job = args.job(model)?;
    let mut progress = progress::UpscaleBar::new();
    let summary = crate::usecase::upscale(&job, &mut progress);
    progress.finish();
    eprintln!("dreamwalk: {}", summary?);
    Ok(())
}

/// `dreamwalk join`: checks every segment, joins them, prints what was written.
fn join(args: &JoinArgs) -> anyhow::Result<()> {
    let job = args.job();
    eprintln!(
        "dreamwalk: joining {} segments into {}",
        job.segments.len(),
        job.out.display()
    );
    let summary = crate::usecase::join(&job)?;
    eprintln!("dreamwalk: {summary}");
    Ok(())
}

/// SIGINT and SIGTERM, caught: the first sets `stop` (and records which it was), a second
/// one, once `stop` is set, ends the process at once with 128 + its number.
struct Interrupts {
    stop: Arc<AtomicBool>,
    signal: Arc<AtomicUsize>,
}

impl Interrupts {
    fn watch() -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let signal = Arc::new(AtomicUsize::new(0));
        for number in [SIGINT, SIGTERM] {
            // Actions run in the order registered: the shutdown looks at `stop` before this
            // signal sets it, so only a second signal exits.
            signal_hook::flag::register_conditional_shutdown(
                number,
                128 + number,
                Arc::clone(&stop),
            )
            .and_then(|_| {
                signal_hook::flag::register_usize(number, Arc::clone(&signal), number as usize)
            })
            .and_then(|_| signal_hook::flag::register(number, Arc::clone(&stop)))
            .context("cannot catch SIGINT/SIGTERM")?;
        }
        Ok(Self { stop, signal })
    }

    /// The signal that stopped the render (SIGINT if none was recorded).
    fn signal(&self) -> i32 {
        match self.signal.load(Ordering::Relaxed) {
            0 => SIGINT,
            n => n as i32,
        }
    }
}

/// `dreamwalk` with no subcommand: the desktop viewer.
fn run_viewer(model: &ModelArgs, viewer: &ViewerArgs) -> anyhow::Result<()> {
    let options = viewer.options(model).context("viewer options")?;
    crate::app::run(options)
}
