//! A span of the output stream: frames `first..=last` of a render, made on their own and
//! byte-identical to the same frames of the whole render (`render --frames`, so a long walk
//! can be split over many machines).
//!
//! A frame depends only on the settings, the keyframes and its index: with `k` in-betweens,
//! the walk's decoded frame `s` is stream frame `s * (k + 1)`, and the `k` frames before it
//! blend from decoded frame `s - 1` toward it. So a span starts decoding at the decoded frame
//! its first frame is or follows, numbers the stream from there, drops the frames before
//! `first` (an in-between group cut in two is still blended from the same two frames) and
//! ends after `last`. The in-between count must be fixed (`auto` depends on timing).

use candle_core::{DType, Device, Tensor};

use crate::walk::{Timeline, Walk, WalkSettings};

/// Frames `first..=last` of the output stream (0-based), with the fixed in-between count
/// they were counted with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameSpan {
    pub first: u64,
    pub last: u64,
    /// In-betweens per pair of decoded frames: the pipeline's settings must say the same
    /// (`Inbetweens::Fixed(inbetweens)`).
    pub inbetweens: usize,
}

/// Where a stream frame falls with respect to a span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Place {
    /// Before the span's first frame: made only to be dropped (a decoded frame the next
    /// in-betweens blend from), never sent on.
    Before,
    Inside,
    /// After its last frame: the span is done.
    After,
}

impl FrameSpan {
    /// Stream frames per decoded frame: itself and the in-betweens before it.
    fn period(&self) -> u64 {
        self.inbetweens as u64 + 1
    }

    /// The walk's sequence index (the decoded frame) the span's first frame is, or whose
    /// in-betweens toward the next one it is among: where decoding starts.
    pub fn first_decoded(&self) -> u64 {
        self.first / self.period()
    }

    /// The last decoded frame the span needs: its last frame, or the one its last frame's
    /// in-betweens blend toward.
    pub fn last_decoded(&self) -> u64 {
        self.last.div_ceil(self.period())
    }

    /// The stream index of [`Self::first_decoded`]: where the in-between stage starts
    /// numbering.
    pub fn first_counted(&self) -> u64 {
        self.first_decoded() * self.period()
    }

    /// How many frames the span holds.
    pub fn len(&self) -> u64 {
        self.last - self.first + 1
    }

    /// Never: a span holds at least its first frame (clippy wants the pair of `len`).
    pub fn is_empty(&self) -> bool {
        false
    }

    pub(super) fn place(span: Option<&FrameSpan>, index: u64) -> Place {
        match span {
            Some(span) if index < span.first => Place::Before,
            Some(span) if index > span.last => Place::After,
            _ => Place::Inside,
        }
    }
}

/// Frames in the output stream of a whole render: a walk over `keyframes` keyframes with
/// `walk` settings (timed by `timeline`, if any), `laps` laps, `inbetweens` in-betweens per
/// pair of decoded frames. The walk's decoded frames with `inbetweens` between each two, and
/// after the last of an endless loop's the in-betweens that lead back to its first.
pub fn stream_frames(
    keyframes: usize,
    walk: WalkSettings,
    timeline: Option<&Timeline>,
    laps: u64,
    inbetweens: usize,
) -> u64 {
    // The walk's length depends on how many keyframes it has, not on their latents: count
    // with one-element stand-ins, through the very code the decode stage walks with.
    let stand_ins = (0..keyframes.max(1))
        .map(|_| Tensor::zeros(1, DType::U8, &Device::Cpu))
        .collect::<Result<Vec<_>, _>>()
        .expect("a one-byte tensor on the CPU");
    let walk = Walk::new(stand_ins, walk).with_timeline(timeline.cloned());
    let decoded = walk.frames_in_laps(laps);
    if decoded == 0 {
        return 0;
    }
    let period = inbetweens as u64 + 1;
    if walk.closes_loop() && inbetweens > 0 {
        decoded.saturating_mul(period)
    } else {
        (decoded - 1).saturating_mul(period).saturating_add(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::walk::LoopMode;

    fn span(first: u64, last: u64, inbetweens: usize) -> FrameSpan {
        FrameSpan {
            first,
            last,
            inbetweens,
        }
    }

    #[test]
    fn a_span_decodes_from_the_frame_it_is_or_follows() {
        // k = 2: decoded frames at 0, 3, 6, 9; 4 and 5 blend from 3 toward 6.
        let s = span(4, 7, 2);
        assert_eq!((s.first_decoded(), s.last_decoded()), (1, 3));
        assert_eq!(s.first_counted(), 3);
        let s = span(6, 6, 2);
        assert_eq!((s.first_decoded(), s.last_decoded()), (2, 2));
        assert_eq!(s.first_counted(), 6);
        assert_eq!(s.len(), 1);
        assert_eq!(FrameSpan::place(Some(&s), 5), Place::Before);
        assert_eq!(FrameSpan::place(Some(&s), 6), Place::Inside);
        assert_eq!(FrameSpan::place(Some(&s), 7), Place::After);
        assert_eq!(FrameSpan::place(None, 7), Place::Inside);
    }

    #[test]
    fn stream_frames_counts_decoded_frames_and_their_inbetweens() {
        let walk = |loop_mode| WalkSettings {
            steps_between: 3,
            loop_mode,
            ..Default::default()
        };
        // Once: 2 keyframes, 3 steps: 4 decoded frames, 3 gaps of 2.
        assert_eq!(stream_frames(2, walk(LoopMode::Once), None, 1, 2), 10);
        // Ping-pong, 2 laps: 0 1 2 3 2 1 0 1 2 3 2 1 0 = 13 decoded frames.
        assert_eq!(stream_frames(2, walk(LoopMode::PingPong), None, 2, 1), 25);
        // Endless: 6 positions a lap, and the in-betweens back to the first close it.
        assert_eq!(stream_frames(2, walk(LoopMode::Endless), None, 1, 2), 18);
        assert_eq!(stream_frames(2, walk(LoopMode::Endless), None, 1, 0), 6);
    }
}
