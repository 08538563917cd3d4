//! Progress on the terminal for long command-line work (a render's frames, an upscale's UNet
//! calls): a spinner or bar when stderr is a terminal, plain lines every few seconds when it
//! is not (a log file, CI).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use crate::model::tiled::TiledStep;
use crate::pipeline::StatsSnapshot;
use crate::usecase::{RenderHeader, RenderProgress, UpscaleHeader, UpscaleProgress};

/// How often the plain display writes a line.
const PLAIN_INTERVAL: Duration = Duration::from_secs(5);

/// Counts the frames a render writes, with the pipeline's figures: an indicatif spinner on a
/// terminal, else a plain line every [`PLAIN_INTERVAL`].
pub struct RenderBar {
    display: Display,
}

enum Display {
    /// The bar, and whether it shows sampling steps (a bar with an estimate) rather than
    /// frames (a spinner with a count).
    Spinner(indicatif::ProgressBar, bool),
    Lines {
        started: Instant,
        last_line: Option<Instant>,
    },
}

impl Default for RenderBar {
    fn default() -> Self {
        Self::new()
    }
}

impl RenderBar {
    /// A spinner on stderr when it is a terminal (ticking on its own while keyframes are
    /// sampled), plain lines otherwise.
    pub fn new() -> Self {
        if std::io::stderr().is_terminal() {
            Self::spinner()
        } else {
            Self::lines()
        }
    }

    fn spinner() -> Self {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(frames_style());
        bar.enable_steady_tick(Duration::from_millis(200));
        Self {
            display: Display::Spinner(bar, false),
        }
    }

    /// Plain lines on stderr, whatever it is.
    pub fn lines() -> Self {
        Self {
            display: Display::Lines {
                started: Instant::now(),
                last_line: None,
            },
        }
    }

    /// Clears the spinner (the summary line follows).
    pub fn finish(self) {
        if let Display::Spinner(bar, _) = self.display {
            bar.finish_and_clear();
        }
    }

    /// A plain line when one is due.
    fn line(&mut self, text: impl FnOnce() -> String) {
        if let Display::Lines { started, last_line } = &mut self.display {
            let now = Instant::now();
            let due = last_line.is_none_or(|last| now - last >= PLAIN_INTERVAL);
            // The first line waits one interval too: short renders print only their summary.
            if due && now - *started >= PLAIN_INTERVAL {
                *last_line = Some(now);
                eprintln!(
                    "dreamwalk: {:>6.1} s | {}",
                    (now - *started).as_secs_f64(),
                    text()
                );
            }
        }
    }
}

impl RenderProgress for RenderBar {
    fn started(&mut self, header: &RenderHeader) {
        match &self.display {
            Display::Spinner(bar, _) => bar.suspend(|| eprintln!("dreamwalk: {header}")),
            Display::Lines { .. } => eprintln!("dreamwalk: {header}"),
        }
    }

    fn waiting(&mut self, stats: &StatsSnapshot) {
        match &mut self.display {
            Display::Spinner(bar, sampling) => {
                if let Some((done, total)) = stats.endpoint_progress {
                    if !*sampling {
                        bar.set_style(sampling_style());
                        bar.reset_eta();
                        *sampling = true;
                    }
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                }
                bar.set_message(stats.phase.clone());
            }
            Display::Lines { .. } => self.line(|| stats.phase.clone()),
        }
    }

    fn frame_written(&mut self, written: u64, stats: &StatsSnapshot) {
        let figures = || {
            format!(
                "decode {:.0} ms | buffer {}/{} | {}",
                stats.decode_ms, stats.buffer_fill, stats.buffer_capacity, stats.phase
            )
        };
        match &mut self.display {
            Display::Spinner(bar, sampling) => {
                if std::mem::take(sampling) {
                    bar.set_style(frames_style());
                    bar.unset_length();
                }
                bar.set_position(written);
                bar.set_message(figures());
            }
            Display::Lines { .. } => self.line(|| format!("{written} frames | {}", figures())),
        }
    }
}

/// An upscale's UNet tile calls: an indicatif bar with the time left on a terminal, else a
/// plain line every [`PLAIN_INTERVAL`].
pub struct UpscaleBar {
    display: UpscaleDisplay,
}

enum UpscaleDisplay {
    Bar(indicatif::ProgressBar),
    Lines {
        started: Instant,
        last_line: Option<Instant>,
    },
}

impl Default for UpscaleBar {
    fn default() -> Self {
        Self::new()
    }
}

impl UpscaleBar {
    /// A bar on stderr when it is a terminal, plain lines otherwise.
    pub fn new() -> Self {
        let display = if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} UNet tile calls, {elapsed} (about {eta} left) | {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            UpscaleDisplay::Bar(bar)
        } else {
            UpscaleDisplay::Lines {
                started: Instant::now(),
                last_line: None,
            }
        };
        Self { display }
    }

    /// Clears the bar (the summary line follows).
    pub fn finish(self) {
        if let UpscaleDisplay::Bar(bar) = self.display {
            bar.finish_and_clear();
        }
    }
}

/// Each line of `text` on stderr after "dreamwalk: ".
fn print_lines(text: impl std::fmt::Display) {
    for line in text.to_string().lines() {
        eprintln!("dreamwalk: {line}");
    }
}

/// "step 3/25, 6 of 9 tiles refining, 4 calls skipped".
fn step_message(step: &TiledStep) -> String {
    let tiles = step.calls_total / step.steps.max(1);
    format!(
        "step {}/{}, {} of {tiles} tiles refining, {} calls skipped",
        step.step, step.steps, step.tiles_refining, step.calls_skipped
    )
}

impl UpscaleProgress for UpscaleBar {
    fn started(&mut self, header: &UpscaleHeader) {
        match &self.display {
            UpscaleDisplay::Bar(bar) => {
                bar.suspend(|| print_lines(header));
                bar.set_length((header.tiles * header.steps) as u64);
                bar.reset_eta();
            }
            UpscaleDisplay::Lines { .. } => print_lines(header),
        }
    }

    fn stepped(&mut self, step: &TiledStep) {
        match &mut self.display {
            UpscaleDisplay::Bar(bar) => {
                bar.set_position((step.calls_run + step.calls_skipped) as u64);
                bar.set_message(step_message(step));
            }
            UpscaleDisplay::Lines { started, last_line } => {
                let now = Instant::now();
                let due = last_line.is_none_or(|last| now - last >= PLAIN_INTERVAL);
                if due && now - *started >= PLAIN_INTERVAL {
                    *last_line = Some(now);
                    eprintln!(
                        "dreamwalk: {:>6.1} s | {}/{} UNet tile calls | {}",
                        (now - *started).as_secs_f64(),
                        step.calls_run + step.calls_skipped,
                        step.calls_total,
                        step_message(step)
                    );
                }
            }
        }
    }
}

/// The frame counter: a spinner, the frames written, the time, the pipeline's figures.
fn frames_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template("{spinner} {pos} frames {elapsed} {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner())
}

/// Keyframe sampling: a bar of the UNet steps over all keyframes, with the time left.
fn sampling_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(
        "{bar:30} {pos}/{len} sampler steps, {elapsed} (about {eta} left) | {msg}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
}
