//! The command line: `dreamwalk` opens the viewer, `dreamwalk render` runs the same engine
//! headless and writes the walk to files.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use crate::model::{DecoderKind, EndpointRequest, Engine};
use crate::pipeline::{Inbetweens, Pipeline, PipelineOptions, Popped, RingPolicy, Settings};
use crate::upscale::UpscaleMode;
use crate::walk::{Easing, Interp, LoopMode, WalkSettings};

/// Walk the latent space of Stable Diffusion between prompts, in real time.
#[derive(Parser, Debug)]
#[command(name = "dreamwalk", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub viewer: ViewerArgs,
}

/// Options of the window (`dreamwalk` without a subcommand).
#[derive(Args, Debug, Clone, Default)]
pub struct ViewerArgs {
    /// Start playing as soon as the model is loaded.
    #[arg(long)]
    pub play: bool,
    /// Save a PNG of the window (and a JSON with the picture's rectangle) once frames have
    /// played for `--screenshot-after` seconds, then close. Implies --play.
    #[arg(long, value_name = "PNG")]
    pub screenshot: Option<PathBuf>,
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    pub screenshot_after: f64,
    /// Where TAESD decodes: `auto` uses the GPU on a hardware adapter (a software one such
    /// as lavapipe is slower than the CPU decoder), `on` on any adapter, `off` never.
    #[arg(long, value_enum, default_value_t = crate::gpu::GpuDecode::Auto)]
    pub gpu_decode: crate::gpu::GpuDecode,
    /// Decoded (source) frame size, sides multiples of 8 (default: the model's, 1024x576
    /// for the demo model).
    #[arg(long, value_name = "WxH")]
    pub source: Option<Size>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Render a walk headless to a PNG sequence or a video file.
    Render(RenderArgs),
    /// Time the decoders and the 4K path against the reference scripts, side by side.
    Bench(crate::bench::BenchArgs),
}

/// Which weights to run.
#[derive(Args, Debug, Clone, Default)]
pub struct ModelArgs {
    /// A diffusers model folder, or a Hugging Face id found in the local cache
    /// (e.g. stabilityai/sd-turbo). Without it, the built-in demo model runs.
    #[arg(long, global = true)]
    pub model: Option<String>,
    /// A TAESD decoder: a folder (diffusers AutoencoderTiny) or a .safetensors file.
    #[arg(long, global = true)]
    pub taesd: Option<PathBuf>,
}

/// `WIDTHxHEIGHT`, e.g. `1024x576`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    pub width: u32,
    pub height: u32,
}

impl std::str::FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a size: write WIDTHxHEIGHT, e.g. 1024x576");
        let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
        let (width, height) = (w.trim().parse::<u32>(), h.trim().parse::<u32>());
        match (width, height) {
            (Ok(width), Ok(height)) if width > 0 && height > 0 => {
                if width > 16384 || height > 16384 {
                    return Err(format!("`{s}` is larger than 16384 pixels on a side"));
                }
                Ok(Size { width, height })
            }
            _ => Err(bad()),
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct RenderArgs {
    /// A keyframe prompt; give two or more, in walk order.
    #[arg(long = "prompt", required = true)]
    pub prompts: Vec<String>,
    /// The negative prompt.
    #[arg(long, default_value = "")]
    pub negative: String,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Give keyframe i the seed `seed + i` (default: all keyframes start from one noise).
    #[arg(long)]
    pub seed_per_keyframe: bool,
    /// Sampler steps per keyframe (default: the model's; 1-4 suit SD-Turbo).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale (1 or less: off).
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Walk positions between two keyframes.
    #[arg(long, default_value_t = 24)]
    pub steps_between: usize,
    /// In-between frames per decoded frame: 0 to 15, or `auto`.
    #[arg(long, default_value = "3")]
    pub inbetween: Inbetweens,
    #[arg(long, value_enum, default_value_t = Interp::Slerp)]
    pub interp: Interp,
    #[arg(long, value_enum, default_value_t = Easing::Linear)]
    pub ease: Easing,
    #[arg(long = "loop", value_enum, default_value_t = LoopMode::Once)]
    pub loop_mode: LoopMode,
    /// Laps of a ping-pong or endless loop to render.
    #[arg(long, default_value_t = 1)]
    pub laps: u64,
    /// Output frame size.
    #[arg(long, default_value = "3840x2160")]
    pub size: Size,
    /// Decoded (source) size, a multiple of 8 (default: 1024x576 for the demo model, the
    /// model's native size otherwise).
    #[arg(long)]
    pub source: Option<Size>,
    #[arg(long, value_enum, default_value_t = DecoderKind::Taesd)]
    pub decoder: DecoderKind,
    /// Where TAESD decodes: `auto` on a hardware GPU when there is one (a software adapter
    /// such as lavapipe is slower than the CPU decoder), `on` on any adapter, `off` never.
    #[arg(long, value_enum, default_value_t = crate::gpu::GpuDecode::Auto)]
    pub gpu_decode: crate::gpu::GpuDecode,
    /// CPU bicubic to `--size`, or none (frames stay at the source size).
    #[arg(long, value_enum, default_value_t = UpscaleMode::Cpu)]
    pub upscale: UpscaleMode,
    /// Frames per second of the output video.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=240))]
    pub fps: u32,
    /// Output: a folder (PNG sequence), or a file .mp4 / .y4m.
    #[arg(long)]
    pub out: PathBuf,
    /// Start every keyframe from the tensor `init_latents` of this safetensors file.
    #[arg(long)]
    pub init_latents: Option<PathBuf>,
    /// Also save the keyframe latents (`keyframe_0`, `keyframe_1`, ...) to this file.
    #[arg(long)]
    pub save_latents: Option<PathBuf>,
    /// H.264 quality for .mp4 (lower is better; 18 is visually lossless).
    #[arg(long, default_value_t = 18, value_parser = clap::value_parser!(u8).range(0..=51))]
    pub crf: u8,
    /// Size of the recorded video when it should differ from the frames.
    #[arg(long)]
    pub record_size: Option<Size>,
}

/// Loads the weights named on the command line, or the built-in demo model.
pub fn load_engine(args: &ModelArgs) -> anyhow::Result<Arc<dyn Engine>> {
    let engine = match &args.model {
        None => {
            let mut demo = crate::model::StableDiffusion::demo();
            if let Some(taesd) = &args.taesd {
                demo.set_taesd(taesd)?;
            }
            demo
        }
        Some(model) => crate::model::StableDiffusion::load(model, args.taesd.as_deref())?,
    };
    Ok(Arc::new(engine))
}

/// The settings a render starts from.
pub fn render_settings(args: &RenderArgs, engine: &dyn Engine) -> anyhow::Result<Settings> {
    if args.prompts.len() < 2 {
        bail!("a walk needs two or more prompts: give --prompt twice or more");
    }
    if let Some(i) = args.prompts.iter().position(|p| p.trim().is_empty()) {
        bail!("prompt {} is empty", i + 1);
    }
    if args.steps_between == 0 {
        bail!("--steps-between must be at least 1");
    }
    if args.laps == 0 {
        bail!("--laps must be at least 1");
    }
    let defaults = engine.defaults();
    let source = args.source.unwrap_or(Size {
        width: defaults.image_size.0,
        height: defaults.image_size.1,
    });
    let factor = engine.size_multiple();
    if !source.width.is_multiple_of(factor) || !source.height.is_multiple_of(factor) {
        bail!(
            "--source {}x{}: both sides must be multiples of {factor} for this model",
            source.width,
            source.height
        );
    }
    if !engine.decoders().contains(&args.decoder) {
        bail!("this model has no {} decoder", args.decoder.label());
    }
    let init_latents = match &args.init_latents {
        None => None,
        Some(path) => Some(crate::model::load_init_latents(path)?),
    };
    Ok(Settings {
        endpoints: EndpointRequest {
            prompts: args.prompts.clone(),
            negative: args.negative.clone(),
            seed: args.seed,
            seed_per_keyframe: args.seed_per_keyframe,
            steps: args.steps.unwrap_or(defaults.steps),
            guidance: args.guidance.unwrap_or(defaults.guidance),
            image_size: (source.width, source.height),
            init_latents,
        },
        walk: WalkSettings {
            steps_between: args.steps_between,
            interp: args.interp,
            easing: args.ease,
            loop_mode: args.loop_mode,
        },
        decoder: args.decoder,
        inbetweens: args.inbetween,
        target_fps: args.fps as f64,
        upscale: args.upscale,
        output_size: (args.size.width, args.size.height),
    })
}

/// `dreamwalk render`: the whole walk, every frame in order, to files.
pub fn render(args: &RenderArgs, model: &ModelArgs) -> anyhow::Result<()> {
    let (engine, note) =
        crate::gpu::with_headless_gpu_decoder(load_engine(model)?, args.gpu_decode);
    if let Some(note) = note {
        eprintln!("dreamwalk: {note}");
    }
    let settings = render_settings(args, &*engine)?;
    let frame_size = match settings.upscale {
        UpscaleMode::Cpu => settings.output_size,
        _ => settings.endpoints.image_size,
    };
    let record_options = crate::record::RecordOptions {
        fps: args.fps,
        size: args.record_size.map(|s| (s.width, s.height)),
        crf: args.crf,
        comment: Some(crate::record::provenance(&engine.name(), &args.prompts)),
        ..Default::default()
    };
    // Open the output first: a bad path should fail before minutes of sampling.
    let recorder = crate::record::Recorder::start(&args.out, record_options)
        .with_context(|| format!("cannot write to {}", args.out.display()))?;
    eprintln!(
        "dreamwalk: {} | {} | {} keyframes | {}x{} frames | {}",
        engine.name(),
        engine.decoder_description(settings.decoder),
        args.prompts.len(),
        frame_size.0,
        frame_size.1,
        args.out.display()
    );
    let options = PipelineOptions {
        policy: RingPolicy::Record,
        stop_at_end: true,
        laps: args.laps,
        // A walk played once never comes back to a decoded frame: caching them would only
        // make memory grow with the walk's length.
        cache_budget_bytes: match args.loop_mode {
            LoopMode::Once => 0,
            _ => PipelineOptions::default().cache_budget_bytes,
        },
        ..Default::default()
    };
    let pipeline = Pipeline::start(engine, settings.clone(), options);
    let progress = progress_bar();
    let mut written = 0u64;
    loop {
        // Wake now and then to refresh the progress line while keyframes are sampled.
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(250);
        let frame = match pipeline.ring().pop_by(deadline) {
            Popped::Frame(frame) => frame,
            Popped::Late => {
                let stats = pipeline.stats_snapshot();
                progress.set_message(stats.phase);
                continue;
            }
            Popped::Closed => break,
        };
        let image = frame
            .image
            .to_cpu()
            .with_context(|| format!("reading frame {} back from the GPU", frame.index))?;
        recorder
            .push(frame.index, image)
            .with_context(|| format!("writing frame {} to {}", frame.index, args.out.display()))?;
        written += 1;
        let stats = pipeline.stats_snapshot();
        progress.set_position(written);
        progress.set_message(format!(
            "decode {:.0} ms | buffer {}/{} | {}",
            stats.decode_ms, stats.buffer_fill, stats.buffer_capacity, stats.phase
        ));
    }
    let stats = pipeline.stats_snapshot();
    pipeline.shutdown();
    if let Some(error) = stats.last_error {
        bail!("{error}");
    }
    let summary = recorder.finish().context("finishing the output file")?;
    progress.finish_and_clear();
    eprintln!(
        "wrote {written} frames: {}\n  decoded {} (+{} from cache), decode {:.1} ms, in-between {:.2} ms, upscale {:.1} ms per frame",
        summary,
        stats.frames_decoded,
        stats.frames_from_cache,
        stats.decode_ms,
        stats.inbetween_ms,
        stats.upscale_ms
    );
    Ok(())
}

fn progress_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {pos} frames {elapsed} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// `dreamwalk` with no subcommand: the desktop viewer.
pub fn run_viewer(model: &ModelArgs, viewer: &ViewerArgs) -> anyhow::Result<()> {
    if let Some(Size { width, height }) = viewer.source {
        if width == 0 || height == 0 || !width.is_multiple_of(8) || !height.is_multiple_of(8) {
            bail!("--source {width}x{height}: both sides must be non-zero multiples of 8");
        }
    }
    if !(0.0..=3600.0).contains(&viewer.screenshot_after) {
        bail!("--screenshot-after must be between 0 and 3600 seconds");
    }
    crate::app::run(crate::app::ViewerOptions {
        model: model.clone(),
        autoplay: viewer.play || viewer.screenshot.is_some(),
        screenshot: viewer.screenshot.clone().map(|path| {
            (
                path,
                std::time::Duration::from_secs_f64(viewer.screenshot_after),
            )
        }),
        gpu_decode: viewer.gpu_decode,
        gpu: None,
        source: viewer.source.map(|s| (s.width, s.height)),
    })
}
