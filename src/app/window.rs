//! Building the [`ViewerApp`] and laying out one frame of the window: housekeeping, the
//! panels (whose [`Command`]s run once they are drawn), the picture, then the controls to
//! the walk and the screenshot.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::command::Command;
use super::controls::Controls;
use super::form::Form;
use super::loading::{GpuTarget, Loader, ModelState};
use super::picture::Picture;
use super::present::Presenter;
use super::screenshot::Screenshot;
use super::session::Session;
use super::{controls_panel, toolbar, ViewerApp, ViewerOptions};
use crate::upscale::UpscaleMode;

impl ViewerApp {
    /// Builds the app inside eframe (GPU presenter when eframe runs on wgpu).
    pub fn new(cc: &eframe::CreationContext<'_>, mut options: ViewerOptions) -> Self {
        if options.gpu.is_none() {
            options.gpu = cc
                .wgpu_render_state
                .as_ref()
                .map(GpuTarget::from_render_state);
        }
        let mut app = Self::headless(options);
        app.picture.presenter = Some(Presenter::new(cc.wgpu_render_state.as_ref()));
        app.fall_back_to_cpu_upscale();
        app
    }

    /// Builds the app without eframe (tests drive it with `egui_kittest`): frames are drawn
    /// as plain egui textures.
    pub fn headless(options: ViewerOptions) -> Self {
        let loader = Loader {
            gpu: options.gpu,
            gpu_decode: options.gpu_decode,
            gpu_sampling: options.gpu_sampling,
            gpu_precision: options.gpu_precision,
        };
        // Replaced by the model's own defaults once it is loaded.
        let controls = Controls::new(&crate::model::ModelDefaults {
            image_size: (1024, 576),
            steps: 20,
            guidance: 7.5,
        });
        Self {
            model: loader.start(options.model.clone()),
            loader,
            form: Form::new(controls, options.model.model.clone()),
            model_source: options.model,
            source: options.source,
            notice: None,
            fullscreen: false,
            autoplay: options.autoplay,
            autorecord: options.record,
            picture: Picture::default(),
            screenshot: options
                .screenshot
                .map(|(path, after)| Screenshot::new(path, after)),
            osc: None,
            osc_dropped_told: 0,
        }
    }

    /// Takes commands from `listener` (see [`super::osc`]) from the next frame on.
    pub fn with_osc(mut self, listener: super::OscListener) -> Self {
        self.osc = Some(listener);
        self
    }

    /// What the OSC listener has seen, when there is one.
    pub fn osc_stats(&self) -> Option<super::OscStats> {
        self.osc.as_ref().map(super::OscListener::stats)
    }

    /// The session, once the model is loaded.
    pub fn session(&self) -> Option<&Session> {
        self.model.session()
    }

    /// The session, once the model is loaded.
    pub fn session_mut(&mut self) -> Option<&mut Session> {
        self.model.session_mut()
    }

    /// The values of the window's widgets.
    pub fn controls(&self) -> &Controls {
        &self.form.controls
    }

    /// With `--screenshot`: leaves the reason in `slot` when no screenshot could be saved
    /// (the model failed to load, or writing failed), for the exit status.
    pub fn report_screenshot_failure_to(&mut self, slot: Arc<Mutex<Option<String>>>) {
        if let Some(screenshot) = &mut self.screenshot {
            screenshot.report_failure_to(slot);
        }
    }

    /// The last message shown in the status area.
    pub fn notice(&self) -> Option<&str> {
        self.notice.as_ref().map(|n| n.text.as_str())
    }

    /// The whole window.
    pub fn show(&mut self, ui: &mut egui::Ui, render_state: Option<&egui_wgpu::RenderState>) {
        let ctx = ui.ctx().clone();
        self.poll(&ctx);
        if self.picture.presenter.is_none() {
            self.picture.presenter = Some(Presenter::new(render_state));
        }
        self.fall_back_to_cpu_upscale();
        // Keys act before the panels are drawn, so fullscreen hides them in this frame.
        for command in self.shortcuts(&ctx) {
            self.run_command(&ctx, command);
        }
        for command in dropped_images(&ctx) {
            self.run_command(&ctx, command);
        }
        let mut commands = Vec::new();
        if !self.fullscreen {
            egui::Panel::top("toolbar").show(ui, |ui| {
                commands.extend(toolbar::toolbar(
                    ui,
                    &self.model,
                    self.notice.as_ref(),
                    self.fullscreen,
                ));
            });
            let panel = controls_panel::PanelContext {
                session: self.model.session(),
                has_gpu: self.picture.has_gpu(),
                image_size: self.image_size(),
            };
            egui::Panel::left("controls")
                .default_size(330.0)
                .show(ui, |ui| {
                    egui::ScrollArea::vertical().show(ui, |ui| {
                        commands.extend(controls_panel::controls_panel(ui, &mut self.form, &panel));
                    });
                });
        }
        for command in commands {
            self.run_command(&ctx, command);
        }
        let osc_line: Vec<String> = self.osc_stats().map(|s| s.line()).into_iter().collect();
        egui::CentralPanel::default()
            .frame(egui::Frame::NONE.fill(egui::Color32::from_gray(8)))
            .show(ui, |ui| {
                self.picture.show(ui, render_state, &self.model, &osc_line)
            });
        self.apply_controls();
        if let Some(screenshot) = &mut self.screenshot {
            let model_error = match &self.model {
                ModelState::Failed(error) => Some(error.as_str()),
                _ => None,
            };
            screenshot.step(&ctx, self.picture.rect, &self.picture.hud, model_error);
        }
    }

    /// F11 toggles fullscreen, Escape leaves it.
    fn shortcuts(&self, ctx: &egui::Context) -> Vec<Command> {
        let (f11, escape) = ctx.input(|i| {
            (
                i.key_pressed(egui::Key::F11),
                i.key_pressed(egui::Key::Escape),
            )
        });
        let mut fullscreen = self.fullscreen;
        let mut commands = Vec::new();
        if f11 {
            fullscreen = !fullscreen;
            commands.push(Command::SetFullscreen(fullscreen));
        }
        if escape && fullscreen {
            commands.push(Command::SetFullscreen(false));
        }
        commands
    }

    /// No GPU adapter: the CPU path, as the Upscale choice says.
    fn fall_back_to_cpu_upscale(&mut self) {
        if self.form.controls.upscale == UpscaleMode::Gpu && !self.picture.has_gpu() {
            self.form.controls.upscale = UpscaleMode::Cpu;
        }
    }

    /// Housekeeping each frame: the model loader, the recording, repaints while something
    /// moves without new frames.
    fn poll(&mut self, ctx: &egui::Context) {
        if matches!(self.model, ModelState::Loading { .. }) {
            if self.poll_loading() {
                if self.autoplay {
                    self.run_command(ctx, Command::Play);
                    if let Some(path) = self.autorecord.take() {
                        self.form.record_path = path.display().to_string();
                        self.run_command(ctx, Command::StartRecording);
                    }
                }
            } else {
                ctx.request_repaint_after(Duration::from_millis(100));
            }
        }
        self.run_osc_commands(ctx);
        let outcome = self.model.session_mut().and_then(Session::poll);
        self.report_recording(outcome);
        if let Some(session) = self.model.session() {
            // Progress bars and the recording clock move without new frames.
            let busy = session.recording().is_some()
                || session
                    .stats()
                    .is_some_and(|s| s.endpoint_progress.is_some());
            if busy {
                ctx.request_repaint_after(Duration::from_millis(100));
            }
        }
    }
}

/// Files dropped on the window: each becomes an image keyframe, in the order dropped.
/// (While files hover, the window says what a drop does.)
fn dropped_images(ctx: &egui::Context) -> Vec<Command> {
    let (hovering, dropped) = ctx.input(|i| {
        let dropped: Vec<_> = i
            .raw
            .dropped_files
            .iter()
            .map(|f| f.path().to_path_buf())
            .collect();
        (!i.raw.hovered_files.is_empty(), dropped)
    });
    if hovering {
        let painter = ctx.layer_painter(egui::LayerId::new(
            egui::Order::Foreground,
            egui::Id::unique("drop images"),
        ));
        let screen = ctx.content_rect();
        painter.rect_filled(screen, 0.0, egui::Color32::from_black_alpha(160));
        painter.text(
            screen.center(),
            egui::Align2::CENTER_CENTER,
            "drop to add image keyframes",
            egui::FontId::proportional(28.0),
            egui::Color32::WHITE,
        );
    }
    dropped.into_iter().map(Command::AddImageKeyframe).collect()
}
