//! The upscale workers: bring each frame to the output size (CPU bicubic) or pass it on as
//! it is (no upscale, or the GPU present does it), then insert it into the ring by index.

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Receiver;
use parking_lot::Mutex;

use super::{Frame, FrameSource, Shared};
use crate::frame::{FrameImage, RgbaImage};
use crate::upscale::{BicubicResizer, UpscaleMode};

/// A numbered frame for the upscale workers.
pub(super) struct Job {
    pub(super) index: u64,
    pub(super) image: FrameImage,
    pub(super) source: FrameSource,
    pub(super) upscale: UpscaleMode,
    pub(super) output_size: (u32, u32),
}

pub(super) fn upscale_worker(
    shared: &Shared,
    jobs: Receiver<Job>,
    live_workers: Arc<Mutex<usize>>,
) {
    let mut resizer = BicubicResizer::new();
    // The job queue disconnects when the in-between stage ends (or stops).
    for job in jobs.iter() {
        let image = match job.upscale {
            UpscaleMode::Cpu => {
                let started = Instant::now();
                let (w, h) = job.output_size;
                let image = match job.image.to_cpu() {
                    Ok(source) => resizer.resize_shared(&source, w, h),
                    Err(e) => {
                        // The frame is lost with the GPU; its place in the stream is kept.
                        shared.stats.update(|s| {
                            s.last_error = Some(format!("frame {}: {e}", job.index));
                        });
                        Arc::new(RgbaImage::new(w, h))
                    }
                };
                shared
                    .stats
                    .record_upscale(started.elapsed().as_secs_f64() * 1e3);
                FrameImage::Cpu(image)
            }
            UpscaleMode::None | UpscaleMode::Gpu => job.image,
        };
        let frame = Frame {
            index: job.index,
            image,
            source: job.source,
        };
        if shared.ring.insert(frame).is_err() {
            break;
        }
        shared.stats.update(|s| s.frames_produced += 1);
    }
    // The last worker out closes the ring: the consumer then drains it and sees the end.
    let mut live = live_workers.lock();
    *live -= 1;
    if *live == 0 {
        shared.ring.close();
    }
}
