//! The `record` stage: writes the walk's frames to a video or to image files, every frame
//! that was displayed and none other, in order.
//!
//! [`Recorder`] is a consumer with back-pressure: [`Recorder::push`] hands a frame to an
//! encoder thread through a bounded queue and blocks while that queue is full, so a slow
//! encoder slows the walk down instead of losing frames.
//!
//! The format follows the output path:
//!
//! | path | format | encoder |
//! | --- | --- | --- |
//! | `*.mp4` | H.264 (yuv420p, BT.709 limited range, tagged), `+faststart` | the system `ffmpeg` with libx264; without one, the built-in OpenH264 encoder |
//! | `*.webm` | VP9 (yuv420p, BT.709 limited range, tagged) | the system `ffmpeg` with libvpx-vp9 ([`webm`](self::webm)); refused without one |
//! | `*.gif` | GIF, one 256-colour palette for the whole recording, looping | the system `ffmpeg`, in two passes ([`gif`](self::gif)); refused without one, and above [`MAX_GIF_FPS`] |
//! | `*.y4m` | YUV4MPEG2, `C444`, 8-bit, full range (see [`y4m`](self#y4m)) | built in, lossless but for the colour conversion |
//! | a folder, or `*.png` | numbered RGB8 PNGs | built in, lossless |
//!
//! A sound track ([`RecordOptions::audio`]) is muxed into MP4 (AAC) and WebM (Opus) through
//! ffmpeg when the video is finished, cut to its length; the other outputs, and the built-in
//! MP4 encoder, hold no sound and are written without it ([`audio_plan`] says so up front).
//!
//! # Guarantees
//!
//! * Every frame pushed is written, in push order, or the recording fails with an error that
//!   [`Recorder::push`] (from then on, every time) and [`Recorder::finish`] return. Frame
//!   indices must be consecutive: a gap is refused with [`RecordError::FrameGap`].
//! * Problems known up front (an unwritable path, an unknown extension, a bad option, an
//!   `ffmpeg` named by `DREAMWALK_FFMPEG` that does not exist) fail [`Recorder::start`].
//! * When writing fails mid-way (disk full, the `ffmpeg` process dying), the error says what
//!   failed (with the tail of ffmpeg's stderr) and what was kept, and what was kept is a
//!   complete file, never a silent truncation:
//!   * MP4 via ffmpeg: ffmpeg writes a fragmented MP4 (a fragment about every second, no
//!     B-frames so that what a cut keeps is always the first frames, in order) to
//!     [`partial_path`] beside the output; it stays playable up to its last complete fragment
//!     even when ffmpeg is killed. [`Recorder::finish`], or the recovery after a failure, cuts
//!     off an incomplete last fragment and remuxes the file (stream copy, fast) into the
//!     output with `+faststart`. If that remux fails too (disk full), the fragmented file is
//!     kept under the output name, and the error says so.
//!   * WebM: ffmpeg writes clusters as it goes; finishing, or the recovery after a failure,
//!     remuxes the partial file (stream copy) into the output, up to its last whole frame.
//!   * GIF: the frames are kept losslessly (FFV1) in the partial file while recording; the
//!     GIF is made from what it holds when the recording finishes or fails. If that fails,
//!     the partial file stays, and the error says where.
//!   * MP4 via the built-in encoder: samples are appended to [`partial_path`]; finishing writes
//!     the output with its index first (`+faststart`); if there is no room for that copy, the
//!     index is appended to the partial file, which becomes the output (a valid MP4 with the
//!     index last). If even the index does not fit, the last frames are dropped until it does.
//!   * Y4M: the file is cut back to its last complete frame.
//!   * PNG: a PNG that could not be written whole is removed; all others are complete.
//! * Nothing is destroyed: an output that exists (a file, or a folder or `name_*.png` files
//!   already holding a sequence) is refused by [`Recorder::start`] with
//!   [`RecordError::Exists`] unless [`RecordOptions::overwrite`] is set. Every file is written
//!   under a temporary name beside it ([`partial_path`]) and renamed when whole, so an
//!   existing output is replaced only by a finished one, and a recording that wrote no frame
//!   leaves it as it was. With `overwrite`, a PNG sequence's older frames numbered past the
//!   new last one are deleted when it finishes.
//! * Dropping a [`Recorder`] without calling [`Recorder::finish`] finishes it all the same
//!   (the queued frames are written, the file finalized, the thread joined); only the outcome
//!   is lost.
//!
//! A process killed outright (SIGKILL, power loss) leaves the MP4 as the fragmented partial
//! file, playable up to its last fragment with ffmpeg, and a raw sample file with the
//! built-in encoder.
//!
//! # Y4M
//!
//! Frames are converted from RGB to full-range BT.601 YCbCr (the JFIF equations, which is
//! what ffmpeg assumes for an untagged 8-bit YCbCr input with `XCOLORRANGE=FULL`), exactly in
//! this integer arithmetic, for `R, G, B` in `0..=255`:
//!
//! ```text
//! Y  = (19595 R + 38470 G +  7471 B           + 32768) >> 16
//! Cb = (-11059 R - 21709 G + 32768 B + (128 << 16) + 32767) >> 16
//! Cr = (32768 R - 27439 G -  5329 B + (128 << 16) + 32767) >> 16
//! ```
//!
//! (The Cb/Cr rounding term is one less than a half so pure blue and red give 255, not 256.)
//! The header is `YUV4MPEG2 W<w> H<h> F<fps>:1 Ip A1:1 C444 XCOLORRANGE=FULL`.

mod audio;
mod builtin;
mod error;
mod ffmpeg;
mod fragments;
mod gif;
mod mp4;
mod options;
mod png_seq;
mod webm;
mod y4m;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::upscale::BicubicResizer;
use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

use crate::frame::RgbaImage;

pub use audio::{audio_plan, mux_args as sound_mux_args, AudioPlan};
pub use ffmpeg::{locate as locate_ffmpeg, partial_path};
pub use gif::MAX_GIF_FPS;
pub use png_seq::{write_png, PngError};
pub use webm::Vp9;

use error::inner_reason;
pub use error::RecordError;
use options::validate;
pub use options::{
    check_output, provenance, refuse_existing, Encoder, OutputFormat, RecordOptions,
    SUPPORTED_OUTPUTS, X264_PRESETS,
};

/// Where frames end up: one per format, or a caller's own (see [`Recorder::with_sink`]).
///
/// The recorder calls it from its encoder thread only, in frame order.
pub trait FrameSink: Send {
    /// Which encoder this is, for the summary.
    fn encoder(&self) -> Encoder;

    /// The size frames must have, given the size asked for: the same, or larger (for instance
    /// rounded up to even sizes for yuv420p), as the recorder pads frames to it.
    fn frame_size(&self, wanted: (u32, u32)) -> (u32, u32) {
        wanted
    }

    /// Writes one frame of [`FrameSink::frame_size`]. After an error no more frames come;
    /// [`FrameSink::finish`] is called next.
    fn write_frame(&mut self, frame: &RgbaImage) -> Result<(), RecordError>;

    /// Finalizes the output with every frame written so far (also after a failed
    /// `write_frame`, to keep what can be kept). Called exactly once. Returns what the output
    /// now holds, in a few words ("63 frames, finalized MP4"); its error says what failed and
    /// what was kept.
    fn finish(&mut self) -> Result<String, RecordError>;
}

/// What a finished recording holds.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordSummary {
    /// The output file or folder.
    pub path: PathBuf,
    /// Its format.
    pub format: OutputFormat,
    /// Which encoder wrote it.
    pub encoder: Encoder,
    /// Frames written.
    pub frames: u64,
    /// Frame size in the output, pixels.
    pub width: u32,
    /// Frame size in the output, pixels.
    pub height: u32,
    /// Frames per second.
    pub fps: u32,
    /// From [`Recorder::start`] to the finished file.
    pub elapsed: Duration,
    /// What became of the sound track asked for ([`RecordOptions::audio`]).
    pub audio: AudioPlan,
}

impl fmt::Display for RecordSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} frames, {}x{} at {} fps, {} ({:.1} s)",
            self.path.display(),
            self.frames,
            self.width,
            self.height,
            self.fps,
            self.encoder,
            self.elapsed.as_secs_f64()
        )?;
        match &self.audio {
            AudioPlan::None => Ok(()),
            plan => write!(f, "; {plan}"),
        }
    }
}

/// A snapshot of a recording in progress, for the UI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordStats {
    /// Frames accepted by [`Recorder::push`].
    pub frames_pushed: u64,
    /// Frames handed to the encoder (an encoder may still buffer some).
    pub frames_written: u64,
    /// Frames waiting in the queue.
    pub queue_len: usize,
    /// The queue's capacity.
    pub queue_capacity: usize,
    /// Since [`Recorder::start`].
    pub elapsed: Duration,
    /// The recording has failed; [`Recorder::push`] returns why.
    pub failed: bool,
}

/// State shared between the recorder and its encoder thread.
struct Shared {
    frames_written: AtomicU64,
    /// The failure's reason once writing has failed (the error itself is returned by the
    /// thread; pushes rebuild it from this).
    failure: Mutex<Option<String>>,
}

/// Records frames to a file on an encoder thread; see the [module docs](self) for formats and
/// guarantees.
pub struct Recorder {
    path: PathBuf,
    sender: Option<Sender<Arc<RgbaImage>>>,
    thread: Option<JoinHandle<Result<RecordSummary, RecordError>>>,
    shared: Arc<Shared>,
    /// The index the next push must have (`None` before the first); the lock also keeps
    /// concurrent pushes in index order.
    next_index: Mutex<Option<u64>>,
    frames_pushed: AtomicU64,
    queue_capacity: usize,
    started: Instant,
}

impl Recorder {
    /// Starts recording to `path`, in the format its extension names.
    ///
    /// Fails here, naming the path, when the output cannot be created or an option is invalid.
    pub fn start(path: &Path, opts: RecordOptions) -> Result<Recorder, RecordError> {
        let format = check_output(path, &opts)?;
        let audio = audio_plan(path, &opts)?;
        let sink: Box<dyn FrameSink> = match format {
            OutputFormat::Mp4 if opts.force_builtin_encoder => {
                Box::new(builtin::OpenH264Sink::create(path, &opts)?)
            }
            OutputFormat::Mp4 | OutputFormat::Webm | OutputFormat::Gif => {
                let target = ffmpeg::Target::for_format(format, &opts);
                match (ffmpeg::locate(&opts)?, target) {
                    (Some(program), Some(target)) => Box::new(ffmpeg::FfmpegSink::create(
                        path, program, target, &opts, &audio,
                    )?),
                    // check_output refused WebM and GIF without ffmpeg.
                    _ => Box::new(builtin::OpenH264Sink::create(path, &opts)?),
                }
            }
            OutputFormat::Y4m => Box::new(y4m::Y4mSink::create(path, &opts)?),
            OutputFormat::PngSequence => Box::new(png_seq::PngSequenceSink::create(path, &opts)?),
            OutputFormat::Custom => {
                return Err(RecordError::InvalidOption(
                    "a custom format is recorded with Recorder::with_sink".to_string(),
                ))
            }
        };
        Self::spawn(path, format, sink, opts, audio)
    }

    /// Starts recording into a caller's sink (a stream, a test's slow sink); `path` only
    /// names the recording in errors and the summary.
    pub fn with_sink(
        path: &Path,
        sink: Box<dyn FrameSink>,
        opts: RecordOptions,
    ) -> Result<Recorder, RecordError> {
        validate(&opts)?;
        let audio = match &opts.audio {
            Some(audio) => AudioPlan::Left(format!(
                "a caller's sink is given frames only, so {} is not in {}",
                audio.display(),
                path.display()
            )),
            None => AudioPlan::None,
        };
        Self::spawn(path, OutputFormat::Custom, sink, opts, audio)
    }

    fn spawn(
        path: &Path,
        format: OutputFormat,
        sink: Box<dyn FrameSink>,
        opts: RecordOptions,
        audio: AudioPlan,
    ) -> Result<Recorder, RecordError> {
        let (sender, receiver) = crossbeam_channel::bounded(opts.queue_capacity);
        let shared = Arc::new(Shared {
            frames_written: AtomicU64::new(0),
            failure: Mutex::new(None),
        });
        let started = Instant::now();
        let worker = EncoderThread {
            path: path.to_path_buf(),
            format,
            sink,
            opts: opts.clone(),
            shared: Arc::clone(&shared),
            started,
            audio,
        };
        let thread = std::thread::Builder::new()
            .name("record".to_string())
            .spawn(move || worker.run(receiver))
            .map_err(|e| {
                RecordError::failed(path, format!("cannot start the encoder thread: {e}"))
            })?;
        tracing::debug!(path = %path.display(), ?format, "recording started");
        Ok(Recorder {
            path: path.to_path_buf(),
            sender: Some(sender),
            thread: Some(thread),
            shared,
            next_index: Mutex::new(None),
            frames_pushed: AtomicU64::new(0),
            queue_capacity: opts.queue_capacity,
            started,
        })
    }

    /// Queues frame `index` for writing, blocking while the queue is full (this is what
    /// throttles the walk to the encoder's speed; frames are never dropped).
    ///
    /// `index` must follow the previous frame's (any index may come first). Once writing has
    /// failed, returns that failure, every time; the caller may carry on without recording.
    pub fn push(&self, index: u64, frame: Arc<RgbaImage>) -> Result<(), RecordError> {
        let mut next_index = self.next_index.lock();
        if let Some(failure) = self.failure() {
            return Err(failure);
        }
        if let Some(expected) = *next_index {
            if index != expected {
                return Err(RecordError::FrameGap {
                    expected,
                    got: index,
                });
            }
        }
        check_frame(index, &frame)?;
        let Some(sender) = &self.sender else {
            return Err(RecordError::failed(&self.path, "the recorder is finished"));
        };
        if sender.send(frame).is_err() {
            // The thread only drops its receiver when it has failed (or panicked).
            return Err(self.failure().unwrap_or_else(|| {
                RecordError::failed(&self.path, "the encoder thread stopped unexpectedly")
            }));
        }
        *next_index = index.checked_add(1);
        self.frames_pushed.fetch_add(1, Ordering::Relaxed);
        tracing::trace!(index, "frame queued for recording");
        Ok(())
    }

    /// Progress so far.
    pub fn stats(&self) -> RecordStats {
        RecordStats {
            frames_pushed: self.frames_pushed.load(Ordering::Relaxed),
            frames_written: self.shared.frames_written.load(Ordering::Relaxed),
            queue_len: self.sender.as_ref().map_or(0, Sender::len),
            queue_capacity: self.queue_capacity,
            elapsed: self.started.elapsed(),
            failed: self.shared.failure.lock().is_some(),
        }
    }

    /// The output path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the queued frames, finalizes the file and joins the encoder thread.
    pub fn finish(mut self) -> Result<RecordSummary, RecordError> {
        self.close()
    }

    fn close(&mut self) -> Result<RecordSummary, RecordError> {
        // Dropping the sender lets the thread drain the queue and finish.
        self.sender = None;
        let Some(thread) = self.thread.take() else {
            return Err(RecordError::failed(&self.path, "the recorder is finished"));
        };
        thread.join().unwrap_or_else(|_| {
            Err(RecordError::failed(
                &self.path,
                "the encoder thread panicked; the output may be incomplete",
            ))
        })
    }

    fn failure(&self) -> Option<RecordError> {
        self.shared
            .failure
            .lock()
            .as_ref()
            .map(|reason| RecordError::failed(&self.path, reason.clone()))
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if self.thread.is_some() {
            // The outcome has nowhere to go but the log.
            if let Err(e) = self.close() {
                tracing::warn!("{e}");
            }
        }
    }
}

fn check_frame(index: u64, frame: &RgbaImage) -> Result<(), RecordError> {
    let expected_len = frame.width as usize * frame.height as usize * 4;
    if frame.width == 0 || frame.height == 0 || frame.pixels.len() != expected_len {
        return Err(RecordError::BadFrame {
            index,
            reason: format!(
                "{}x{} with {} bytes of pixels (expected {expected_len}, and no empty frames)",
                frame.width,
                frame.height,
                frame.pixels.len()
            ),
        });
    }
    Ok(())
}

/// The encoder thread's state.
struct EncoderThread {
    path: PathBuf,
    format: OutputFormat,
    sink: Box<dyn FrameSink>,
    opts: RecordOptions,
    shared: Arc<Shared>,
    started: Instant,
    audio: AudioPlan,
}

impl EncoderThread {
    fn run(mut self, receiver: Receiver<Arc<RgbaImage>>) -> Result<RecordSummary, RecordError> {
        let mut resizer = BicubicResizer::new();
        let mut sizes = None;
        let mut frames = 0u64;
        for frame in receiver.iter() {
            let (wanted, fitted) = *sizes.get_or_insert_with(|| {
                let wanted = self.opts.size.unwrap_or((frame.width, frame.height));
                (wanted, self.sink.frame_size(wanted))
            });
            let fitted = fit_frame(&mut resizer, &frame, wanted, fitted);
            let written = self.sink.write_frame(fitted.as_ref().unwrap_or(&frame));
            if let Err(write_error) = written {
                // Keep what has been written. A push blocked meanwhile stays blocked until the
                // failure is recorded and the receiver dropped (on return), so it reports the
                // whole story.
                let kept = match self.sink.finish() {
                    Ok(held) => format!("kept in {}: {held}", self.path.display()),
                    Err(finish_error) => inner_reason(&finish_error),
                };
                let reason = format!("{}; {kept}", inner_reason(&write_error));
                *self.shared.failure.lock() = Some(reason.clone());
                return Err(RecordError::failed(&self.path, reason));
            }
            frames += 1;
            self.shared.frames_written.store(frames, Ordering::Relaxed);
        }
        match self.sink.finish() {
            Ok(held) => tracing::debug!(path = %self.path.display(), "recording holds {held}"),
            Err(e) => {
                *self.shared.failure.lock() = Some(inner_reason(&e));
                return Err(e);
            }
        }
        let (width, height) = sizes.map_or((0, 0), |(_, fitted)| fitted);
        let summary = RecordSummary {
            path: self.path.clone(),
            format: self.format,
            encoder: self.sink.encoder(),
            frames,
            width,
            height,
            fps: self.opts.fps,
            elapsed: self.started.elapsed(),
            audio: self.audio.clone(),
        };
        if frames == 0 {
            tracing::debug!(path = %self.path.display(), "nothing was recorded");
        } else {
            tracing::info!("recorded {summary}");
        }
        Ok(summary)
    }
}

/// `frame` at the sink's size `fitted`: resized (bicubic) to the size asked for, `wanted`,
/// when it differs, then padded with copies of its last column and row up to `fitted`;
/// `None` when the frame already fits.
fn fit_frame(
    resizer: &mut BicubicResizer,
    frame: &RgbaImage,
    wanted: (u32, u32),
    fitted: (u32, u32),
) -> Option<RgbaImage> {
    // Padding keeps the picture's geometry; a sink asking for less than was wanted gets a
    // resize to its size instead.
    let base = if fitted.0 >= wanted.0 && fitted.1 >= wanted.1 {
        wanted
    } else {
        fitted
    };
    let mut fitted_frame = None;
    if (frame.width, frame.height) != base {
        // The pipeline's own bicubic, so recorded frames match displayed ones.
        fitted_frame = Some(resizer.resize(frame, base.0, base.1));
    }
    if base != fitted {
        let padded = pad_edges(fitted_frame.as_ref().unwrap_or(frame), fitted.0, fitted.1);
        fitted_frame = Some(padded);
    }
    fitted_frame
}

/// `frame` grown to `width` x `height` (not smaller) by repeating its last column and row.
fn pad_edges(frame: &RgbaImage, width: u32, height: u32) -> RgbaImage {
    let (src_w, src_h) = (frame.width as usize, frame.height as usize);
    let (dst_w, dst_h) = (width as usize, height as usize);
    let mut pixels = Vec::with_capacity(dst_w * dst_h * 4);
    for y in 0..dst_h {
        let row = &frame.pixels[y.min(src_h - 1) * src_w * 4..][..src_w * 4];
        pixels.extend_from_slice(row);
        let last = &row[(src_w - 1) * 4..];
        for _ in src_w..dst_w {
            pixels.extend_from_slice(last);
        }
    }
    RgbaImage {
        width,
        height,
        pixels,
    }
}
