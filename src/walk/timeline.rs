//! A timed walk's frames, placed in advance: how far along the walk each frame is.
//!
//! A walk timed by steps moves the same distance every frame. A [`Timeline`] instead says,
//! for every frame index, the share of the walk covered by then (an audio's onsets make one,
//! see `crate::audio`), so a frame's place stays a pure function of the settings, the
//! timeline and its index: any range of frames can be made on its own and comes out the same.

use std::sync::Arc;

/// Why a list of progress values is no [`Timeline`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TimelineError {
    #[error("a timeline needs at least one frame")]
    Empty,
    /// Frame `frame`'s value is not a number in [0, 1].
    #[error("frame {frame}: progress {value} is not between 0 and 1")]
    OutOfRange { frame: usize, value: f64 },
    /// Frame `frame` is behind the one before it.
    #[error("frame {frame}: progress {value} goes back (the frame before is at {before})")]
    GoesBack {
        frame: usize,
        value: f64,
        before: f64,
    },
}

/// Per frame, the share of the walk covered, in [0, 1], never going back: 0 is the first
/// keyframe; 1 the end of the walk (the last keyframe of a walk played once, the first again
/// after a lap of an endless one, back at the start after there-and-back for ping-pong).
/// Cheap to clone (the values are shared).
#[derive(Clone, PartialEq)]
pub struct Timeline {
    progress: Arc<[f64]>,
}

impl Timeline {
    /// Checks `progress` (one value per frame) and keeps it.
    pub fn new(progress: Vec<f64>) -> Result<Self, TimelineError> {
        if progress.is_empty() {
            return Err(TimelineError::Empty);
        }
        let mut before = 0.0;
        for (frame, &value) in progress.iter().enumerate() {
            if !(0.0..=1.0).contains(&value) {
                return Err(TimelineError::OutOfRange { frame, value });
            }
            if value < before {
                return Err(TimelineError::GoesBack {
                    frame,
                    value,
                    before,
                });
            }
            before = value;
        }
        Ok(Self {
            progress: progress.into(),
        })
    }

    /// Frames in the walk.
    pub fn len(&self) -> usize {
        self.progress.len()
    }

    /// Never true: [`Timeline::new`] refuses an empty one.
    pub fn is_empty(&self) -> bool {
        self.progress.is_empty()
    }

    /// The share of the walk covered at `frame` (the last value past the end).
    pub fn progress(&self, frame: usize) -> f64 {
        let last = self.progress.len() - 1;
        self.progress[frame.min(last)]
    }

    /// Every frame's value, in order.
    pub fn values(&self) -> &[f64] {
        &self.progress
    }
}

impl std::fmt::Debug for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Thousands of values say nothing in a log line.
        write!(f, "Timeline({} frames)", self.progress.len())
    }
}
