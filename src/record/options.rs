//! What a recording is asked to be, and everything refused before it starts: the options
//! ([`RecordOptions`]), the format a path names ([`OutputFormat`]), the encoder that writes
//! it ([`Encoder`]), and the checks [`check_output`] runs before any work.

use std::fmt;
use std::path::{Path, PathBuf};

use super::{ffmpeg, png_seq, RecordError, MAX_GIF_FPS};
use crate::frame::MAX_IMAGE_SIDE;

/// The x264 presets `RecordOptions::preset` accepts, fastest first.
pub const X264_PRESETS: [&str; 10] = [
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
];

/// The metadata line a recording carries ([`RecordOptions::comment`]): the model by name
/// ("demo model (random weights)" for the built-in one) first, as short fields (Y4M's header)
/// keep only the start, then the keyframe prompts.
pub fn provenance(model_name: &str, prompts: &[String]) -> String {
    format!(
        "{model_name}; dreamwalk latent walk; prompts: {}",
        prompts.join(" | ")
    )
}

/// What [`Recorder::start`] writes, for messages: every extension it knows.
pub const SUPPORTED_OUTPUTS: &str = ".mp4, .webm, .gif, .y4m, .png or a folder";

/// How to record; [`RecordOptions::default`] suits a 30 fps walk.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordOptions {
    /// Frames per second of the output (the walk's display rate, so the video plays at the
    /// speed it was watched).
    pub fps: u32,
    /// Output size in pixels; `None` records at the first frame's own size. Frames of another
    /// size are resized (bicubic). An MP4 of odd width or height gets one more column or row,
    /// a copy of the last, because yuv420p needs even sizes.
    pub size: Option<(u32, u32)>,
    /// x264 constant rate factor, 0 (lossless) ..= 51; 18 is visually lossless. The built-in
    /// encoder uses it as its fixed quantizer, 16 at the least; WebM scales it to VP9's
    /// 0..=63 ([`Vp9::from_options`]). GIF has no quality setting.
    pub crf: u8,
    /// x264 preset, one of [`X264_PRESETS`]; slower ones give smaller files for the same
    /// quality but may throttle the walk. WebM maps it to libvpx's speed.
    pub preset: String,
    /// Frames that may wait for the encoder before [`Recorder::push`] blocks (at least 1).
    pub queue_capacity: usize,
    /// Use the built-in OpenH264 encoder for MP4 even when ffmpeg is available (it writes
    /// MP4 only: WebM and GIF are refused with it).
    pub force_builtin_encoder: bool,
    /// The ffmpeg program to run, before `DREAMWALK_FFMPEG` and `PATH` are looked at.
    pub ffmpeg: Option<PathBuf>,
    /// A line stored in the output's metadata: the MP4 and WebM `comment` tag, a GIF comment
    /// extension, a PNG `Comment` text chunk, a Y4M `XCOMMENT=` header field (spaces as `_`, cut to ffmpeg's 96-byte header
    /// limit). It says which model made the
    /// frames, so a demo-model video is labelled as such wherever it goes.
    pub comment: Option<String>,
    /// Replace an existing output (a file, or the numbered PNGs already in a folder). Without
    /// it, [`Recorder::start`] refuses an output that exists ([`RecordError::Exists`]). Either
    /// way the old output is replaced only when the new one is finished: until then the new
    /// one is written under a temporary name.
    pub overwrite: bool,
    /// A sound track to mux into the output, cut to the video's length: AAC in an MP4, Opus
    /// in a WebM, through ffmpeg, once the video is finished. A GIF, a Y4M file, a PNG
    /// sequence and the built-in MP4 encoder hold no sound: they are written without it, and
    /// [`audio_plan`](super::audio_plan) says so before any work.
    pub audio: Option<PathBuf>,
    /// The walk's frames this output holds when it is one segment of a walk rendered in
    /// parts (`render --frames`), numbered as in the whole walk: a PNG sequence names its
    /// files by these numbers and, without `overwrite`, refuses only to replace them (the
    /// segments of a walk may share a folder), deleting no other file; a sound track is
    /// read from the segment's first frame's time on. `None`: a whole walk.
    pub segment: Option<std::ops::RangeInclusive<u64>>,
}

impl Default for RecordOptions {
    fn default() -> Self {
        Self {
            fps: 30,
            size: None,
            crf: 18,
            // "faster" keeps up with 30 fps at 1024x1024 on two cores where "medium" does not,
            // at a slightly larger file for the same crf.
            preset: "faster".to_string(),
            queue_capacity: 8,
            force_builtin_encoder: false,
            ffmpeg: None,
            comment: None,
            overwrite: false,
            audio: None,
            segment: None,
        }
    }
}

/// The kind of output, from the path's extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// H.264 in MP4 (`.mp4`).
    Mp4,
    /// VP9 in WebM (`.webm`), through ffmpeg.
    Webm,
    /// An animated GIF with one palette (`.gif`), through ffmpeg.
    Gif,
    /// YUV4MPEG2, 4:4:4, full range (`.y4m`).
    Y4m,
    /// Numbered PNG files (a folder, or `name.png` for `name_000000.png`, ...).
    PngSequence,
    /// Whatever a caller's [`FrameSink`] writes.
    Custom,
}

impl OutputFormat {
    /// The format for `path`: `.mp4`, `.webm`, `.gif`, `.y4m`, `.png` (any case), or a folder
    /// (an existing directory, a path ending in a separator, or a name without extension).
    pub fn from_path(path: &Path) -> Result<Self, RecordError> {
        let ends_with_separator = path.as_os_str().to_string_lossy().ends_with('/');
        if path.is_dir() || ends_with_separator {
            return Ok(Self::PngSequence);
        }
        let Some(extension) = path.extension() else {
            return Ok(Self::PngSequence);
        };
        match extension.to_string_lossy().to_ascii_lowercase().as_str() {
            "mp4" => Ok(Self::Mp4),
            "webm" => Ok(Self::Webm),
            "gif" => Ok(Self::Gif),
            "y4m" => Ok(Self::Y4m),
            "png" => Ok(Self::PngSequence),
            other => Err(RecordError::UnknownFormat {
                path: path.to_path_buf(),
                extension: other.to_string(),
            }),
        }
    }
}

/// Which encoder wrote a recording.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Encoder {
    /// The system ffmpeg with libx264.
    Ffmpeg {
        /// The program that ran.
        program: PathBuf,
        /// x264 preset.
        preset: String,
        /// x264 constant rate factor.
        crf: u8,
    },
    /// The system ffmpeg with libvpx-vp9.
    Vp9 {
        /// The program that ran.
        program: PathBuf,
        /// libvpx constant quality, 0..=63.
        crf: u8,
        /// libvpx's deadline and cpu-used, in words.
        speed: String,
    },
    /// The system ffmpeg's GIF encoder, with a palette made for the recording.
    Gif {
        /// The program that ran.
        program: PathBuf,
    },
    /// The built-in OpenH264 encoder and MP4 muxer.
    OpenH264 {
        /// The fixed quantizer.
        qp: u8,
    },
    /// The built-in YUV4MPEG2 writer.
    Y4m,
    /// The built-in PNG writer.
    Png,
    /// A caller's [`FrameSink`], as it describes itself.
    Custom(String),
}

impl fmt::Display for Encoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ffmpeg {
                program,
                preset,
                crf,
            } => write!(
                f,
                "H.264 by ffmpeg/libx264 ({}, preset {preset}, crf {crf})",
                program.display()
            ),
            Self::Vp9 {
                program,
                crf,
                speed,
            } => write!(
                f,
                "VP9 by ffmpeg/libvpx-vp9 ({}, crf {crf}, {speed})",
                program.display()
            ),
            Self::Gif { program } => write!(
                f,
                "GIF by ffmpeg ({}, one palette for the recording)",
                program.display()
            ),
            Self::OpenH264 { qp } => write!(f, "H.264 by the built-in OpenH264 encoder (qp {qp})"),
            Self::Y4m => f.write_str("YUV4MPEG2 4:4:4 (built in)"),
            Self::Png => f.write_str("PNG RGB8 (built in)"),
            Self::Custom(name) => f.write_str(name),
        }
    }
}

/// Everything [`Recorder::start`] can refuse before it creates anything: the options, the
/// path's format, what that format needs (ffmpeg and its VP9 encoder for WebM, ffmpeg and at
/// most [`MAX_GIF_FPS`] for GIF), a sound track that cannot be read or encoded (see
/// [`audio_plan`](super::audio_plan)) and, without [`RecordOptions::overwrite`], an existing
/// output. Cheap (at most two `ffmpeg -encoders`), so a caller can check an output before it
/// starts work whose frames would go there (loading a model, sampling).
pub fn check_output(path: &Path, opts: &RecordOptions) -> Result<OutputFormat, RecordError> {
    validate(opts)?;
    let format = OutputFormat::from_path(path)?;
    let through_ffmpeg = match format {
        OutputFormat::Webm => Some(".webm"),
        OutputFormat::Gif => Some(".gif"),
        _ => None,
    };
    if let Some(name) = through_ffmpeg {
        if opts.force_builtin_encoder {
            return Err(RecordError::InvalidOption(format!(
                "the built-in encoder writes .mp4 only; {name} is written through ffmpeg"
            )));
        }
        if format == OutputFormat::Gif && opts.fps > MAX_GIF_FPS {
            return Err(RecordError::InvalidOption(format!(
                "fps {} for a GIF (at most {MAX_GIF_FPS}: GIF stores frame delays in \
                 hundredths of a second, and players show delays under 2/100 s at 1/10 s)",
                opts.fps
            )));
        }
        let Some(program) = ffmpeg::locate(opts)? else {
            return Err(RecordError::NeedsFfmpeg {
                path: path.to_path_buf(),
                format: name,
            });
        };
        if format == OutputFormat::Webm {
            ffmpeg::require_encoder(&program, "libvpx-vp9")?;
        }
    }
    if !opts.overwrite {
        match &opts.segment {
            Some(numbers) if format == OutputFormat::PngSequence => {
                if png_seq::holds_any_of(path, numbers) {
                    return Err(RecordError::Exists {
                        path: path.to_path_buf(),
                    });
                }
            }
            _ => refuse_existing(path, format)?,
        }
    }
    // A sound track that is no file, or an ffmpeg without its encoder.
    super::audio_plan(path, opts)?;
    Ok(format)
}

/// [`RecordError::Exists`] when writing `path` as `format` would replace something: an
/// existing file, or a PNG sequence's folder (or `name_*.png` files) already holding frames.
pub fn refuse_existing(path: &Path, format: OutputFormat) -> Result<(), RecordError> {
    let exists = || RecordError::Exists {
        path: path.to_path_buf(),
    };
    match format {
        OutputFormat::PngSequence => {
            if png_seq::holds_frames(path) {
                return Err(exists());
            }
        }
        _ => {
            if path.symlink_metadata().is_ok() {
                return Err(exists());
            }
        }
    }
    Ok(())
}

pub(super) fn validate(opts: &RecordOptions) -> Result<(), RecordError> {
    let invalid = |what: String| Err(RecordError::InvalidOption(what));
    if opts.fps == 0 || opts.fps > 1000 {
        return invalid(format!("fps {} (must be 1..=1000)", opts.fps));
    }
    if let Some((width, height)) = opts.size {
        if width == 0 || height == 0 || width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
            return invalid(format!(
                "size {width}x{height} (must be 1..={MAX_IMAGE_SIDE} each)"
            ));
        }
    }
    if opts.crf > 51 {
        return invalid(format!("crf {} (must be 0..=51)", opts.crf));
    }
    if !X264_PRESETS.contains(&opts.preset.as_str()) {
        return invalid(format!(
            "preset '{}' (one of {})",
            opts.preset,
            X264_PRESETS.join(", ")
        ));
    }
    if opts.queue_capacity == 0 {
        return invalid("queue_capacity 0 (must be at least 1)".to_string());
    }
    Ok(())
}
