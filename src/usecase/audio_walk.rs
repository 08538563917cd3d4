//! A walk timed by a sound track: the [`Timeline`] a [`Soundtrack`] gives a render, one frame
//! per video frame of the sound's length, each frame's place on the walk set by the onsets
//! before it. A pure function of the sound, the settings and the frame rate, so any range of
//! frames can be made alone and comes out the same.

use crate::audio::Soundtrack;
use crate::pipeline::{Inbetweens, Settings};
use crate::walk::{LoopMode, Timeline};

/// Why a sound track cannot time a render, in words a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum AudioWalkError {
    #[error("the sound track sets the walk's length: laps must be 1 with a sound track, not {0}")]
    Laps(u64),
    #[error(
        "with a sound track every frame is decoded at its own place on the walk (in-betweens \
         would smear the beats): in-betweens must be 0"
    )]
    Inbetweens,
    #[error(
        "with a sound track every frame has its own place, not one of --steps-between's: \
         --diffuse {0} needs a walk by steps (no sound track)"
    )]
    Diffuse(usize),
    #[error(transparent)]
    Audio(#[from] crate::audio::AudioError),
    #[error("the sound track's timeline: {0}")]
    Timeline(#[from] crate::walk::TimelineError),
}

/// The timeline `soundtrack` gives a walk with `settings` at `fps`: as many frames as the
/// sound lasts (`round(seconds x fps)`), a walk played once going from the first keyframe
/// to the last, a loop (endless, ping-pong) making one lap that ends one advance before its
/// start, as the sound may loop too. Refuses laps other than 1, in-betweens (every frame
/// is its own decode) and diffused in-betweens (they sit on the steps' grid).
pub fn audio_timeline(
    soundtrack: &Soundtrack,
    settings: &Settings,
    laps: u64,
    fps: u32,
) -> Result<Timeline, AudioWalkError> {
    if laps != 1 {
        return Err(AudioWalkError::Laps(laps));
    }
    if settings.inbetweens != Inbetweens::Fixed(0) {
        return Err(AudioWalkError::Inbetweens);
    }
    if settings.diffuse > 0 {
        return Err(AudioWalkError::Diffuse(settings.diffuse));
    }
    let closed = settings.walk.loop_mode != LoopMode::Once;
    let progress = soundtrack.walk_progress(fps, closed)?;
    Ok(Timeline::new(progress)?)
}
