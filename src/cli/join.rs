//! `dreamwalk join`: its arguments, and what they become in the library's [`JoinJob`].

use std::path::PathBuf;

use clap::Args;

use crate::usecase::JoinJob;

/// Make one video of a walk's segments (`render --frames`), without encoding again.
#[derive(Args, Debug, Clone)]
pub struct JoinArgs {
    /// The joined video (.mp4 or .webm).
    #[arg(long, value_name = "WHOLE.mp4")]
    pub out: PathBuf,
    /// The segments, in walk order: videos of one render's settings (same codec, size,
    /// frame rate, sound or none).
    #[arg(required = true, value_name = "SEGMENT")]
    pub segments: Vec<PathBuf>,
    /// Replace an existing --out (only once the joined file is whole).
    #[arg(long)]
    pub overwrite: bool,
}

impl JoinArgs {
    /// The join these arguments describe.
    pub fn job(&self) -> JoinJob {
        JoinJob {
            segments: self.segments.clone(),
            out: self.out.clone(),
            overwrite: self.overwrite,
            ffmpeg: None,
        }
    }
}
