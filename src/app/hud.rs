//! The heads-up display over the picture: which model and decoder, sizes and who upscales,
//! frame rate and stage timings, the ring buffer's fill, where the walk is. Everything it
//! says about the walk comes from the settings the walk runs with.

use super::controls::keyframe_name;
use crate::model::Engine;
use crate::pipeline::{Frame, Settings, StatsSnapshot};
use crate::upscale::UpscaleMode;

/// What the heads-up display reports on.
pub(super) struct HudInput<'a> {
    /// The loaded model.
    pub engine: Option<&'a dyn Engine>,
    /// The settings the walk runs with (the session's, not the form's).
    pub settings: &'a Settings,
    /// The frame on screen.
    pub frame: &'a Frame,
    pub stats: Option<&'a StatsSnapshot>,
    /// The size the frame is drawn at, in pixels.
    pub shown: (u32, u32),
    /// Who draws ([`super::present::Presenter::describe`]).
    pub presenter: &'a str,
}

/// The display's lines.
pub(super) fn lines(input: &HudInput<'_>) -> Vec<String> {
    let HudInput {
        engine,
        settings,
        frame,
        stats,
        shown,
        presenter,
    } = input;
    let mut lines = Vec::new();
    if let Some(engine) = engine {
        lines.push(format!(
            "{} · {} · {}",
            engine.name(),
            engine.sampler_description(),
            engine.decoder_description(settings.decoder)
        ));
    }
    let (w, h) = frame.image.size();
    lines.push(match settings.upscale {
        UpscaleMode::Gpu => format!(
            "{w}x{h} → {}x{} GPU bicubic · {presenter}",
            shown.0, shown.1
        ),
        UpscaleMode::Cpu => format!("{w}x{h} CPU bicubic · drawn by {presenter}"),
        UpscaleMode::None => format!("{w}x{h} not upscaled · drawn by {presenter}"),
    });
    if let Some(s) = stats {
        // GPU upscaling happens at draw time, outside the pipeline's timings.
        let upscale_time = match settings.upscale {
            UpscaleMode::Cpu => format!(" · upscale {:.1} ms", s.upscale_ms),
            UpscaleMode::Gpu | UpscaleMode::None => String::new(),
        };
        // In-betweens of frames kept on the GPU are blended by the present shader.
        let inbetween_time = if frame.image.is_on_gpu() {
            "in-betweens in the shader".to_string()
        } else {
            format!("in-between {:.1} ms", s.inbetween_ms)
        };
        lines.push(format!(
            "{:.1} / {} fps · decode {:.0} ms · {inbetween_time}{upscale_time}",
            s.shown_fps, settings.target_fps, s.decode_ms
        ));
        let mut keyframe_time = s
            .keyframe_seconds
            .map(|seconds| format!(" · keyframe {seconds:.1} s"))
            .unwrap_or_default();
        if let Some((done, total)) = s.refined {
            keyframe_time.push_str(&format!(" · refined {done} of {total}"));
        }
        lines.push(format!(
            "buffer {}/{} · underruns {} · frame {} · {} in-betweens{keyframe_time}",
            s.buffer_fill, s.buffer_capacity, s.underruns, frame.index, s.inbetweens
        ));
        let prompts = settings.endpoints.keyframes.len().max(2);
        let (pair, t) = s.position;
        lines.push(format!(
            "keyframes {} → {} · {:.0}% · {}",
            keyframe_name(pair % prompts),
            keyframe_name((pair + 1) % prompts),
            t * 100.0,
            s.phase
        ));
    }
    lines
}

/// Paints `lines` in a dark box at the top left of `area`, with the buffer's fill as a bar
/// under them when there are `stats`.
pub(super) fn draw(
    ui: &egui::Ui,
    area: egui::Rect,
    lines: &[String],
    stats: Option<&StatsSnapshot>,
) {
    let painter = ui.painter();
    let font = egui::FontId::monospace(13.0);
    let line_height = 17.0;
    let width = lines
        .iter()
        .map(|l| l.chars().count() as f32 * 7.9)
        .fold(200.0, f32::max);
    let bar_height = if stats.is_some() { 10.0 } else { 0.0 };
    let rect = egui::Rect::from_min_size(
        area.min + egui::vec2(10.0, 10.0),
        egui::vec2(
            width + 16.0,
            lines.len() as f32 * line_height + 12.0 + bar_height,
        ),
    );
    painter.rect_filled(rect, 4.0, egui::Color32::from_black_alpha(170));
    for (i, line) in lines.iter().enumerate() {
        painter.text(
            rect.min + egui::vec2(8.0, 6.0 + i as f32 * line_height),
            egui::Align2::LEFT_TOP,
            line,
            font.clone(),
            egui::Color32::from_gray(230),
        );
    }
    if let Some(s) = stats {
        // The buffer's fill as a bar: full is healthy, empty means the display starves.
        let fill = s.buffer_fill as f32 / s.buffer_capacity.max(1) as f32;
        let bar = egui::Rect::from_min_size(
            egui::pos2(rect.min.x + 8.0, rect.max.y - 12.0),
            egui::vec2(width, 6.0),
        );
        painter.rect_filled(bar, 2.0, egui::Color32::from_gray(60));
        let color = if fill < 0.25 {
            egui::Color32::from_rgb(230, 80, 60)
        } else {
            egui::Color32::from_rgb(90, 200, 120)
        };
        painter.rect_filled(
            egui::Rect::from_min_size(bar.min, egui::vec2(width * fill, 6.0)),
            2.0,
            color,
        );
    }
}
