//! The endpoint stage: samples keyframe latents for each request (the newest only), in the
//! background, cancellable between sampler steps, and hands them to the decode stage.
//!
//! Only keyframes whose inputs changed are sampled: the latents of each keyframe sampled
//! before are kept with what decided them ([`KeyframeInputs`]), so moving one prompt's mix
//! weight, or adding a keyframe, costs one keyframe's sampling while the others are reused
//! (the model is the pipeline's own, fixed for its life).

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use candle_core::{Tensor, TensorId};
use crossbeam_channel::{select, Receiver, Sender};

use super::refinements::{refine_walk, Refinement, WalkRefiner};
use super::thumbnails::make_thumbnails;
use super::{PipelineOptions, Shared};
use crate::model::{
    EndpointError, EndpointRequest, Engine, Keyframe, ModelError, SamplingProgress,
};

/// New keyframe latents for a walk.
pub(super) struct Keyframes {
    pub(super) generation: u64,
    pub(super) latents: Vec<candle_core::Tensor>,
    /// Diffused in-betweens made before the walk starts (a render's).
    pub(super) refined: Vec<Refinement>,
}

/// What the endpoint thread sends the decode stage, in the order made.
pub(super) enum FromEndpoints {
    Keyframes(Keyframes),
    /// A diffused in-between made while the walk plays (the viewer's Refine).
    Refined(Refinement),
}

/// Everything that decides one keyframe's latents on a given model.
#[derive(Clone, Debug, PartialEq)]
struct KeyframeInputs {
    keyframe: Keyframe,
    /// The seed of its noise (`seed + index` with `seed_per_keyframe`).
    seed: u64,
    negative: String,
    steps: usize,
    guidance: f64,
    image_size: (u32, u32),
    /// The initial latents by identity (clones of one load share it).
    init_latents: Option<TensorId>,
}

impl KeyframeInputs {
    fn of(request: &EndpointRequest, index: usize) -> Self {
        Self {
            keyframe: request.keyframes[index].clone(),
            seed: if request.seed_per_keyframe {
                request.seed.wrapping_add(index as u64)
            } else {
                request.seed
            },
            negative: request.negative.clone(),
            steps: request.steps,
            guidance: request.guidance,
            image_size: request.image_size,
            init_latents: request.init_latents.as_ref().map(Tensor::id),
        }
    }
}

/// The latents sampled lately, with their inputs, most recently used last; at most
/// `capacity` (a keyframe's latents are small: 4 x 72 x 128 floats for 576x1024).
struct SampledKeyframes {
    entries: VecDeque<(KeyframeInputs, Tensor)>,
    capacity: usize,
}

impl SampledKeyframes {
    fn new() -> Self {
        Self {
            entries: VecDeque::new(),
            capacity: 32,
        }
    }

    /// The latents sampled for `inputs`, marked as just used.
    fn take_copy(&mut self, inputs: &KeyframeInputs) -> Option<Tensor> {
        let at = self.entries.iter().position(|(known, _)| known == inputs)?;
        let entry = self.entries.remove(at)?;
        let latents = entry.1.clone();
        self.entries.push_back(entry);
        Some(latents)
    }

    fn keep(&mut self, inputs: KeyframeInputs, latents: Tensor) {
        self.entries.retain(|(known, _)| *known != inputs);
        self.entries.push_back((inputs, latents));
        while self.entries.len() > self.capacity {
            self.entries.pop_front();
        }
    }
}

pub(super) fn endpoint_thread(
    engine: &dyn Engine,
    shared: &Shared,
    options: &PipelineOptions,
    requests: Receiver<(u64, EndpointRequest)>,
    refine_nudge: Receiver<()>,
    to_decode: Sender<FromEndpoints>,
    stop: Receiver<()>,
) {
    let mut sampled = SampledKeyframes::new();
    // The current walk's refiners (its diffused in-betweens).
    let mut refiner: Option<WalkRefiner> = None;
    let stopped = || stop.try_recv() == Err(crossbeam_channel::TryRecvError::Disconnected);
    loop {
        let next = select! {
            recv(requests) -> r => match r { Ok(r) => Some(r), Err(_) => return },
            recv(refine_nudge) -> r => match r { Ok(()) => None, Err(_) => return },
            recv(stop) -> _ => return,
        };
        if let Some(mut next) = next {
            // Only the newest settings matter.
            while let Ok(newer) = requests.try_recv() {
                next = newer;
            }
            match sample_walk(
                engine,
                shared,
                options,
                next,
                &mut sampled,
                &requests,
                &stop,
            ) {
                Outcome::Walk(made, request) => {
                    let (generation, latents) = (made.generation, made.latents.clone());
                    select! {
                        send(to_decode, FromEndpoints::Keyframes(made)) -> r => if r.is_err() { return },
                        recv(stop) -> _ => return,
                    }
                    if let Some(side) = options.keyframe_thumbnails {
                        // After the walk has its keyframes: the thumbnails never delay it.
                        match make_thumbnails(
                            engine,
                            generation,
                            &request.keyframes,
                            &latents,
                            side,
                        ) {
                            Ok(made) => *shared.thumbnails.lock() = Some(std::sync::Arc::new(made)),
                            Err(e) => tracing::warn!("keyframe thumbnails failed: {e}"),
                        }
                    }
                    refiner = Some(WalkRefiner::new(generation, request, latents));
                }
                Outcome::Cancelled => continue,
                Outcome::Failed => {
                    if options.stop_at_end {
                        // Nothing will ever be walked: let the consumer see the end (and the error).
                        shared.ring.close();
                        return;
                    }
                    continue;
                }
            }
        }
        if options.stop_at_end {
            continue; // a render's in-betweens were made before its walk
        }
        let Some(refiner) = refiner.as_mut() else {
            continue;
        };
        // The viewer's Refine: one position at a time while the walk plays, each handed to
        // the decode stage as it is made; a newer request or Refine turned off cancels.
        let keep_going = || requests.is_empty() && !stopped() && shared.settings.lock().diffuse > 0;
        let mut deliver = |refinement| {
            select! {
                send(to_decode, FromEndpoints::Refined(refinement)) -> r => r.is_ok(),
                recv(stop) -> _ => false,
            }
        };
        match refine_walk(engine, shared, refiner, &keep_going, &mut deliver) {
            Ok(()) | Err(EndpointError::Cancelled) => {}
            Err(EndpointError::Model(e)) => report_failure(shared, "diffusing in-betweens", &e),
        }
    }
}

/// What sampling a request came to.
enum Outcome {
    /// The walk's keyframes (and, for a render, its diffused in-betweens), with the request.
    Walk(Keyframes, EndpointRequest),
    Cancelled,
    /// The model failed; the stats say why.
    Failed,
}

/// Samples a request's keyframes (those not sampled before); a render (`stop_at_end`) also
/// makes every diffused in-between its settings ask for, before its walk starts.
fn sample_walk(
    engine: &dyn Engine,
    shared: &Shared,
    options: &PipelineOptions,
    (generation, request): (u64, EndpointRequest),
    sampled: &mut SampledKeyframes,
    requests: &Receiver<(u64, EndpointRequest)>,
    stop: &Receiver<()>,
) -> Outcome {
    let stats = &shared.stats;
    let started = Instant::now();
    // Cancel when a newer request waits or the pipeline stops.
    let keep_going = || {
        requests.is_empty() && stop.try_recv() != Err(crossbeam_channel::TryRecvError::Disconnected)
    };
    // Keep the walk's keyframes (and a few before them) however many it has.
    sampled.capacity = sampled.capacity.max(2 * request.keyframes.len());
    // A segment of a render samples only the keyframes its frames are made from.
    let needs = options.span.map(|span| {
        let walk = shared.settings.lock().walk;
        span.needs(request.keyframes.len(), walk, options.timeline.as_ref())
    });
    let needed = needs.as_ref().map(|n| &n.keyframes);
    let result = sample_changed(
        engine,
        &request,
        needed,
        sampled,
        stats,
        &mut |p, done, total| {
            stats.update(|s| {
                s.endpoint_progress = Some((done, total));
                s.phase = sampling_phase(&p, (done, total), started.elapsed());
            });
            keep_going()
        },
    );
    stats.update(|s| s.endpoint_progress = None);
    let (latents, sampled_count) = match result {
        Ok(made) => made,
        Err(EndpointError::Cancelled) => return Outcome::Cancelled,
        Err(EndpointError::Model(e)) => {
            report_failure(shared, "sampling", &e);
            return Outcome::Failed;
        }
    };
    stats.update(|s| {
        if sampled_count > 0 {
            let seconds = started.elapsed().as_secs_f64() / sampled_count as f64;
            s.keyframe_seconds = Some(seconds);
        }
    });
    let mut refined = Vec::new();
    if options.stop_at_end {
        let mut refiner = WalkRefiner::new(generation, request.clone(), latents.clone());
        if let Some(needs) = needs {
            refiner = refiner.only_pairs(needs.pairs);
        }
        let mut keep = |r| {
            refined.push(r);
            true
        };
        match refine_walk(engine, shared, &mut refiner, &keep_going, &mut keep) {
            Ok(()) => {}
            Err(EndpointError::Cancelled) => return Outcome::Cancelled,
            Err(EndpointError::Model(e)) => {
                report_failure(shared, "diffusing in-betweens", &e);
                return Outcome::Failed;
            }
        }
    }
    stats.update(|s| {
        s.generation = generation;
        s.phase = "walking".into();
    });
    let walk = Keyframes {
        generation,
        latents,
        refined,
    };
    Outcome::Walk(walk, request)
}

/// The model failed at `what`: logged, and kept for the window and the render to show.
fn report_failure(shared: &Shared, what: &str, error: &ModelError) {
    tracing::warn!("{what} failed: {error}");
    shared.stats.update(|s| {
        s.last_error = Some(error.to_string());
        s.phase = format!("{what} failed");
    });
}

/// The request's keyframe latents: those `sampled` has for the same inputs, the rest
/// sampled (and kept there as each finishes, so a cancelled request keeps what it made).
/// With `needed`, only those keyframes are sampled; the others are zeros of the same shape,
/// never walked through (a segment's frames do not reach them).
/// `progress(p, done, total)` counts steps over the keyframes sampled; it returns `false`
/// to cancel. Returns the latents and how many keyframes were sampled.
fn sample_changed(
    engine: &dyn Engine,
    request: &EndpointRequest,
    needed: Option<&BTreeSet<usize>>,
    sampled: &mut SampledKeyframes,
    stats: &super::Stats,
    progress: &mut dyn FnMut(SamplingProgress, usize, usize) -> bool,
) -> Result<(Vec<Tensor>, usize), EndpointError> {
    if request.keyframes.is_empty() {
        return Err(ModelError::Invalid("no keyframe to sample".into()).into());
    }
    let inputs: Vec<KeyframeInputs> = (0..request.keyframes.len())
        .map(|i| KeyframeInputs::of(request, i))
        .collect();
    let mut latents: Vec<Option<Tensor>> = inputs.iter().map(|k| sampled.take_copy(k)).collect();
    let wanted = |i: &usize| needed.is_none_or(|needed| needed.contains(i));
    let missing: Vec<usize> = (0..latents.len())
        .filter(|i| latents[*i].is_none() && wanted(i))
        .collect();
    let total = missing.len() * request.steps;
    for (order, &index) in missing.iter().enumerate() {
        let made = engine.keyframe_latents(request, index, &mut |p| {
            progress(p, order * p.steps + p.step, total)
        })?;
        stats.update(|s| s.keyframes_sampled += 1);
        sampled.keep(inputs[index].clone(), made.clone());
        latents[index] = Some(made);
    }
    let shape_of = latents.iter().flatten().next().cloned();
    let latents = latents
        .into_iter()
        .map(|made| match (made, &shape_of) {
            (Some(made), _) => Ok(made),
            (None, Some(like)) => like.zeros_like().map_err(ModelError::from),
            (None, None) => Err(ModelError::Invalid("no keyframe was sampled".into())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((latents, missing.len()))
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
