//! The desktop viewer (eframe + egui on wgpu): prompts, Play, live sliders, the picture
//! upscaled on the GPU, a heads-up display, and recording.
//!
//! The window holds no pipeline logic: [`Session`] runs the stages, [`Controls`] turns the
//! widgets' values into pipeline settings, [`present`] draws frames. Frames reach the
//! screen through the display thread (deadline-paced at the target fps), which asks egui
//! for a repaint after each new frame.
//!
//! Each frame, [`ViewerApp::show`] draws the panels (`toolbar`, `controls_panel` with
//! `prompts_panel` and `record_panel`); they edit only the form they show and return
//! what the user asked for as [`Command`]s, which [`ViewerApp::run_command`] then carries
//! out in one place. Then the picture (`picture`, with its heads-up display from `hud`)
//! is drawn, changed controls reach the running walk (`apply`), and a planned
//! `screenshot` is taken. The model loads in the background (`loading`).

mod apply;
mod command;
pub mod controls;
mod controls_panel;
mod form;
mod hud;
mod interrupt;
pub mod lap_gate;
mod loading;
mod notice;
pub mod osc;
mod picture;
pub mod present;
mod prompts_panel;
mod record_panel;
mod record_path;
mod screenshot;
pub mod session;
mod toolbar;
mod window;

use std::path::PathBuf;
use std::time::Duration;

use crate::gpu::GpuDecode;
use crate::usecase::ModelSource;
use notice::Notice;

pub use command::Command;
pub use controls::{keyframe_name, Controls, OutputSize};
pub use lap_gate::LapGate;
pub use loading::GpuTarget;
pub use osc::{OscError, OscListener, OscStats};
pub use record_path::default_record_path;
pub use session::{PlayState, RecordingStatus, Session};

/// How the viewer starts.
#[derive(Clone, Debug, Default)]
pub struct ViewerOptions {
    /// The model to load first (none: the built-in demo model).
    pub model: ModelSource,
    /// Start playing as soon as the model is loaded.
    pub autoplay: bool,
    /// Record from the start to this file (with `autoplay`).
    pub record: Option<PathBuf>,
    /// Save a PNG of the window this long after the first frame, then close
    /// (for the screenshot test). A JSON beside it gives the picture's rectangle.
    pub screenshot: Option<(PathBuf, Duration)>,
    /// Where TAESD decodes: see [`GpuDecode`].
    pub gpu_decode: GpuDecode,
    /// Where keyframes are sampled (on the same device): see [`GpuDecode::wants`].
    pub gpu_sampling: GpuDecode,
    /// What the GPU sampler keeps its weights in.
    pub gpu_precision: crate::gpu::sample::SamplePrecision,
    /// The device to decode on. [`ViewerApp::new`] fills it from eframe's wgpu device;
    /// tests may give a headless one.
    pub gpu: Option<GpuTarget>,
    /// Decoded frame size (width, height) instead of the model's default; checked against
    /// the model once it loads.
    pub source: Option<(u32, u32)>,
    /// Listen for OSC messages on this address ([`run`] binds it before the window opens;
    /// see [`osc`] for the addresses).
    pub osc: Option<std::net::SocketAddr>,
}

/// The eframe application: the window's state. Drawing is in [`ViewerApp::show`], actions in
/// [`ViewerApp::run_command`].
pub struct ViewerApp {
    /// The model: loading, failed, or ready with its [`Session`].
    model: loading::ModelState,
    /// How models load (on which GPU the TAESD decoder goes).
    loader: loading::Loader,
    /// What the current model was loaded from (LoRAs and their strengths included).
    model_source: ModelSource,
    /// What the panels edit.
    form: form::Form,
    /// `--source`: the decoded size instead of the model's default.
    source: Option<(u32, u32)>,
    /// What happened last, under the toolbar.
    notice: Option<Notice>,
    /// Fullscreen, panels hidden.
    fullscreen: bool,
    /// Play once the first model is loaded.
    autoplay: bool,
    /// Record to this file once autoplay has started the walk.
    autorecord: Option<PathBuf>,
    /// The picture, its presenter and its heads-up display.
    picture: picture::Picture,
    /// A screenshot to take, then close (the screenshot test).
    screenshot: Option<screenshot::Screenshot>,
    /// The OSC listener, with `--osc`.
    osc: Option<OscListener>,
    /// OSC packets and messages dropped that the notice has told of.
    osc_dropped_told: u64,
}

/// eframe's wgpu setup, its device also asking for the optional features the adapter has
/// (`gpu::optional_features`: f16 for the sampler on eframe's device).
fn wgpu_options() -> egui_wgpu::WgpuConfiguration {
    let mut options = egui_wgpu::WgpuConfiguration::default();
    if let egui_wgpu::WgpuSetup::CreateNew(create) = &mut options.wgpu_setup {
        let base = std::sync::Arc::clone(&create.device_descriptor);
        create.device_descriptor = std::sync::Arc::new(move |adapter| {
            let mut descriptor = base(adapter);
            descriptor.required_features |= crate::gpu::optional_features(adapter);
            descriptor
        });
    }
    options
}

/// The window icon (see `assets/README.md`).
const ICON_PNG: &[u8] = include_bytes!("../../assets/icon.png");

/// Opens the window and runs until it is closed (its close button, SIGINT or SIGTERM).
pub fn run(options: ViewerOptions) -> anyhow::Result<()> {
    // A port in use is refused before the window opens or the model loads.
    let mut osc = options.osc.map(OscListener::bind).transpose()?;
    let mut viewport = egui::ViewportBuilder::default()
        .with_title("dreamwalk")
        .with_inner_size([1480.0, 860.0])
        .with_min_inner_size([720.0, 480.0]);
    match eframe::icon_data::from_png_bytes(ICON_PNG) {
        Ok(icon) => viewport = viewport.with_icon(icon),
        // A window without its icon still works: say so, do not stop.
        Err(e) => tracing::warn!("window icon: {e}"),
    }
    let native = eframe::NativeOptions {
        viewport,
        renderer: eframe::Renderer::Wgpu,
        wgpu_options: wgpu_options(),
        ..Default::default()
    };
    // Where `--screenshot` leaves why it saved nothing: the exit status says so.
    let failure = std::sync::Arc::new(parking_lot::Mutex::new(None::<String>));
    let slot = std::sync::Arc::clone(&failure);
    let watcher = std::sync::Arc::new(parking_lot::Mutex::new(None));
    let watcher_slot = std::sync::Arc::clone(&watcher);
    let ran = eframe::run_native(
        "dreamwalk",
        native,
        Box::new(move |cc| {
            match interrupt::CloseOnSignal::watch(cc.egui_ctx.clone()) {
                Ok(watching) => *watcher_slot.lock() = Some(watching),
                Err(e) => tracing::warn!("Ctrl-C will not close the window cleanly: {e}"),
            }
            let mut app = ViewerApp::new(cc, options);
            if let Some(listener) = osc.take() {
                app = app.with_osc(listener);
            }
            app.report_screenshot_failure_to(slot);
            Ok(Box::new(app))
        }),
    );
    // The window is gone: stop watching for signals.
    drop(watcher.lock().take());
    ran.map_err(|e| {
        anyhow::anyhow!(
            "cannot open the window: {e}. Without a display, use `dreamwalk render` \
             (headless); without a GPU, install Mesa's software one (Debian: \
             mesa-vulkan-drivers libvulkan1)"
        )
    })?;
    let reason = failure.lock().take();
    match reason {
        Some(reason) => anyhow::bail!(reason),
        None => Ok(()),
    }
}

impl eframe::App for ViewerApp {
    fn ui(&mut self, ui: &mut egui::Ui, frame: &mut eframe::Frame) {
        let render_state = frame.wgpu_render_state().cloned();
        self.show(ui, render_state.as_ref());
    }

    fn on_exit(&mut self) {
        // Finish a recording and join every thread before the window goes.
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_window_icon_decodes() {
        let icon = eframe::icon_data::from_png_bytes(super::ICON_PNG).expect("icon PNG");
        assert_eq!((icon.width, icon.height), (64, 64));
    }
}
