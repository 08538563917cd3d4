//! Linear in-between frames at source resolution, before upscaling: how many to insert.
//! The pixel arithmetic is [`crate::frame::blend`]; on the GPU, in-betweens of frames that
//! stay there are drawn by the present shader ([`crate::frame::FrameImage::inbetween`]).

pub use crate::frame::blend::{blend, Divider, MAX_INBETWEENS};

/// How many in-betweens to insert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Inbetweens {
    Fixed(usize),
    /// Enough that the display never starves: see [`auto_inbetweens`].
    Auto,
}

impl Default for Inbetweens {
    fn default() -> Self {
        Inbetweens::Fixed(3)
    }
}

impl std::str::FromStr for Inbetweens {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(Inbetweens::Auto);
        }
        match s.parse::<usize>() {
            Ok(k) if k <= MAX_INBETWEENS => Ok(Inbetweens::Fixed(k)),
            _ => Err(format!(
                "expected a number of in-betweens from 0 to {MAX_INBETWEENS}, or `auto`"
            )),
        }
    }
}

/// The in-between count that makes `k+1` shown frames last as long as one decode:
/// `ceil(decode_time * fps) - 1`, clamped to `0..=15`.
pub fn auto_inbetweens(decode_ms: f64, target_fps: f64) -> usize {
    if !(decode_ms.is_finite() && decode_ms > 0.0 && target_fps > 0.0) {
        return 0;
    }
    let frames_per_decode = (decode_ms / 1000.0 * target_fps).ceil() as usize;
    frames_per_decode.saturating_sub(1).min(MAX_INBETWEENS)
}

impl Inbetweens {
    /// The count to use now, given the measured decode time.
    pub fn count(self, decode_ms: f64, target_fps: f64) -> usize {
        match self {
            Inbetweens::Fixed(k) => k.min(MAX_INBETWEENS),
            Inbetweens::Auto => auto_inbetweens(decode_ms, target_fps),
        }
    }
}
