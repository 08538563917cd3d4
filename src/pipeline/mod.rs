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

mod decode;
pub mod display;
mod endpoints;
pub mod inbetween;
pub mod placement;
pub mod refine;
mod refinements;
pub mod ring;
mod settings;
mod span;
pub mod stats;
mod thumbnails;
mod upscale;

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, select, Receiver, Sender};
use parking_lot::Mutex;

use crate::model::{EndpointRequest, Engine};
use crate::walk::Timeline;
use decode::{DecodeStage, Decoded};
use endpoints::{endpoint_thread, FromEndpoints};
use inbetween::inbetween_thread;
pub use inbetween::Inbetweens;
pub use ring::{Closed, Frame, FrameSource, Popped, RingBuffer, RingPolicy};
pub use settings::{
    check_laps, Settings, SettingsError, MAX_GUIDANCE, MAX_IMAGE_SIDE, MAX_LAPS, MAX_SAMPLER_STEPS,
};
pub use span::{stream_frames, FrameSpan, SpanNeeds};
pub use stats::{Stats, StatsSnapshot};
pub use thumbnails::KeyframeThumbnails;
use upscale::{upscale_worker, Job};

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
    /// Make a thumbnail of each sampled keyframe, this many pixels on its longer side (the
    /// viewer's keyframe rows); `None`: make none (`render`).
    pub keyframe_thumbnails: Option<u32>,
    /// A timed walk: where each frame is (see [`Walk::with_timeline`]); `None` walks by
    /// `steps_between`. Fixed for the pipeline's life, as a render's audio is.
    ///
    /// [`Walk::with_timeline`]: crate::walk::Walk::with_timeline
    pub timeline: Option<Timeline>,
    /// With `stop_at_end`: make only these frames of the stream (numbered as in the whole
    /// stream), decoding from where they start; `None` makes them all. Needs
    /// `Inbetweens::Fixed(span.inbetweens)` in the settings.
    pub span: Option<FrameSpan>,
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
            keyframe_thumbnails: None,
            timeline: None,
            span: None,
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
    /// The newest sampling's keyframe thumbnails, when the options ask for them.
    thumbnails: Mutex<Option<Arc<KeyframeThumbnails>>>,
    /// A place to jump to ([`Pipeline::seek`]), taken by the decode stage.
    seek_to: Mutex<Option<f64>>,
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
    /// Nudges the endpoint thread to make (or stop making) diffused in-betweens.
    refine_nudge: Sender<()>,
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
        let first_index = options.span.map_or(0, |span| span.first);
        let ring = Arc::new(RingBuffer::new(
            options.ring_capacity,
            options.policy,
            first_index,
        ));
        stats.update(|s| s.buffer_capacity = ring.capacity());
        let first_request = settings.endpoints.clone();
        let shared = Arc::new(Shared {
            settings: Mutex::new(settings),
            run_state: Mutex::new(RunState::default()),
            run_state_changed: parking_lot::Condvar::new(),
            stats,
            ring,
            thumbnails: Mutex::new(None),
            seek_to: Mutex::new(None),
        });
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let (request_tx, request_rx) = bounded::<(u64, EndpointRequest)>(4);
        let (keyframes_tx, keyframes_rx) = bounded::<FromEndpoints>(2);
        let (refine_tx, refine_rx) = bounded::<()>(1);
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
        {
            let (engine, shared, stop_rx) = (engine.clone(), shared.clone(), stop_rx.clone());
            let options = options.clone();
            threads.push(spawn(
                "endpoints",
                Box::new(move || {
                    endpoint_thread(
                        &*engine,
                        &shared,
                        &options,
                        request_rx,
                        refine_rx,
                        keyframes_tx,
                        stop_rx,
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
            let (shared, stop_rx, span) = (shared.clone(), stop_rx.clone(), options.span);
            threads.push(spawn(
                "inbetweens",
                Box::new(move || inbetween_thread(&shared, span, decoded_rx, job_tx, stop_rx)),
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
            refine_nudge: refine_tx,
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
        let (new_request, refine_changed) = {
            let mut settings = self.shared.settings.lock();
            let before = (settings.endpoints.clone(), settings.diffuse, settings.walk);
            change(&mut settings);
            let refine_changed =
                settings.diffuse != before.1 || (settings.diffuse > 0 && settings.walk != before.2);
            let request = (settings.endpoints != before.0).then(|| settings.endpoints.clone());
            (request, refine_changed)
        };
        if let Some(request) = new_request {
            self.request_endpoints(request);
        } else if refine_changed {
            // A full nudge channel already asks the endpoint thread to look again.
            let _ = self.refine_nudge.try_send(());
        }
        let _ = self.wake.try_send(());
    }

    /// Moves the walk to `fraction` (0 to 1, clamped) of the way along its path: 0 is the
    /// first keyframe, 1 the last (the first again on an endless loop); a walk that had
    /// ended plays on from there. The frames already made (the ring's, a few) are shown
    /// first. Before the first keyframes arrive, they start there.
    pub fn seek(&self, fraction: f64) {
        if fraction.is_nan() {
            return;
        }
        *self.shared.seek_to.lock() = Some(fraction.clamp(0.0, 1.0));
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

    /// The keyframe thumbnails of the newest sampling (when
    /// [`PipelineOptions::keyframe_thumbnails`] asks for them and they are made).
    pub fn keyframe_thumbnails(&self) -> Option<Arc<KeyframeThumbnails>> {
        self.shared.thumbnails.lock().clone()
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
