//! One segment of a render (`render --frames A..B`): which frames of the walk were asked
//! for ([`FrameRange`]), and the checks that turn them into the pipeline's [`FrameSpan`]
//! before any work: a fixed in-between count, a range inside the walk.

use crate::pipeline::{stream_frames, FrameSpan, Inbetweens, Settings};
use crate::walk::Timeline;

/// Output frames `first..=last` of a walk, 0-based as the whole render numbers them; `last`
/// `None` runs to the walk's end. Written `A..B` (both included) or `A..`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRange {
    pub first: u64,
    pub last: Option<u64>,
}

impl std::fmt::Display for FrameRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.last {
            Some(last) => write!(f, "{}..{last}", self.first),
            None => write!(f, "{}..", self.first),
        }
    }
}

impl std::str::FromStr for FrameRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "`{s}` is not a frame range: write FIRST..LAST (both included, 0-based, e.g. \
                 0..299) or FIRST.. (to the walk's end)"
            )
        };
        let (first, last) = s.trim().split_once("..").ok_or_else(bad)?;
        let last = last.strip_prefix('=').unwrap_or(last);
        let first = first.trim().parse::<u64>().map_err(|_| bad())?;
        let last = match last.trim() {
            "" => None,
            last => Some(last.parse::<u64>().map_err(|_| bad())?),
        };
        let range = FrameRange { first, last };
        range.check_order()?;
        Ok(range)
    }
}

impl FrameRange {
    /// Refuses a range whose last frame comes before its first.
    fn check_order(&self) -> Result<(), String> {
        match self.last {
            Some(last) if last < self.first => Err(format!(
                "frame range {self}: the last frame ({last}) comes before the first ({})",
                self.first
            )),
            _ => Ok(()),
        }
    }
}

/// Why a segment cannot be rendered as asked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SegmentError {
    #[error(
        "--frames {range} with --inbetween auto: auto in-betweens follow the decode time, so \
         a segment's frames would not match the whole render's; give a number (0 to 15)"
    )]
    AutoInbetweens { range: FrameRange },
    #[error("{0}")]
    Order(String),
    #[error(
        "--frames {range}: the walk has {total} frames (0..{}), so frame {first_past} is past \
         its end",
        total.saturating_sub(1)
    )]
    PastEnd {
        range: FrameRange,
        total: u64,
        first_past: u64,
    },
}

/// The span of the stream `range` asks for in a render of `settings` over `laps` laps
/// (timed by `timeline`, if any), checked: fixed in-betweens, first not after last, and
/// inside the walk (whose length the error gives).
pub fn segment_span(
    range: FrameRange,
    settings: &Settings,
    laps: u64,
    timeline: Option<&Timeline>,
) -> Result<FrameSpan, SegmentError> {
    let Inbetweens::Fixed(inbetweens) = settings.inbetweens else {
        return Err(SegmentError::AutoInbetweens { range });
    };
    range.check_order().map_err(SegmentError::Order)?;
    let total = stream_frames(
        settings.endpoints.keyframes.len(),
        settings.walk,
        timeline,
        laps,
        inbetweens,
    );
    let last = range.last.unwrap_or(total.saturating_sub(1));
    let past_end = |first_past| SegmentError::PastEnd {
        range,
        total,
        first_past,
    };
    if range.first >= total {
        return Err(past_end(range.first));
    }
    if last >= total {
        return Err(past_end(last));
    }
    Ok(FrameSpan {
        first: range.first,
        last,
        inbetweens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_ranges_parse_both_forms_and_refuse_the_rest() {
        let parse = |s: &str| s.parse::<FrameRange>();
        assert_eq!(
            parse("10..20"),
            Ok(FrameRange {
                first: 10,
                last: Some(20)
            })
        );
        assert_eq!(parse("10..=20"), parse("10..20"));
        assert_eq!(
            parse("7.."),
            Ok(FrameRange {
                first: 7,
                last: None
            })
        );
        for bad in ["", "5", "..5", "a..b", "-1..3", "3..x"] {
            assert!(
                parse(bad).unwrap_err().contains("not a frame range"),
                "{bad}"
            );
        }
        let reversed = parse("9..3").unwrap_err();
        assert!(
            reversed.contains("9..3") && reversed.contains("before"),
            "{reversed}"
        );
    }
}
