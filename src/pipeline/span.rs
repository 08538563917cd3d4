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

use std::collections::BTreeSet;

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
    let walk = stand_in_walk(keyframes, walk, timeline);
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

/// A walk over `keyframes` one-element stand-ins: its length and positions depend on how
/// many keyframes it has, not on their latents, so they are counted through the very code the
/// decode stage walks with.
fn stand_in_walk(keyframes: usize, walk: WalkSettings, timeline: Option<&Timeline>) -> Walk {
    let stand_ins = (0..keyframes.max(1))
        .map(|_| Tensor::zeros(1, DType::U8, &Device::Cpu))
        .collect::<Result<Vec<_>, _>>()
        .expect("a one-byte tensor on the CPU");
    Walk::new(stand_ins, walk).with_timeline(timeline.cloned())
}

/// What a span's frames are made from: the keyframe pairs its decoded frames lie in (the
/// pairs whose diffused in-betweens it can show) and the keyframes of those pairs. A segment
/// of a long walk samples only these: on many machines, each samples its own few keyframes
/// instead of all of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanNeeds {
    /// Pair `s` is keyframes `s` and `s + 1` (wrapping for an endless loop's closing pair).
    pub pairs: BTreeSet<usize>,
    pub keyframes: BTreeSet<usize>,
}

impl FrameSpan {
    /// What this span needs of a walk over `keyframes` keyframes with `walk` settings
    /// (timed by `timeline`, if any): every decoded frame from [`Self::first_decoded`] to
    /// [`Self::last_decoded`] is placed on the path as the decode stage places it.
    pub fn needs(
        &self,
        keyframes: usize,
        walk: WalkSettings,
        timeline: Option<&Timeline>,
    ) -> SpanNeeds {
        let walk = stand_in_walk(keyframes, walk, timeline);
        let count = walk.keyframes().len();
        let mut needs = SpanNeeds {
            pairs: BTreeSet::new(),
            keyframes: BTreeSet::new(),
        };
        for sequence in self.first_decoded()..=self.last_decoded() {
            if needs.keyframes.len() == count {
                break; // all of them already
            }
            let Some(path_index) = walk.path_index_at(sequence) else {
                break; // past the end of a walk played once
            };
            let segment = walk.position(path_index).segment;
            needs.keyframes.insert(segment);
            if count > 1 {
                needs.pairs.insert(segment);
                needs.keyframes.insert((segment + 1) % count);
            }
        }
        needs
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
    fn a_span_needs_the_keyframes_of_the_pairs_its_decoded_frames_lie_in() {
        let walk = |loop_mode| WalkSettings {
            steps_between: 4,
            loop_mode,
            ..Default::default()
        };
        let needs = |s: FrameSpan, loop_mode| {
            let n = s.needs(3, walk(loop_mode), None);
            let list = |set: &BTreeSet<usize>| set.iter().copied().collect::<Vec<_>>();
            (list(&n.pairs), list(&n.keyframes))
        };
        // Once over 3 keyframes, 4 steps a pair: decoded frames 0..=8, pair 0 is 0..=3.
        assert_eq!(needs(span(0, 3, 0), LoopMode::Once), (vec![0], vec![0, 1]));
        assert_eq!(needs(span(4, 8, 0), LoopMode::Once), (vec![1], vec![1, 2]));
        assert_eq!(
            needs(span(3, 4, 0), LoopMode::Once),
            (vec![0, 1], vec![0, 1, 2])
        );
        // k = 1: stream frame 7 blends from decoded frame 3 toward 4 (pair 1's first).
        assert_eq!(
            needs(span(7, 7, 1), LoopMode::Once),
            (vec![0, 1], vec![0, 1, 2])
        );
        assert_eq!(needs(span(9, 12, 1), LoopMode::Once), (vec![1], vec![1, 2]));
        // Endless: 12 positions a lap; pair 2 closes the loop back to keyframe 0, and the
        // second lap starts on pair 0 again.
        assert_eq!(
            needs(span(9, 11, 0), LoopMode::Endless),
            (vec![2], vec![0, 2])
        );
        assert_eq!(
            needs(span(11, 12, 0), LoopMode::Endless),
            (vec![0, 2], vec![0, 1, 2])
        );
        // A single keyframe is a still: no pair.
        let still = span(0, 2, 0).needs(1, walk(LoopMode::Once), None);
        assert!(still.pairs.is_empty());
        assert_eq!(still.keyframes.into_iter().collect::<Vec<_>>(), vec![0]);
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
