//! The endpoint stage: samples keyframe latents for each request (the newest only), in the
//! background, cancellable between sampler steps, and hands them to the decode stage.

use crossbeam_channel::{select, Receiver, Sender};

use super::Shared;
use crate::model::{EndpointError, EndpointRequest, Engine};

/// New keyframe latents for a walk.
pub(super) struct Keyframes {
    pub(super) generation: u64,
    pub(super) latents: Vec<candle_core::Tensor>,
}

pub(super) fn endpoint_thread(
    engine: &dyn Engine,
    shared: &Shared,
    requests: Receiver<(u64, EndpointRequest)>,
    keyframes: Sender<Keyframes>,
    stop: Receiver<()>,
    stop_at_end: bool,
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
        let result = engine.endpoints(&request, &mut |p| {
            let done = p.keyframe * p.steps + p.step;
            stats.update(|s| {
                s.endpoint_progress = Some((done, total));
                s.phase = format!(
                    "sampling keyframe {}/{}, step {}/{}",
                    p.keyframe + 1,
                    p.keyframes,
                    p.step,
                    p.steps
                );
            });
            // Cancel when a newer request waits or the pipeline stops.
            requests.is_empty()
                && stop.try_recv() != Err(crossbeam_channel::TryRecvError::Disconnected)
        });
        stats.update(|s| s.endpoint_progress = None);
        match result {
            Ok(latents) => {
                stats.update(|s| {
                    s.generation = generation;
                    s.phase = "walking".into();
                });
                select! {
                    send(keyframes, Keyframes { generation, latents }) -> r => if r.is_err() { return },
                    recv(stop) -> _ => return,
                }
            }
            Err(EndpointError::Cancelled) => {}
            Err(EndpointError::Model(e)) => {
                tracing::warn!("sampling endpoints failed: {e}");
                stats.update(|s| {
                    s.last_error = Some(e.to_string());
                    s.phase = "sampling failed".into();
                });
                if stop_at_end {
                    // Nothing will ever be walked: let the consumer see the end (and the error).
                    shared.ring.close();
                    return;
                }
            }
        }
    }
}
