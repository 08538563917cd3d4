//! The side panel's Record section: where the next recording goes and at which size. The
//! Record button itself is on the toolbar, beside Play.

use std::path::Path;

use super::form::Form;
use crate::record::OutputFormat;

/// Draws the Record section. `source` is the decoded frame size, recorded by default.
pub(super) fn record_section(ui: &mut egui::Ui, form: &mut Form, source: (u32, u32)) {
    ui.heading("Record");
    ui.horizontal(|ui| {
        let label = ui.label("Record file");
        ui.add(egui::TextEdit::singleline(&mut form.record_path).desired_width(220.0))
            .labelled_by(label.id);
    });
    // The name's format is checked as it is typed (the rest when Record is pressed).
    match OutputFormat::from_path(Path::new(form.record_path.trim())) {
        Ok(_) => {
            ui.weak(".mp4 (H.264), .webm (VP9), .gif, .y4m, or a folder / .png for a PNG sequence")
        }
        Err(e) => ui.colored_label(ui.visuals().warn_fg_color, e.to_string()),
    };
    let output = form.controls.output.size();
    ui.checkbox(
        &mut form.record_at_output_size,
        format!(
            "Record at {}x{} (else the source size, {}x{})",
            output.0, output.1, source.0, source.1
        ),
    );
}
