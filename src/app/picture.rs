//! The central panel: the frame on screen, fitted to the window and drawn by the
//! [`Presenter`], with the heads-up display over it; or, before there is a frame, what is
//! happening instead (loading, sampling, an error).

use super::hud;
use super::loading::ModelState;
use super::notice::Notice;
use super::present::{Presenter, Shown};
use super::session::Session;
use crate::upscale::UpscaleMode;

/// The picture's state between frames.
#[derive(Default)]
pub(super) struct Picture {
    /// Draws frames into textures; made with the window's wgpu state on the first frame.
    pub presenter: Option<Presenter>,
    /// Where the picture was drawn last frame, in points (none without a frame).
    pub rect: Option<egui::Rect>,
    /// The heads-up display's lines as last drawn (saved with a screenshot).
    pub hud: Vec<String>,
}

impl Picture {
    /// Whether frames can be upscaled on the GPU here.
    pub fn has_gpu(&self) -> bool {
        self.presenter.as_ref().is_some_and(Presenter::has_gpu)
    }

    /// Draws the current frame and the heads-up display into `ui`, with `extra_lines`
    /// (the OSC listener's counts) under the display's own.
    pub fn show(
        &mut self,
        ui: &mut egui::Ui,
        render_state: Option<&egui_wgpu::RenderState>,
        model: &ModelState,
        extra_lines: &[String],
    ) {
        self.rect = None;
        let area = ui.available_rect_before_wrap();
        let session = model.session();
        let stats = session.and_then(Session::stats);
        // The frame and the settings it was made with: what the walk runs, never the form.
        let running = session.and_then(|s| Some((s.current_frame()?, s.settings()?)));
        let Some((frame, settings)) = running else {
            placeholder(ui, model, stats.as_ref());
            return;
        };
        let target = match settings.upscale {
            UpscaleMode::Gpu => settings.output_size,
            _ => frame.image.size(),
        };
        let shown: Result<Shown, String> = match (self.presenter.as_mut(), render_state) {
            (Some(Presenter::Gpu(gpu)), Some(rs)) => {
                gpu.show(rs, &frame, target).map_err(|e| e.to_string())
            }
            (Some(Presenter::Cpu(cpu)), _) => cpu.show(ui.ctx(), &frame).map_err(|e| e.to_string()),
            _ => Err("no presenter".into()),
        };
        let shown = match shown {
            Ok(shown) => shown,
            Err(e) => {
                ui.colored_label(egui::Color32::LIGHT_RED, format!("cannot draw: {e}"));
                return;
            }
        };
        let rect = fit(area, shown.size);
        self.rect = Some(rect);
        ui.painter().image(
            shown.texture,
            rect,
            egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0)),
            egui::Color32::WHITE,
        );
        let presenter = self
            .presenter
            .as_ref()
            .map(Presenter::describe)
            .unwrap_or_default();
        self.hud = hud::lines(&hud::HudInput {
            engine: session.map(|s| s.engine().as_ref()),
            settings: &settings,
            frame: &frame,
            stats: stats.as_ref(),
            shown: shown.size,
            presenter: &presenter,
        });
        self.hud.extend_from_slice(extra_lines);
        hud::draw(ui, area, &self.hud, stats.as_ref());
    }
}

/// What the central panel says while there is no frame to show.
fn placeholder(
    ui: &mut egui::Ui,
    model: &ModelState,
    stats: Option<&crate::pipeline::StatsSnapshot>,
) {
    ui.centered_and_justified(|ui| match model {
        // One line here; the whole story is behind the notice's "details" toggle.
        ModelState::Failed(text) => {
            ui.colored_label(egui::Color32::LIGHT_RED, Notice::error(text).headline());
        }
        ModelState::Loading { what, .. } => {
            ui.label(format!("loading {what}…"));
        }
        ModelState::Ready(_) => match stats {
            Some(s) if s.last_error.is_some() => {
                let error = Notice::error(s.last_error.clone().unwrap_or_default());
                ui.colored_label(egui::Color32::LIGHT_RED, error.headline())
                    .on_hover_text(error.text);
            }
            Some(s) => {
                ui.label(format!("{}…", s.phase));
            }
            None => {
                ui.label("Type two prompts and press Play");
            }
        },
    });
}

/// The largest rectangle of `size`'s aspect inside `area`, centred.
fn fit(area: egui::Rect, size: (u32, u32)) -> egui::Rect {
    let aspect = size.0 as f32 / size.1.max(1) as f32;
    let mut w = area.width();
    let mut h = w / aspect;
    if h > area.height() {
        h = area.height();
        w = h * aspect;
    }
    egui::Rect::from_center_size(area.center(), egui::vec2(w, h))
}
