//! The streaming pipeline: endpoints -> walk + decode -> in-betweens -> upscale -> ring.
//!
//! Threads and the channels between them (all `crossbeam-channel`, all bounded):
//!
//! ```text
//! endpoint thread --keyframes--> decode thread --decoded(4)--> in-between thread
//!     (sampling)                  (walk, cache)                 (blends, indices)
//!                                                                     |
//!                                                 jobs(2*workers)     v
//!                           ring buffer <--insert by index-- upscale workers (N)
//!                                |
//!                 consumer: display thread (deadline) or render/record (blocking)
//! ```
//!
//! Settings live in one locked struct; every stage reads what it needs when it needs it,
//! so a change reaches the next frame. A change to anything that decides the endpoints
//! sends a new request to the endpoint thread, which samples in the background while the
//! current walk keeps playing. Shutdown drops the stop channel's sender (every blocking
//! `select!` wakes) and closes the ring (producers blocked on a full ring wake).

pub mod display;
pub mod inbetween;
pub mod ring;
mod settings;
pub mod stats;

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{bounded, select, Receiver, Sender};
use parking_lot::Mutex;

use crate::frame::{FrameImage, RgbaImage};
use crate::model::{DecoderKind, EndpointError, EndpointRequest, Engine};
use crate::upscale::{BicubicResizer, UpscaleMode};
use crate::walk::Walk;
pub use inbetween::Inbetweens;
pub use ring::{Closed, Frame, FrameSource, Popped, RingBuffer, RingPolicy};
pub use settings::{Settings, SettingsError, MAX_IMAGE_SIDE, MAX_SAMPLER_STEPS};
pub use stats::{Stats, StatsSnapshot};

/// How the pipeline is built (fixed for its lifetime).
#[derive(Clone, Debug)]
pub struct PipelineOptions {
    pub ring_capacity: usize,
    pub policy: RingPolicy,
    pub upscale_workers: usize,
    /// End the stream (close the ring) when a `Once` walk is done: `render` wants this,
    /// the viewer waits for new settings instead.
    pub stop_at_end: bool,
    /// With `stop_at_end`: how many laps of a looping walk make its end.
    pub laps: u64,
    /// Memory the decoded-frame loop cache may use.
    pub cache_budget_bytes: usize,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            ring_capacity: 8,
            policy: RingPolicy::Display,
            upscale_workers: 2,
            stop_at_end: false,
            laps: 1,
            cache_budget_bytes: 512 << 20,
        }
    }
}

/// Shared by the pipeline's threads.
struct Shared {
    settings: Mutex<Settings>,
    run_state: Mutex<RunState>,
    /// Signalled on resume and on stop (the paused display waits on it).
    run_state_changed: parking_lot::Condvar,
    stats: Arc<Stats>,
    ring: Arc<RingBuffer>,
}

#[derive(Default)]
struct RunState {
    paused: bool,
    stopping: bool,
}

/// A running pipeline. Dropping it stops and joins every thread.
pub struct Pipeline {
    shared: Arc<Shared>,
    engine: Arc<dyn Engine>,
    requests: Sender<(u64, EndpointRequest)>,
    /// Nudges the decode thread (settings changed, resumed).
    wake: Sender<()>,
    /// Dropped to stop: every thread's `select!` on it wakes.
    stop: Option<Sender<()>>,
    stop_rx: Receiver<()>,
    generation: Mutex<u64>,
    threads: Vec<JoinHandle<()>>,
}

impl Pipeline {
    /// Starts every stage and asks for the first endpoints.
    pub fn start(engine: Arc<dyn Engine>, settings: Settings, options: PipelineOptions) -> Self {
        let stats = Arc::new(Stats::default());
        let ring = Arc::new(RingBuffer::new(options.ring_capacity, options.policy, 0));
        stats.update(|s| s.buffer_capacity = ring.capacity());
        let first_request = settings.endpoints.clone();
        let shared = Arc::new(Shared {
            settings: Mutex::new(settings),
            run_state: Mutex::new(RunState::default()),
            run_state_changed: parking_lot::Condvar::new(),
            stats,
            ring,
        });
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let (request_tx, request_rx) = bounded::<(u64, EndpointRequest)>(4);
        let (keyframes_tx, keyframes_rx) = bounded::<Keyframes>(1);
        let (wake_tx, wake_rx) = bounded::<()>(1);
        let (decoded_tx, decoded_rx) = bounded::<Decoded>(4);
        let workers = options.upscale_workers.max(1);
        let (job_tx, job_rx) = bounded::<Job>(2 * workers);

        let mut threads = Vec::new();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.to_string())
                .spawn(f)
                .expect("the OS refused to start a pipeline thread")
        };
        let stop_at_end = options.stop_at_end;
        {
            let (engine, shared, stop_rx) = (engine.clone(), shared.clone(), stop_rx.clone());
            threads.push(spawn(
                "endpoints",
                Box::new(move || {
                    endpoint_thread(
                        &*engine,
                        &shared,
                        request_rx,
                        keyframes_tx,
                        stop_rx,
                        stop_at_end,
                    )
                }),
            ));
        }
        {
            let (engine, shared, stop_rx) = (engine.clone(), shared.clone(), stop_rx.clone());
            let options = options.clone();
            threads.push(spawn(
                "decode",
                Box::new(move || {
                    DecodeStage::new(engine, shared, options).run(
                        keyframes_rx,
                        wake_rx,
                        decoded_tx,
                        stop_rx,
                    )
                }),
            ));
        }
        {
            let (shared, stop_rx) = (shared.clone(), stop_rx.clone());
            threads.push(spawn(
                "inbetweens",
                Box::new(move || inbetween_thread(&shared, decoded_rx, job_tx, stop_rx)),
            ));
        }
        let live_workers = Arc::new(Mutex::new(workers));
        for i in 0..workers {
            let (shared, job_rx, live) = (shared.clone(), job_rx.clone(), live_workers.clone());
            threads.push(spawn(
                &format!("upscale-{i}"),
                Box::new(move || upscale_worker(&shared, job_rx, live)),
            ));
        }
        let pipeline = Self {
            shared,
            engine,
            requests: request_tx,
            wake: wake_tx,
            stop: Some(stop_tx),
            stop_rx,
            generation: Mutex::new(0),
            threads,
        };
        pipeline.request_endpoints(first_request);
        pipeline
    }

    fn request_endpoints(&self, request: EndpointRequest) {
        let generation = {
            let mut g = self.generation.lock();
            *g += 1;
            *g
        };
        self.shared.stats.update(|s| s.last_error = None);
        // The endpoint thread drains to the newest request, so a full queue only means
        // it is busy: wait for room rather than lose the newest settings.
        select! {
            send(self.requests, (generation, request)) -> _ => {}
            recv(self.stop_rx) -> _ => {}
        }
    }

    /// A copy of the current settings.
    pub fn settings(&self) -> Settings {
        self.shared.settings.lock().clone()
    }

    /// Changes settings live. New endpoints are sampled if anything that decides them
    /// changed; everything else acts from the next frame.
    pub fn update_settings(&self, change: impl FnOnce(&mut Settings)) {
        let new_request = {
            let mut settings = self.shared.settings.lock();
            let before = settings.endpoints.clone();
            change(&mut settings);
            (settings.endpoints != before).then(|| settings.endpoints.clone())
        };
        if let Some(request) = new_request {
            self.request_endpoints(request);
        }
        let _ = self.wake.try_send(());
    }

    /// Stops producing and showing frames; [`resume`](Self::resume) goes on from there.
    pub fn pause(&self) {
        self.shared.run_state.lock().paused = true;
        self.shared.stats.update(|s| s.playing = false);
    }

    pub fn resume(&self) {
        self.shared.run_state.lock().paused = false;
        self.shared.run_state_changed.notify_all();
        let _ = self.wake.try_send(());
    }

    pub fn is_paused(&self) -> bool {
        self.shared.run_state.lock().paused
    }

    /// The ordered output; pop it with the policy the pipeline was built for.
    pub fn ring(&self) -> &Arc<RingBuffer> {
        &self.shared.ring
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.shared.stats
    }

    pub fn stats_snapshot(&self) -> StatsSnapshot {
        let mut snapshot = self.shared.stats.snapshot();
        snapshot.buffer_fill = self.shared.ring.fill();
        snapshot
    }

    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// A receiver that disconnects when the pipeline stops (for consumer threads).
    pub fn stop_signal(&self) -> Receiver<()> {
        self.stop_rx.clone()
    }

    /// Stops every stage and joins its thread.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.take();
        self.shared.run_state.lock().stopping = true;
        self.shared.run_state_changed.notify_all();
        self.shared.ring.close();
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!("a pipeline thread panicked");
            }
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// New keyframe latents for a walk.
struct Keyframes {
    generation: u64,
    latents: Vec<candle_core::Tensor>,
}

enum Decoded {
    Frame(FrameImage, FrameSource),
    End,
}

struct Job {
    index: u64,
    image: FrameImage,
    source: FrameSource,
    upscale: UpscaleMode,
    output_size: (u32, u32),
}

fn endpoint_thread(
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
        let total = request.prompts.len() * request.steps;
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

/// Decoded frames of the current walk by path index, within a memory budget (of the memory
/// where they live: frames kept on the GPU are held there).
struct DecodeCache {
    frames: HashMap<usize, FrameImage>,
    bytes: usize,
    budget: usize,
}

impl DecodeCache {
    fn clear(&mut self) {
        self.frames.clear();
        self.bytes = 0;
    }

    fn insert(&mut self, path_index: usize, image: &FrameImage) {
        let size = image.byte_len();
        // First come stays: a loop replays its start first, so keep that.
        if self.bytes + size <= self.budget {
            self.bytes += size;
            self.frames.insert(path_index, image.clone());
        }
    }
}

struct DecodeStage {
    engine: Arc<dyn Engine>,
    shared: Arc<Shared>,
    options: PipelineOptions,
    walk: Option<Walk>,
    generation: u64,
    decoder: DecoderKind,
    /// Frames of the current walk sent so far (the walk's sequence position).
    sequence: u64,
    decoded_index: u64,
    ended: bool,
    /// A decode failed: wait for a settings change instead of failing in a loop.
    failed: bool,
    cache: DecodeCache,
}

impl DecodeStage {
    fn new(engine: Arc<dyn Engine>, shared: Arc<Shared>, options: PipelineOptions) -> Self {
        let decoder = shared.settings.lock().decoder;
        let budget = options.cache_budget_bytes;
        Self {
            engine,
            shared,
            options,
            walk: None,
            generation: 0,
            decoder,
            sequence: 0,
            decoded_index: 0,
            ended: false,
            failed: false,
            cache: DecodeCache {
                frames: HashMap::new(),
                bytes: 0,
                budget,
            },
        }
    }

    fn install_keyframes(&mut self, keyframes: Keyframes) {
        let settings = self.shared.settings.lock().walk;
        let walk = Walk::new(keyframes.latents, settings);
        // Keep the walk where it is unless it had ended: then play the new one from the start.
        self.sequence = match (&self.walk, self.ended) {
            (Some(old), false) => {
                let here = old
                    .path_index_at(self.sequence.saturating_sub(1))
                    .unwrap_or(0);
                old.carry_over(here, &walk) as u64
            }
            _ => 0,
        };
        self.walk = Some(walk);
        self.generation = keyframes.generation;
        self.ended = false;
        self.failed = false;
        self.cache.clear();
    }

    /// Applies live walk and decoder settings; a change clears the cache.
    fn sync_settings(&mut self) {
        let (walk_settings, decoder) = {
            let s = self.shared.settings.lock();
            (s.walk, s.decoder)
        };
        if decoder != self.decoder {
            self.decoder = decoder;
            self.failed = false;
            self.cache.clear();
        }
        if let Some(walk) = &self.walk {
            if *walk.settings() != walk_settings {
                let new = Walk::new(walk.keyframes().to_vec(), walk_settings);
                let here = walk
                    .path_index_at(self.sequence.saturating_sub(1))
                    .unwrap_or(0);
                let next = walk.carry_over(here, &new) as u64;
                // Continue after the current place, not on it again.
                self.sequence = if self.sequence == 0 { 0 } else { next + 1 };
                if walk.settings().loop_mode != walk_settings.loop_mode {
                    self.ended = false;
                }
                self.walk = Some(new);
                self.failed = false;
                self.cache.clear();
            }
        }
    }

    fn run(
        mut self,
        keyframes: Receiver<Keyframes>,
        wake: Receiver<()>,
        decoded: Sender<Decoded>,
        stop: Receiver<()>,
    ) {
        loop {
            if let Some(newest) = keyframes.try_iter().last() {
                self.install_keyframes(newest);
            }
            self.sync_settings();
            let paused = self.shared.run_state.lock().paused;
            if self.ended && self.options.stop_at_end {
                let _ = decoded.send(Decoded::End);
                return;
            }
            if paused || self.walk.is_none() || self.ended || self.failed {
                self.shared.stats.update(|s| s.playing = false);
                select! {
                    recv(keyframes) -> k => match k {
                        Ok(k) => self.install_keyframes(k),
                        Err(_) => return,
                    },
                    recv(wake) -> _ => {},
                    recv(stop) -> _ => return,
                }
                continue;
            }
            let Some(message) = self.next_frame() else {
                continue;
            };
            self.shared.stats.update(|s| s.playing = true);
            select! {
                send(decoded, message) -> r => if r.is_err() { return },
                recv(stop) -> _ => return,
            }
        }
    }

    /// Decodes (or takes from the cache) the walk's next frame.
    fn next_frame(&mut self) -> Option<Decoded> {
        let walk = self.walk.as_ref()?;
        let past_end =
            self.options.stop_at_end && self.sequence >= walk.frames_in_laps(self.options.laps);
        let Some(path_index) = walk.path_index_at(self.sequence).filter(|_| !past_end) else {
            self.ended = true;
            return None;
        };
        let position = walk.position(path_index);
        let image = match self.cache.frames.get(&path_index) {
            Some(image) => {
                self.shared.stats.update(|s| s.frames_from_cache += 1);
                image.clone()
            }
            None => {
                let started = Instant::now();
                let decoded = walk
                    .latents_at(&position)
                    .map_err(crate::model::ModelError::from)
                    .and_then(|latents| self.engine.decode_frame(&latents, self.decoder));
                match decoded {
                    Ok(image) => {
                        self.shared
                            .stats
                            .record_decode(started.elapsed().as_secs_f64() * 1e3);
                        self.cache.insert(path_index, &image);
                        image
                    }
                    Err(e) => {
                        tracing::warn!("decoding failed: {e}");
                        self.shared.stats.update(|s| {
                            s.last_error = Some(format!("decoding failed: {e}"));
                        });
                        self.failed = true;
                        return None;
                    }
                }
            }
        };
        let source = FrameSource {
            decoded_index: self.decoded_index,
            segment: position.segment,
            t: position.t,
            inbetween: None,
            generation: self.generation,
        };
        self.shared
            .stats
            .update(|s| s.position = (position.segment, position.t));
        self.sequence += 1;
        self.decoded_index += 1;
        Some(Decoded::Frame(image, source))
    }
}

fn inbetween_thread(
    shared: &Shared,
    decoded: Receiver<Decoded>,
    jobs: Sender<Job>,
    stop: Receiver<()>,
) {
    let mut previous: Option<FrameImage> = None;
    let mut next_index = 0u64;
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
        let Decoded::Frame(image, source) = message else {
            return; // End: dropping `jobs` lets the workers finish and close the ring.
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
        previous = Some(image.clone());
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

fn upscale_worker(shared: &Shared, jobs: Receiver<Job>, live_workers: Arc<Mutex<usize>>) {
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

/// A black frame of `image`'s size, standing in for one the GPU lost.
fn black_like(image: &FrameImage) -> FrameImage {
    let (w, h) = image.size();
    RgbaImage::new(w, h).into()
}
