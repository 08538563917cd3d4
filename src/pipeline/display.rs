//! The display consumer: pops the ring on a deadline at the target fps.
//!
//! Pacing is by deadline, not `sleep(1/fps)`: deadline `n+1` is deadline `n` plus one
//! period, so time spent working does not add up into drift. A frame that lands early
//! waits for its deadline; when the deadline passes with no frame, the last frame stays
//! on screen and an underrun is counted (only while the walk is playing).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use parking_lot::Mutex;

use super::ring::{Frame, Popped, RingBuffer};
use super::Pipeline;

/// Called with each newly shown frame (the recorder, the window's repaint request).
/// It may block: that throttles the display and, through the ring, the walk.
pub type FrameTap = Box<dyn FnMut(&Arc<Frame>) + Send>;

/// The frame on screen, shared with the window.
#[derive(Default)]
pub struct CurrentFrame {
    frame: Mutex<Option<Arc<Frame>>>,
}

impl CurrentFrame {
    pub fn get(&self) -> Option<Arc<Frame>> {
        self.frame.lock().clone()
    }
}

/// A running display thread.
pub struct Display {
    pub current: Arc<CurrentFrame>,
    taps: Arc<Mutex<Vec<FrameTap>>>,
    /// Set to end the display thread before the pipeline stops.
    quit: Arc<AtomicBool>,
    shared: Arc<super::Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Display {
    /// Starts popping `pipeline`'s ring; `on_frame` runs after each new frame is current.
    pub fn start(pipeline: &Pipeline, on_frame: FrameTap) -> Self {
        let current = Arc::new(CurrentFrame::default());
        let taps: Arc<Mutex<Vec<FrameTap>>> = Arc::new(Mutex::new(vec![on_frame]));
        let ring = pipeline.ring().clone();
        let stats = pipeline.stats().clone();
        let shared = pipeline.shared.clone();
        let stop = pipeline.stop_signal();
        let quit = Arc::new(AtomicBool::new(false));
        let (current2, taps2, quit2) = (current.clone(), taps.clone(), quit.clone());
        let shared_for_display = shared.clone();
        let thread = std::thread::Builder::new()
            .name("display".into())
            .spawn(move || {
                let target_fps = || shared.settings.lock().target_fps;
                // Blocks while paused; `false` once the pipeline stops.
                let wait_while_paused = || {
                    let mut state = shared.run_state.lock();
                    while state.paused && !state.stopping && !quit2.load(Ordering::Relaxed) {
                        shared.run_state_changed.wait(&mut state);
                    }
                    !state.stopping && !quit2.load(Ordering::Relaxed)
                };
                run_display(
                    &ring,
                    &stop,
                    target_fps,
                    wait_while_paused,
                    |event| match event {
                        DisplayEvent::Shown(frame) => {
                            *current2.frame.lock() = Some(frame.clone());
                            // Counted before the taps run, so whoever a tap tells about
                            // this frame finds it in the stats too.
                            stats.update(|s| s.frames_shown += 1);
                            for tap in taps2.lock().iter_mut() {
                                tap(&frame);
                            }
                        }
                        DisplayEvent::Underrun => {
                            if stats.snapshot().playing {
                                stats.update(|s| s.underruns += 1);
                            }
                        }
                        DisplayEvent::Fps(fps) => stats.update(|s| s.shown_fps = fps),
                    },
                )
            })
            .expect("the OS refused to start the display thread");
        Self {
            current,
            taps,
            quit,
            shared: shared_for_display,
            thread: Some(thread),
        }
    }

    /// Adds a consumer of every shown frame (e.g. a recorder); it runs on the display thread.
    pub fn add_tap(&self, tap: FrameTap) -> usize {
        let mut taps = self.taps.lock();
        taps.push(tap);
        taps.len() - 1
    }

    /// Removes every tap added with [`add_tap`](Self::add_tap) (the first one stays).
    pub fn clear_taps(&self) {
        self.taps.lock().truncate(1);
    }

    /// Waits for the display thread to end by itself (the ring closed or the pipeline
    /// stopped), e.g. after a `Once` walk in a headless run.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Display {
    /// Ends the display thread (within one frame period) and joins it.
    fn drop(&mut self) {
        self.quit.store(true, Ordering::Relaxed);
        {
            let _state = self.shared.run_state.lock();
            self.shared.run_state_changed.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the display loop reports.
pub enum DisplayEvent {
    Shown(Arc<Frame>),
    Underrun,
    /// Frames shown per second, measured over about a second.
    Fps(f64),
}

/// The display loop, without a window: pops `ring` on deadlines until it closes or `stop`
/// disconnects. `target_fps` is read every frame, so it acts live; `wait_while_paused`
/// blocks while the walk is paused and returns `false` when the display should end.
pub fn run_display(
    ring: &RingBuffer,
    stop: &Receiver<()>,
    target_fps: impl Fn() -> f64,
    wait_while_paused: impl Fn() -> bool,
    mut on_event: impl FnMut(DisplayEvent),
) {
    let mut deadline = Instant::now();
    let mut window_start = Instant::now();
    let mut shown_in_window = 0u32;
    loop {
        if !wait_while_paused() {
            return;
        }
        let period = Duration::from_secs_f64(1.0 / target_fps().clamp(1.0, 240.0));
        deadline += period;
        let now = Instant::now();
        if deadline + period < now {
            // Fell behind by more than a frame (a stall, a pause): restart the clock
            // instead of rushing to catch up.
            deadline = now + period;
        }
        match ring.pop_by(deadline) {
            Popped::Frame(frame) => {
                if wait_until(stop, deadline) {
                    return;
                }
                on_event(DisplayEvent::Shown(frame));
                shown_in_window += 1;
            }
            Popped::Late => on_event(DisplayEvent::Underrun),
            Popped::Closed => return,
        }
        let elapsed = window_start.elapsed();
        if elapsed >= Duration::from_secs(1) {
            on_event(DisplayEvent::Fps(
                shown_in_window as f64 / elapsed.as_secs_f64(),
            ));
            window_start = Instant::now();
            shown_in_window = 0;
        }
    }
}

/// Waits until `deadline`; `true` if the pipeline stopped meanwhile.
fn wait_until(stop: &Receiver<()>, deadline: Instant) -> bool {
    matches!(
        stop.recv_deadline(deadline),
        Err(RecvTimeoutError::Disconnected)
    )
}
