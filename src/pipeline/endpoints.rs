//! The endpoint stage: samples keyframe latents for each request (the newest only), in the
//! background, cancellable between sampler steps, and hands them to the decode stage.

use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};

use super::thumbnails::make_thumbnails;
use super::{PipelineOptions, Shared};
use crate::model::{EndpointError, EndpointRequest, Engine, SamplingProgress};

/// New keyframe latents for a walk.
pub(super) struct Keyframes {
    pub(super) generation: u64,
    pub(super) latents: Vec<candle_core::Tensor>,
}

pub(super) fn endpoint_thread(
    engine: &dyn Engine,
    shared: &Shared,
    options: &PipelineOptions,
    requests: Receiver<(u64, EndpointRequest)>,
    keyframes: Sender<Keyframes>,
    stop: Receiver<()>,
) {
    loop {
        let mut next = select! {
            recv(requests) -> r => match r { Ok(r) => r, Err(_) => return },
            recv(stop) -> _ => return,
        };
        // Only the newest settings matter.
        while let Ok(newer) = requests.try_recv() {
            next = newer;
        }
        let (generation, request) = next;
        let stats = &shared.stats;
        let total = request.keyframes.len() * request.steps;
        let started = Instant::now();
        let result = engine.endpoints(&request, &mut |p| {
            let done = p.keyframe * p.steps + p.step;
            stats.update(|s| {
                s.endpoint_progress = Some((done, total));
                s.phase = sampling_phase(&p, (done, total), started.elapsed());
            });
            // Cancel when a newer request waits or the pipeline stops.
            requests.is_empty()
                && stop.try_recv() != Err(crossbeam_channel::TryRecvError::Disconnected)
        });
        stats.update(|s| s.endpoint_progress = None);
        match result {
            Ok(latents) => {
                let seconds = started.elapsed().as_secs_f64() / latents.len().max(1) as f64;
                stats.update(|s| {
                    s.keyframe_seconds = Some(seconds);
                    s.generation = generation;
                    s.phase = "walking".into();
                });
                let walk = Keyframes {
                    generation,
                    latents: latents.clone(),
                };
                select! {
                    send(keyframes, walk) -> r => if r.is_err() { return },
                    recv(stop) -> _ => return,
                }
                if let Some(side) = options.keyframe_thumbnails {
                    // After the walk has its keyframes: the thumbnails never delay it.
                    match make_thumbnails(engine, generation, &request.keyframes, &latents, side) {
                        Ok(made) => *shared.thumbnails.lock() = Some(std::sync::Arc::new(made)),
                        Err(e) => tracing::warn!("keyframe thumbnails failed: {e}"),
                    }
                }
            }
            Err(EndpointError::Cancelled) => {}
            Err(EndpointError::Model(e)) => {
                tracing::warn!("sampling endpoints failed: {e}");
                stats.update(|s| {
                    s.last_error = Some(e.to_string());
                    s.phase = "sampling failed".into();
                });
                if options.stop_at_end {
                    // Nothing will ever be walked: let the consumer see the end (and the error).
                    shared.ring.close();
                    return;
                }
            }
        }
    }
}

/// "sampling keyframe 1/2, step 3/20 · 12 s, about 68 s left": where sampling is, how long
/// it has taken, and the rest estimated from the time per step so far.
fn sampling_phase(
    p: &SamplingProgress,
    (done, total): (usize, usize),
    elapsed: Duration,
) -> String {
    let seconds = elapsed.as_secs_f64();
    let mut phase = format!(
        "sampling keyframe {}/{}, step {}/{} · {seconds:.0} s",
        p.keyframe + 1,
        p.keyframes,
        p.step,
        p.steps
    );
    if done > 0 && done < total {
        let left = seconds / done as f64 * (total - done) as f64;
        phase.push_str(&format!(", about {left:.0} s left"));
    }
    phase
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_phase_estimates_the_time_left_from_the_steps_done() {
        let p = SamplingProgress {
            keyframe: 1,
            keyframes: 2,
            step: 1,
            steps: 4,
        };
        // 5 of 8 steps in 10 s: 2 s a step, 3 steps left.
        let phase = sampling_phase(&p, (5, 8), Duration::from_secs(10));
        assert_eq!(
            phase,
            "sampling keyframe 2/2, step 1/4 · 10 s, about 6 s left"
        );
        let first = sampling_phase(&p, (0, 8), Duration::from_millis(200));
        assert_eq!(first, "sampling keyframe 2/2, step 1/4 · 0 s");
    }
}
