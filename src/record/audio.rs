//! A sound track in a recording ([`RecordOptions::audio`]): which outputs can hold one, and
//! the ffmpeg arguments that mux it in when the video is finished (the partial file's video
//! copied as it is, the sound encoded and cut to the video's length).
//!
//! | output | sound |
//! | --- | --- |
//! | `.mp4` through ffmpeg | AAC (ffmpeg's own encoder), 192 kb/s |
//! | `.webm` | Opus (libopus), 128 kb/s |
//! | `.mp4` by the built-in encoder (no ffmpeg) | none: its muxer writes video only, and says so |
//! | `.gif`, `.y4m`, PNG | none: the formats hold no sound, and the recorder says so |

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::options::OutputFormat;
use super::{ffmpeg, RecordError, RecordOptions};

/// What becomes of [`RecordOptions::audio`] in an output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AudioPlan {
    /// No sound track was asked for.
    None,
    /// Muxed into the output as `codec`.
    Muxed {
        /// The sound track's file.
        path: PathBuf,
        /// "AAC" or "Opus".
        codec: &'static str,
    },
    /// The output is written without it: why, in a sentence that names the file.
    Left(String),
}

impl std::fmt::Display for AudioPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AudioPlan::None => f.write_str("no sound"),
            AudioPlan::Muxed { path, codec } => {
                write!(f, "sound: {codec} from {}", path.display())
            }
            AudioPlan::Left(reason) => write!(f, "no sound: {reason}"),
        }
    }
}

/// What [`Recorder::start`](super::Recorder::start) does with `opts.audio` for `path`: mux it
/// (MP4 and WebM through ffmpeg), or leave it out, saying why (GIF, Y4M, PNG and the built-in
/// MP4 encoder hold no sound). Refuses a sound track that is not a readable file, and an
/// ffmpeg without the encoder it needs (`aac`, `libopus`). Cheap: at most one
/// `ffmpeg -encoders`.
pub fn audio_plan(path: &Path, opts: &RecordOptions) -> Result<AudioPlan, RecordError> {
    let Some(audio) = &opts.audio else {
        return Ok(AudioPlan::None);
    };
    if let Err(e) = std::fs::File::open(audio) {
        return Err(RecordError::InvalidOption(format!(
            "sound track {}: cannot read it: {e}",
            audio.display()
        )));
    }
    let left = |holder: &str| {
        Ok(AudioPlan::Left(format!(
            "{holder} holds no sound, so {} is not in {} (the walk still follows it; write \
             .mp4 or .webm to have it)",
            audio.display(),
            path.display()
        )))
    };
    let format = OutputFormat::from_path(path)?;
    let (encoder, codec) = match format {
        OutputFormat::Mp4 => ("aac", "AAC"),
        OutputFormat::Webm => ("libopus", "Opus"),
        OutputFormat::Gif => return left("a GIF"),
        OutputFormat::Y4m => return left("a Y4M file"),
        OutputFormat::PngSequence => return left("a PNG sequence"),
        OutputFormat::Custom => return left("this output"),
    };
    let program = match ffmpeg::locate(opts)? {
        Some(program) if !opts.force_builtin_encoder => program,
        // WebM without ffmpeg is refused by check_output; an MP4 falls back to the built-in
        // encoder.
        _ => {
            return Ok(AudioPlan::Left(format!(
                "the built-in MP4 encoder (used when ffmpeg is missing) writes video only, so \
                 {} is not in {} (the walk still follows it; install ffmpeg to have it)",
                audio.display(),
                path.display()
            )))
        }
    };
    ffmpeg::require_encoder(&program, encoder)?;
    Ok(AudioPlan::Muxed {
        path: audio.clone(),
        codec,
    })
}

/// ffmpeg's arguments for the sound track as a second input, read from `start_seconds` (a
/// segment's start; 0 for a whole walk) for `seconds` at most (the video's length, so a
/// recording cut short has as much sound as pictures).
pub(super) fn input_args(audio: &Path, start_seconds: f64, seconds: f64) -> Vec<OsString> {
    vec![
        "-ss".into(),
        format!("{start_seconds:.6}").into(),
        "-t".into(),
        format!("{seconds:.6}").into(),
        "-i".into(),
        audio.as_os_str().to_os_string(),
    ]
}

/// ffmpeg's arguments mapping the first input's video (copied) and the second's first audio
/// stream, encoded as `codec` says ("AAC" or "Opus").
pub fn mux_args(codec: &str) -> Vec<OsString> {
    let encoder: &[&str] = match codec {
        "Opus" => &["-c:a", "libopus", "-b:a", "128k"],
        _ => &["-c:a", "aac", "-b:a", "192k"],
    };
    ["-map", "0:v", "-map", "1:a:0", "-c:v", "copy"]
        .iter()
        .chain(encoder)
        .map(OsString::from)
        .collect()
}
