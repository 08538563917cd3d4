//! Why a recording could not start, or what failed and what was kept when it stopped.

use std::path::{Path, PathBuf};

use super::SUPPORTED_OUTPUTS;

/// Errors of the record stage.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The output path's extension names no format this stage writes.
    #[error(
        "{}: unknown recording format '.{extension}' (use {supported})",
        path.display(),
        supported = SUPPORTED_OUTPUTS
    )]
    UnknownFormat {
        /// The output path.
        path: PathBuf,
        /// Its extension, lower case.
        extension: String,
    },
    /// The output exists and [`RecordOptions::overwrite`] was not given: nothing was touched.
    #[error(
        "{} already exists and was left as it is: choose another name (or, with `render`, \
         replace it: --overwrite)",
        path.display()
    )]
    Exists {
        /// The existing file or folder.
        path: PathBuf,
    },
    /// The format is written through ffmpeg, and there is none (the built-in encoder writes
    /// MP4 only).
    #[error(
        "{}: {format} is written through ffmpeg, which was not found on PATH (install ffmpeg, \
         or name it with DREAMWALK_FFMPEG); without it dreamwalk writes .mp4, .y4m and PNG",
        path.display()
    )]
    NeedsFfmpeg {
        /// The output path.
        path: PathBuf,
        /// The format, in words (".gif", ".webm").
        format: &'static str,
    },
    /// A [`RecordOptions`] field is out of range.
    #[error("invalid recording option: {0}")]
    InvalidOption(String),
    /// The output cannot be created.
    #[error("cannot write {}: {error}", path.display())]
    Unwritable {
        /// The output path.
        path: PathBuf,
        /// Why (in the message, not a `source()`, so that it is printed once).
        error: std::io::Error,
    },
    /// The named ffmpeg program cannot be used.
    #[error("ffmpeg {program} ({origin}): {reason}")]
    Ffmpeg {
        /// The program.
        program: PathBuf,
        /// Where its name came from (option, `DREAMWALK_FFMPEG`).
        origin: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A frame index is not the one after the previous frame's: a frame would be lost.
    #[error(
        "frame {got} pushed where frame {expected} was due: recorded frames must be consecutive"
    )]
    FrameGap {
        /// The index due.
        expected: u64,
        /// The index pushed.
        got: u64,
    },
    /// A frame whose pixel buffer does not match its size.
    #[error("frame {index}: {reason}")]
    BadFrame {
        /// The frame's index.
        index: u64,
        /// What is wrong.
        reason: String,
    },
    /// Writing failed mid-way; `reason` says why and what was kept.
    #[error("recording {path} failed: {reason}")]
    Failed {
        /// The output path.
        path: PathBuf,
        /// What failed and what was kept.
        reason: String,
    },
}

impl RecordError {
    pub(super) fn failed(path: &Path, reason: impl Into<String>) -> Self {
        Self::Failed {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// The reason of a sink's error without the "recording PATH failed" prefix (which the
/// recorder adds once).
pub(super) fn inner_reason(error: &RecordError) -> String {
    match error {
        RecordError::Failed { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}
