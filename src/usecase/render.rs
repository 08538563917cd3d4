//! `render`, the headless use case: the whole walk, every frame in order, to a file or a
//! PNG folder. The caller (the command line, the bench) says how to show progress.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::audio::Soundtrack;
use crate::frame::FrameError;
use crate::model::Engine;
use crate::pipeline::{
    FrameSpan, Pipeline, PipelineOptions, Popped, RingPolicy, Settings, SettingsError,
    StatsSnapshot,
};
use crate::record::{RecordError, RecordOptions, RecordSummary, Recorder};
use crate::upscale::UpscaleMode;
use crate::walk::LoopMode;

/// One headless render.
#[derive(Clone, Debug)]
pub struct RenderJob {
    /// What to walk and how; checked with [`Settings::validate`] before anything starts.
    pub settings: Settings,
    /// Laps of a ping-pong or endless walk (a walk played once has one).
    pub laps: u64,
    /// A folder (PNG sequence) or a `.mp4` / `.y4m` file.
    pub out: PathBuf,
    /// Frame rate, quality and size of the output; its `comment` is filled in with the
    /// model and the prompts when `None`.
    pub record: RecordOptions,
    /// Where to save the keyframe latents the walk samples (`keyframe_0`, ...), if anywhere.
    pub save_latents: Option<PathBuf>,
    /// A sound track that times the walk ([`super::audio_timeline`]: its onsets set how far
    /// each frame goes, its length the walk's) and is muxed into the output where the format
    /// can hold it. Needs in-betweens 0 and one lap.
    pub audio: Option<Soundtrack>,
    /// Render only these frames of the walk ([`super::segment_span`]), byte-identical to the
    /// same frames of the whole render: one segment of a walk rendered on many machines.
    /// `None` renders it all.
    pub frames: Option<super::FrameRange>,
}

/// What a render is about to do, for its first line.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderHeader {
    /// The model's name ("demo model (random weights)" for the demo).
    pub model: String,
    /// Where keyframes are sampled ("sampling on the CPU").
    pub sampler: String,
    /// Which decoder runs and where ("TAESD on the CPU").
    pub decoder: String,
    pub keyframes: usize,
    /// Size of the frames written, before any `--record-size` resize.
    pub frame_size: (u32, u32),
    pub out: PathBuf,
    /// The frames a segment renders (`None`: the whole walk).
    pub span: Option<FrameSpan>,
    /// The keyframes a segment's frames are made from, 0-based: the only ones it samples.
    pub span_keyframes: Vec<usize>,
}

impl std::fmt::Display for RenderHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} | {} | {} | {} keyframes | {}x{} frames | {}",
            self.model,
            self.sampler,
            self.decoder,
            self.keyframes,
            self.frame_size.0,
            self.frame_size.1,
            self.out.display()
        )?;
        match &self.span {
            Some(span) => {
                let used: Vec<String> = self
                    .span_keyframes
                    .iter()
                    .map(|k| (k + 1).to_string())
                    .collect();
                write!(
                    f,
                    " | frames {}..{} (from keyframes {})",
                    span.first,
                    span.last,
                    used.join(", ")
                )
            }
            None => Ok(()),
        }
    }
}

/// How a render reports while it runs. Every method has a default that does nothing.
pub trait RenderProgress {
    /// Once the output is open, before the first keyframe is sampled.
    fn started(&mut self, _header: &RenderHeader) {}
    /// Now and then while no frame is ready (keyframes being sampled).
    fn waiting(&mut self, _stats: &StatsSnapshot) {}
    /// After each frame written; `written` counts them.
    fn frame_written(&mut self, _written: u64, _stats: &StatsSnapshot) {}
}

/// Reports nothing.
impl RenderProgress for () {}

/// What a finished render made.
#[derive(Clone, Debug)]
pub struct RenderSummary {
    pub frames_written: u64,
    /// The render was stopped early (its `stop` flag was set): the output holds the frames
    /// written until then, finalized.
    pub interrupted: bool,
    pub record: RecordSummary,
    /// The pipeline's figures at the end.
    pub stats: StatsSnapshot,
    /// The whole render's wall time, sampling included.
    pub elapsed: Duration,
    /// The process's peak resident memory (Linux's `VmHWM`), where it can be read.
    pub peak_rss_bytes: Option<u64>,
}

impl std::fmt::Display for RenderSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stats = &self.stats;
        if self.interrupted {
            f.write_str("interrupted: kept what was made; ")?;
        }
        write!(
            f,
            "wrote {} frames: {}\n  decoded {} (+{} from cache), decode {:.1} ms, in-between {:.2} ms, upscale {:.1} ms per frame",
            self.frames_written,
            self.record,
            stats.frames_decoded,
            stats.frames_from_cache,
            stats.decode_ms,
            stats.inbetween_ms,
            stats.upscale_ms
        )?;
        if let Some(seconds) = stats.keyframe_seconds {
            write!(f, "\n  keyframes sampled in {seconds:.1} s each")?;
        }
        if let Some(seconds) = stats.diffuse_seconds {
            let n = stats.positions_diffused;
            write!(
                f,
                "\n  diffused {n} in-between positions in {seconds:.1} s each"
            )?;
        }
        write!(f, "\n  {:.1} s in all", self.elapsed.as_secs_f64())?;
        if self.frames_written > 0 {
            let per_frame = self.elapsed.as_secs_f64() / self.frames_written as f64;
            write!(f, " ({per_frame:.2} s per frame)")?;
        }
        if let Some(bytes) = self.peak_rss_bytes {
            write!(
                f,
                ", peak memory {:.2} GiB",
                bytes as f64 / (1u64 << 30) as f64
            )?;
        }
        Ok(())
    }
}

/// Why a render stopped.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The output could not be opened (the error names it).
    #[error(transparent)]
    Open(RecordError),
    #[error("reading frame {index} back from the GPU")]
    Readback {
        index: u64,
        #[source]
        source: FrameError,
    },
    /// A frame could not be recorded (the error names the output and what was kept).
    #[error("frame {index}: {error}")]
    Write { index: u64, error: RecordError },
    /// `--save-latents` names a place the latents cannot go.
    #[error("{0}")]
    SaveLatents(String),
    /// The sound track cannot time this walk.
    #[error(transparent)]
    Audio(#[from] super::AudioWalkError),
    /// `frames` asks for a segment that cannot be rendered alone (the error names it).
    #[error(transparent)]
    Segment(#[from] super::SegmentError),
    /// The pipeline's own error (sampling or decoding failed).
    #[error("{0}")]
    Pipeline(String),
    /// The output could not be finished (the error names it and what was kept).
    #[error(transparent)]
    Finish(RecordError),
}

/// How often a render waiting for its first frames reports.
const WAITING_REPORT_INTERVAL: Duration = Duration::from_millis(250);

/// Renders the walk `job` describes on `engine`, every frame in order.
pub fn render(
    engine: Arc<dyn Engine>,
    job: &RenderJob,
    progress: &mut dyn RenderProgress,
) -> Result<RenderSummary, RenderError> {
    render_until(engine, job, progress, &AtomicBool::new(false))
}

/// [`render`], stopping early once `stop` is set (a Ctrl-C, say): no frame is taken from the
/// pipeline after that (it is checked at least every 250 ms), the pipeline is shut down, the
/// frames already handed to the recorder are written and the output is finalized, whole,
/// under its name. The summary then says `interrupted`.
pub fn render_until(
    engine: Arc<dyn Engine>,
    job: &RenderJob,
    progress: &mut dyn RenderProgress,
    stop: &AtomicBool,
) -> Result<RenderSummary, RenderError> {
    let started = Instant::now();
    let settings = &job.settings;
    settings.validate(&*engine)?;
    crate::pipeline::check_laps(job.laps)?;
    if let Some(path) = &job.save_latents {
        super::save_latents::check_destination(path, job.record.overwrite)
            .map_err(RenderError::SaveLatents)?;
    }
    let frame_size = match settings.upscale {
        UpscaleMode::Cpu => settings.output_size,
        _ => engine.decoded_size(settings.endpoints.image_size, settings.decoder),
    };
    let timeline = match &job.audio {
        Some(soundtrack) => Some(super::audio_timeline(
            soundtrack,
            settings,
            job.laps,
            job.record.fps,
        )?),
        None => None,
    };
    let span = match job.frames {
        Some(range) => Some(super::segment_span(
            range,
            settings,
            job.laps,
            timeline.as_ref(),
        )?),
        None => None,
    };
    let mut record = job.record.clone();
    if let Some(span) = &span {
        record.segment = Some(span.first..=span.last);
    }
    if let Some(soundtrack) = &job.audio {
        record.audio = Some(soundtrack.path().to_path_buf());
    }
    if record.comment.is_none() {
        record.comment = Some(crate::record::provenance(
            &engine.name(),
            &keyframe_labels(&settings.endpoints.keyframes),
        ));
    }
    // Open the output first: a bad path should fail before minutes of sampling.
    let recorder = Recorder::start(&job.out, record).map_err(RenderError::Open)?;
    progress.started(&RenderHeader {
        model: engine.name(),
        sampler: engine.sampler_description(),
        decoder: engine.decoder_description(settings.decoder),
        keyframes: settings.endpoints.keyframes.len(),
        frame_size,
        out: job.out.clone(),
        span,
        span_keyframes: span.map_or_else(Vec::new, |span| {
            let needs = span.needs(
                settings.endpoints.keyframes.len(),
                settings.walk,
                timeline.as_ref(),
            );
            needs.keyframes.into_iter().collect()
        }),
    });
    let options = PipelineOptions {
        policy: RingPolicy::Record,
        stop_at_end: true,
        laps: job.laps,
        // A walk played once (or timed: every frame its own place) never comes back to a
        // decoded frame: caching them would only make memory grow with the walk's length.
        cache_budget_bytes: match settings.walk.loop_mode {
            _ if timeline.is_some() => 0,
            LoopMode::Once => 0,
            _ => PipelineOptions::default().cache_budget_bytes,
        },
        timeline,
        span,
        ..Default::default()
    };
    let engine: Arc<dyn Engine> = match &job.save_latents {
        Some(path) => Arc::new(super::save_latents::SavingLatents::new(
            engine,
            path.clone(),
        )),
        None => engine,
    };
    let pipeline = Pipeline::start(engine, settings.clone(), options);
    let mut written = 0u64;
    let mut interrupted = false;
    loop {
        if stop.load(Ordering::Relaxed) {
            interrupted = true;
            break;
        }
        let deadline = Instant::now() + WAITING_REPORT_INTERVAL;
        let frame = match pipeline.ring().pop_by(deadline) {
            Popped::Frame(frame) => frame,
            Popped::Late => {
                progress.waiting(&pipeline.stats_snapshot());
                continue;
            }
            Popped::Closed => break,
        };
        let image = frame
            .image
            .to_cpu()
            .map_err(|source| RenderError::Readback {
                index: frame.index,
                source,
            })?;
        recorder
            .push(frame.index, image)
            .map_err(|error| RenderError::Write {
                index: frame.index,
                error,
            })?;
        written += 1;
        progress.frame_written(written, &pipeline.stats_snapshot());
    }
    let stats = pipeline.stats_snapshot();
    pipeline.shutdown();
    if let Some(error) = stats.last_error.clone() {
        return Err(RenderError::Pipeline(error));
    }
    let record = recorder.finish().map_err(RenderError::Finish)?;
    Ok(RenderSummary {
        frames_written: written,
        interrupted,
        record,
        stats,
        elapsed: started.elapsed(),
        peak_rss_bytes: peak_rss_bytes(),
    })
}

/// This process's peak resident memory so far (`VmHWM` in `/proc/self/status`); `None`
/// where there is no such file.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// How a file's comment names the keyframes: each prompt, or "image photo.png".
pub fn keyframe_labels(keyframes: &[crate::model::Keyframe]) -> Vec<String> {
    keyframes
        .iter()
        .map(crate::model::Keyframe::label)
        .collect()
}
