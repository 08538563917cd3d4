//! Which shown frames a recording of an endless loop takes: whole laps, so the file loops
//! seamlessly. It starts on the frame that begins a lap (the first keyframe) and, once asked
//! to end, goes on to the end of that lap: its last frame is one step before the first, as
//! `render --loop endless` makes them. Other walks are recorded from the next frame shown to
//! the last, as they come.

/// Where a recording stands; the display thread's tap asks [`LapGate::admit`] for each frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LapGate {
    /// An endless loop's recording waits for the frame that starts a lap.
    WaitingForLap,
    /// Every frame shown goes in.
    Recording,
    /// Asked to end: frames go in until the next lap starts (that frame stays out).
    FinishingLap,
    /// The last frame is in; the recording is ready to be finished.
    Done,
}

impl LapGate {
    /// The state a recording starts in: waiting for a lap when the walk is an endless loop.
    pub fn start(endless_loop: bool) -> Self {
        if endless_loop {
            LapGate::WaitingForLap
        } else {
            LapGate::Recording
        }
    }

    /// Whether the frame shown next goes into the file; `starts_lap` says whether it begins a
    /// lap of an endless loop. Moves on from waiting and finishing at lap starts.
    pub fn admit(&mut self, starts_lap: bool) -> bool {
        match (*self, starts_lap) {
            (LapGate::WaitingForLap, true) => {
                *self = LapGate::Recording;
                true
            }
            (LapGate::Recording, _) | (LapGate::FinishingLap, false) => true,
            (LapGate::FinishingLap, true) => {
                *self = LapGate::Done;
                false
            }
            (LapGate::WaitingForLap, false) | (LapGate::Done, _) => false,
        }
    }

    /// Asked to end: an endless loop's recording under way finishes its lap (`true`: it ends
    /// later, at [`LapGate::Done`]); anything else can end at once (`false`).
    pub fn finish_lap(&mut self, endless_loop: bool) -> bool {
        if endless_loop && *self == LapGate::Recording {
            *self = LapGate::FinishingLap;
            true
        } else {
            false
        }
    }

    /// The walk stopped being an endless loop (its settings changed): no lap start will
    /// come, so a recording waiting for one starts now, and one finishing its lap is done.
    pub fn loop_left(&mut self) {
        *self = match *self {
            LapGate::WaitingForLap => LapGate::Recording,
            LapGate::FinishingLap => LapGate::Done,
            other => other,
        };
    }
}
