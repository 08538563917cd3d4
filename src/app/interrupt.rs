//! SIGINT (Ctrl-C in the terminal that started the viewer) and SIGTERM close the window as
//! its close button does: a recording is finalized and every thread joined on the way out.
//! A second signal ends the process at once (128 + its number).

use std::thread::JoinHandle;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};

/// Watches for SIGINT and SIGTERM while the window is open.
pub(super) struct CloseOnSignal {
    handle: Handle,
    thread: Option<JoinHandle<()>>,
}

impl CloseOnSignal {
    /// Starts watching; a signal closes the window that `ctx` draws.
    pub fn watch(ctx: egui::Context) -> std::io::Result<Self> {
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        let handle = signals.handle();
        let thread = std::thread::Builder::new()
            .name("close-on-signal".into())
            .spawn(move || {
                let mut seen = false;
                // Ends when the handle is closed (the window is gone).
                for signal in signals.forever() {
                    if seen {
                        std::process::exit(128 + signal);
                    }
                    seen = true;
                    tracing::info!("signal {signal}: closing the window");
                    ctx.send_viewport_cmd(egui::ViewportCommand::Close);
                    ctx.request_repaint();
                }
            })?;
        Ok(Self {
            handle,
            thread: Some(thread),
        })
    }
}

impl Drop for CloseOnSignal {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
