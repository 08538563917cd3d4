//! The bounded, ordered ring buffer between the pipeline and its consumer.
//!
//! Producers (the upscale workers) insert frames by index in any order; the consumer takes
//! them strictly in index order with no gap. A frame with index `i` is admitted only while
//! `i < next_to_pop + capacity`, so memory is bounded by `capacity` frames and a producer
//! that runs ahead waits (back-pressure). Out-of-order completion needs no separate join
//! thread: the slot of index `i` is `i % capacity`.
//!
//! No deadlock with a FIFO job queue: the frame the consumer waits for was taken by a worker
//! before any later one, and its index always fits, so that worker can insert it.

use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use crate::frame::FrameImage;

/// How the consumer of a ring takes frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingPolicy {
    /// The consumer waits for every frame as long as it takes; producers block when full.
    /// Nothing is ever dropped (recording, `render`).
    Record,
    /// The consumer pops on a deadline; when the next frame is late it shows the last one
    /// again and counts an underrun. It never reorders or skips (the viewer).
    Display,
}

/// Where a frame comes from on the walk.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct FrameSource {
    /// Index of the decoded frame this one is, or follows (for in-betweens).
    pub decoded_index: u64,
    /// Keyframe pair `(segment, segment + 1)`.
    pub segment: usize,
    /// Eased-before time in the pair of the decoded frame, in [0, 1].
    pub t: f64,
    /// `Some((j, k))` for in-between `j` of `k` (blending toward `decoded_index`).
    pub inbetween: Option<(usize, usize)>,
    /// Which set of endpoints the frame was walked from (bumped when they are regenerated).
    pub generation: u64,
    /// The frame starts a lap of an endless loop (the first keyframe; never an in-between):
    /// a recording of the loop starts and ends on such a frame.
    pub starts_lap: bool,
}

/// One frame of the output stream.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Position in the output stream: 0, 1, 2, ... with no gap.
    pub index: u64,
    pub image: FrameImage,
    pub source: FrameSource,
}

impl Popped {
    pub fn is_late(&self) -> bool {
        matches!(self, Popped::Late)
    }
}

/// The ring was closed (shutdown): no more frames will come or be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the frame buffer was closed")]
pub struct Closed;

/// What a deadline pop found.
#[derive(Debug)]
pub enum Popped {
    /// The next frame in order.
    Frame(Arc<Frame>),
    /// The deadline passed before the next frame was ready.
    Late,
    /// Closed and drained.
    Closed,
}

struct State {
    slots: Vec<Option<Arc<Frame>>>,
    next_to_pop: u64,
    /// Number of filled slots.
    filled: usize,
    closed: bool,
}

/// A bounded ring of frames, ordered by `Frame::index`.
pub struct RingBuffer {
    state: Mutex<State>,
    /// Signalled when the consumer frees a slot (producers wait on it).
    space: Condvar,
    /// Signalled when a frame lands (the consumer waits on it).
    landed: Condvar,
    capacity: usize,
    policy: RingPolicy,
}

impl RingBuffer {
    /// A ring holding at most `capacity` (≥ 1) frames, starting at index `first_index`.
    pub fn new(capacity: usize, policy: RingPolicy, first_index: u64) -> Self {
        let capacity = capacity.max(1);
        Self {
            state: Mutex::new(State {
                slots: vec![None; capacity],
                next_to_pop: first_index,
                filled: 0,
                closed: false,
            }),
            space: Condvar::new(),
            landed: Condvar::new(),
            capacity,
            policy,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn policy(&self) -> RingPolicy {
        self.policy
    }

    /// Frames waiting in the ring.
    pub fn fill(&self) -> usize {
        self.state.lock().filled
    }

    /// Inserts a frame, waiting while its index is `capacity` or more ahead of the consumer.
    pub fn insert(&self, frame: Frame) -> Result<(), Closed> {
        let index = frame.index;
        let mut state = self.state.lock();
        loop {
            if state.closed {
                return Err(Closed);
            }
            if index < state.next_to_pop + self.capacity as u64 {
                break;
            }
            self.space.wait(&mut state);
        }
        assert!(
            index >= state.next_to_pop,
            "frame {index} inserted after the consumer passed it"
        );
        let slot = (index % self.capacity as u64) as usize;
        assert!(state.slots[slot].is_none(), "frame {index} inserted twice");
        state.slots[slot] = Some(Arc::new(frame));
        state.filled += 1;
        // Only the frame the consumer waits for can wake it, but notify cheaply anyway.
        self.landed.notify_all();
        Ok(())
    }

    fn take_next(&self, state: &mut State) -> Option<Arc<Frame>> {
        let slot = (state.next_to_pop % self.capacity as u64) as usize;
        let frame = state.slots[slot].take()?;
        state.next_to_pop += 1;
        state.filled -= 1;
        self.space.notify_all();
        Some(frame)
    }

    /// Takes the next frame, waiting as long as it takes (the `Record` policy).
    /// `None` once closed and the next frame is not there.
    pub fn pop(&self) -> Option<Arc<Frame>> {
        let mut state = self.state.lock();
        loop {
            if let Some(frame) = self.take_next(&mut state) {
                return Some(frame);
            }
            if state.closed {
                return None;
            }
            self.landed.wait(&mut state);
        }
    }

    /// Takes the next frame if it arrives before `deadline` (the `Display` policy).
    pub fn pop_by(&self, deadline: Instant) -> Popped {
        let mut state = self.state.lock();
        loop {
            if let Some(frame) = self.take_next(&mut state) {
                return Popped::Frame(frame);
            }
            if state.closed {
                return Popped::Closed;
            }
            if self.landed.wait_until(&mut state, deadline).timed_out() {
                return match self.take_next(&mut state) {
                    Some(frame) => Popped::Frame(frame),
                    None => Popped::Late,
                };
            }
        }
    }

    /// Wakes every waiting producer and consumer; later inserts fail, pops drain what is
    /// left in order.
    pub fn close(&self) {
        self.state.lock().closed = true;
        self.space.notify_all();
        self.landed.notify_all();
    }

    pub fn is_closed(&self) -> bool {
        self.state.lock().closed
    }
}
