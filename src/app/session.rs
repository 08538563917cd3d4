//! What the viewer runs, without the window: a pipeline, its display thread, and a
//! recording tapped off the display. The window only draws what this holds and calls its
//! methods, so every button's effect is testable headless.
//!
//! A recording of an endless loop is whole laps ([`LapGate`]): it starts where a lap does
//! and, asked to end ([`Session::end_recording`]), finishes the lap first, so the file loops
//! seamlessly.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::controls::THUMBNAIL_SIDE;
use super::lap_gate::LapGate;
use crate::model::Engine;
use crate::pipeline::display::{Display, FrameTap};
use crate::pipeline::{
    Frame, KeyframeThumbnails, Pipeline, PipelineOptions, RingPolicy, Settings, StatsSnapshot,
};
use crate::record::{RecordError, RecordOptions, RecordSummary, Recorder};
use crate::walk::LoopMode;

/// Whether the walk plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlayState {
    /// No pipeline: nothing sampled, nothing shown.
    Stopped,
    Playing,
    /// The pipeline is kept (its buffer, its cache, the frame on screen) but makes no frames.
    Paused,
}

/// The running stages. Field order is drop order: the display thread ends before the
/// pipeline it pops.
struct Running {
    display: Display,
    pipeline: Pipeline,
}

/// A recording in progress: a [`Recorder`] fed by a display tap, so the file holds exactly
/// the frames shown.
struct Recording {
    recorder: Arc<Recorder>,
    path: PathBuf,
    /// Set by the tap when a push fails; the walk keeps playing, the window says why.
    error: Arc<Mutex<Option<String>>>,
    /// Which frames go in (whole laps of an endless loop); the tap moves it on.
    gate: Arc<Mutex<LapGate>>,
    started: Instant,
}

/// A recording's progress, for the window.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordingStatus {
    pub path: PathBuf,
    /// Frames accepted so far.
    pub frames: u64,
    pub elapsed: Duration,
    /// Frames waiting for the encoder, of the queue's capacity.
    pub queue: (usize, usize),
    /// Writing failed: what happened (the recording stops at the next [`Session::poll`]).
    pub error: Option<String>,
    /// Waiting for a lap to start, recording, or finishing the lap.
    pub gate: LapGate,
}

/// The engine room of the viewer: see the module docs.
pub struct Session {
    engine: Arc<dyn Engine>,
    options: PipelineOptions,
    running: Option<Running>,
    recording: Option<Recording>,
}

impl Session {
    pub fn new(engine: Arc<dyn Engine>) -> Self {
        Self {
            engine,
            options: PipelineOptions {
                policy: RingPolicy::Display,
                stop_at_end: false,
                keyframe_thumbnails: Some(THUMBNAIL_SIDE),
                ..PipelineOptions::default()
            },
            running: None,
            recording: None,
        }
    }

    /// Builds the pipeline with these options from the next [`play`](Self::play) on.
    pub fn with_options(mut self, options: PipelineOptions) -> Self {
        self.options = options;
        self
    }

    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    pub fn state(&self) -> PlayState {
        match &self.running {
            None => PlayState::Stopped,
            Some(r) if r.pipeline.is_paused() => PlayState::Paused,
            Some(_) => PlayState::Playing,
        }
    }

    /// Starts the walk with `settings` (a new pipeline), or resumes a paused one with them.
    /// `on_frame` runs on the display thread after each new frame is current (the window
    /// asks for a repaint there).
    pub fn play(&mut self, settings: Settings, on_frame: FrameTap) {
        match &self.running {
            Some(running) => {
                self.apply(&settings);
                running.pipeline.resume();
            }
            None => {
                let pipeline = Pipeline::start(self.engine.clone(), settings, self.options.clone());
                let display = Display::start(&pipeline, on_frame);
                self.running = Some(Running { display, pipeline });
            }
        }
    }

    /// Resumes a paused walk as it was.
    pub fn resume(&self) {
        if let Some(running) = &self.running {
            running.pipeline.resume();
        }
    }

    pub fn pause(&self) {
        if let Some(running) = &self.running {
            running.pipeline.pause();
        }
    }

    /// Ends the walk: finishes a recording (returning how that went), then stops and joins
    /// every thread.
    pub fn stop(&mut self) -> Option<Result<RecordSummary, RecordError>> {
        let recorded = self.stop_recording();
        self.running = None;
        recorded
    }

    /// Changes the running walk's settings: what decides the endpoints samples new ones in
    /// the background while the walk plays on; the rest acts from the next frame.
    pub fn apply(&self, settings: &Settings) {
        if let Some(running) = &self.running {
            running
                .pipeline
                .update_settings(|current| *current = settings.clone());
        }
    }

    /// Moves the walk to `fraction` (0 to 1) of its path: see [`Pipeline::seek`].
    pub fn seek(&self, fraction: f64) {
        if let Some(running) = &self.running {
            running.pipeline.seek(fraction);
        }
    }

    /// The settings the pipeline runs with, when it runs.
    pub fn settings(&self) -> Option<Settings> {
        self.running.as_ref().map(|r| r.pipeline.settings())
    }

    /// The frame on screen.
    pub fn current_frame(&self) -> Option<Arc<Frame>> {
        self.running.as_ref().and_then(|r| r.display.current.get())
    }

    /// Small pictures of the keyframes the walk plays between, once sampled.
    pub fn keyframe_thumbnails(&self) -> Option<Arc<KeyframeThumbnails>> {
        self.running
            .as_ref()
            .and_then(|r| r.pipeline.keyframe_thumbnails())
    }

    pub fn stats(&self) -> Option<StatsSnapshot> {
        self.running.as_ref().map(|r| r.pipeline.stats_snapshot())
    }

    /// Starts recording every frame shown from now on. Fails (naming the path) when the
    /// output cannot be created, or when the walk is not running.
    pub fn start_recording(
        &mut self,
        path: &Path,
        options: RecordOptions,
    ) -> Result<(), RecordError> {
        let Some(running) = &self.running else {
            return Err(RecordError::InvalidOption(
                "press Play first: a recording holds the frames shown".into(),
            ));
        };
        if self.recording.is_some() {
            return Err(RecordError::InvalidOption("already recording".into()));
        }
        let recorder = Arc::new(Recorder::start(path, options)?);
        let error = Arc::new(Mutex::new(None));
        let gate = Arc::new(Mutex::new(LapGate::start(self.endless_loop())));
        let (tap_recorder, tap_error, tap_gate) = (recorder.clone(), error.clone(), gate.clone());
        running.display.add_tap(Box::new(move |frame: &Arc<Frame>| {
            if tap_error.lock().is_some() || !tap_gate.lock().admit(frame.source.starts_lap) {
                return;
            }
            // Blocks while the encoder's queue is full: the display, and through the ring
            // the walk, slow down instead of a frame being lost.
            // Frames the viewer keeps on the GPU are read back only here, while recording.
            let pushed = match frame.image.to_cpu() {
                Ok(image) => tap_recorder
                    .push(frame.index, image)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = pushed {
                *tap_error.lock() = Some(e);
            }
        }));
        self.recording = Some(Recording {
            recorder,
            path: path.to_path_buf(),
            error,
            gate,
            started: Instant::now(),
        });
        Ok(())
    }

    /// The Stop-recording button: a recording of an endless loop goes on to the end of its
    /// lap (`None` now; [`Session::poll`] returns the outcome once it is done); any other
    /// ends at once, as [`Session::stop_recording`].
    pub fn end_recording(&mut self) -> Option<Result<RecordSummary, RecordError>> {
        let endless = self.endless_loop();
        let finishing = self
            .recording
            .as_ref()
            .is_some_and(|r| r.gate.lock().finish_lap(endless));
        if finishing {
            None
        } else {
            self.stop_recording()
        }
    }

    /// Whether the walk plays an endless loop (whose recordings are whole laps).
    fn endless_loop(&self) -> bool {
        self.running
            .as_ref()
            .is_some_and(|r| r.pipeline.settings().walk.loop_mode == LoopMode::Endless)
    }

    /// Finishes the recording: the queued frames are written and the file finalized.
    /// `None` when there was none.
    pub fn stop_recording(&mut self) -> Option<Result<RecordSummary, RecordError>> {
        let recording = self.recording.take()?;
        if let Some(running) = &self.running {
            // Waits for a push in progress; afterwards no tap holds the recorder.
            running.display.clear_taps();
        }
        Some(match Arc::try_unwrap(recording.recorder) {
            Ok(recorder) => recorder.finish(),
            // Unreachable once the tap is gone; dropping the last handle finishes it too.
            Err(_) => Err(RecordError::Failed {
                path: recording.path,
                reason: "the recorder was still in use; it finishes when released".into(),
            }),
        })
    }

    pub fn recording(&self) -> Option<RecordingStatus> {
        let recording = self.recording.as_ref()?;
        let stats = recording.recorder.stats();
        Some(RecordingStatus {
            path: recording.path.clone(),
            frames: stats.frames_pushed,
            elapsed: recording.started.elapsed(),
            queue: (stats.queue_len, stats.queue_capacity),
            error: recording.error.lock().clone(),
            gate: *recording.gate.lock(),
        })
    }

    /// Housekeeping once per window frame: a recording whose writing failed, or that has
    /// finished its lap, is finished (keeping what was written) and its outcome returned. A
    /// walk no longer endless releases a recording waiting on a lap.
    pub fn poll(&mut self) -> Option<Result<RecordSummary, RecordError>> {
        let endless = self.endless_loop();
        let recording = self.recording.as_ref()?;
        let done = {
            let mut gate = recording.gate.lock();
            if !endless {
                gate.loop_left();
            }
            *gate == LapGate::Done
        };
        if done || recording.error.lock().is_some() {
            self.stop_recording()
        } else {
            None
        }
    }
}

impl Drop for Session {
    /// Closing the window: finish the file, then stop every thread.
    fn drop(&mut self) {
        if let Some(Err(e)) = self.stop() {
            tracing::error!("recording: {e}");
        }
    }
}
