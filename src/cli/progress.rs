//! Progress on the terminal for long command-line work.

use std::time::Duration;

use crate::pipeline::StatsSnapshot;
use crate::usecase::{RenderHeader, RenderProgress};

/// An indicatif spinner counting the frames a render writes, with the pipeline's figures.
pub struct RenderBar {
    bar: indicatif::ProgressBar,
}

impl Default for RenderBar {
    fn default() -> Self {
        Self::new()
    }
}

impl RenderBar {
    /// A spinner on stderr, ticking on its own while keyframes are sampled.
    pub fn new() -> Self {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {pos} frames {elapsed} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Self { bar }
    }

    /// Clears the bar (the summary line follows).
    pub fn finish(self) {
        self.bar.finish_and_clear();
    }
}

impl RenderProgress for RenderBar {
    fn started(&mut self, header: &RenderHeader) {
        self.bar.suspend(|| eprintln!("dreamwalk: {header}"));
    }

    fn waiting(&mut self, stats: &StatsSnapshot) {
        self.bar.set_message(stats.phase.clone());
    }

    fn frame_written(&mut self, written: u64, stats: &StatsSnapshot) {
        self.bar.set_position(written);
        self.bar.set_message(format!(
            "decode {:.0} ms | buffer {}/{} | {}",
            stats.decode_ms, stats.buffer_fill, stats.buffer_capacity, stats.phase
        ));
    }
}
