//! The in-between stage: linear in-between frames at source resolution, before upscaling,
//! how many to insert, and the numbering of every frame of the stream (0, 1, 2, ...).
//! The pixel arithmetic is [`crate::frame::blend`]; on the GPU, in-betweens of frames that
//! stay there are drawn by the present shader ([`crate::frame::FrameImage::inbetween`]).

use std::time::Instant;

use crossbeam_channel::{select, Receiver, Sender};

use super::decode::Decoded;
use super::span::{FrameSpan, Place};
use super::upscale::Job;
use super::{FrameSource, Shared};
pub use crate::frame::blend::{blend, Divider, MAX_INBETWEENS};
use crate::frame::{FrameImage, RgbaImage};

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

/// Numbers the frames from 0, or with a `span` from where its first decoded frame is in the
/// whole stream, sending on only the span's frames and returning after its last.
pub(super) fn inbetween_thread(
    shared: &Shared,
    span: Option<FrameSpan>,
    decoded: Receiver<Decoded>,
    jobs: Sender<Job>,
    stop: Receiver<()>,
) {
    let mut previous: Option<FrameImage> = None;
    let mut next_index = span.map_or(0, |span| span.first_counted());
    let send = |job: Job| -> bool {
        select! {
            send(jobs, job) -> r => r.is_ok(),
            recv(stop) -> _ => false,
        }
    };
    loop {
        let message = select! {
            recv(decoded) -> m => match m { Ok(m) => m, Err(_) => return },
            recv(stop) -> _ => return,
        };
        let (image, source, closing) = match message {
            Decoded::Frame(image, source) => (image, source, false),
            Decoded::Closing(image, source) => (image, source, true),
            // Dropping `jobs` lets the workers finish and close the ring.
            Decoded::End => return,
        };
        let (count, upscale, output_size) = {
            let s = shared.settings.lock();
            let decode_ms = shared.stats.snapshot().decode_ms;
            (
                s.inbetweens.count(decode_ms, s.target_fps),
                s.upscale,
                s.output_size,
            )
        };
        shared.stats.update(|s| s.inbetweens = count);
        if let Some(prev) = previous.as_ref().filter(|p| p.size() == image.size()) {
            for j in 0..count {
                match FrameSpan::place(span.as_ref(), next_index) {
                    Place::Before => {
                        next_index += 1;
                        continue;
                    }
                    Place::After => return,
                    Place::Inside => {}
                }
                let started = Instant::now();
                // Frames on the GPU give an in-between the present shader blends (no work
                // here); the time recorded is then only the bookkeeping.
                let blended = FrameImage::inbetween(prev, &image, j, count).unwrap_or_else(|e| {
                    shared.stats.update(|s| {
                        s.last_error = Some(format!("in-between {j} of {count}: {e}"));
                    });
                    black_like(&image)
                });
                shared
                    .stats
                    .record_inbetween(started.elapsed().as_secs_f64() * 1e3);
                let job = Job {
                    index: next_index,
                    image: blended,
                    source: FrameSource {
                        inbetween: Some((j, count)),
                        starts_lap: false,
                        ..source
                    },
                    upscale,
                    output_size,
                };
                next_index += 1;
                if !send(job) {
                    return;
                }
            }
        }
        if closing {
            // Its in-betweens close the loop; the frame itself is the walk's first again.
            continue;
        }
        previous = Some(image.clone());
        match FrameSpan::place(span.as_ref(), next_index) {
            Place::Before => {
                next_index += 1;
                continue;
            }
            Place::After => return,
            Place::Inside => {}
        }
        let job = Job {
            index: next_index,
            image,
            source,
            upscale,
            output_size,
        };
        next_index += 1;
        if !send(job) {
            return;
        }
    }
}

/// A black frame of `image`'s size, standing in for one the GPU lost.
fn black_like(image: &FrameImage) -> FrameImage {
    let (w, h) = image.size();
    RgbaImage::new(w, h).into()
}
