//! The side panel's Record section: where the next recording goes and at which size. The
//! Record button itself is on the toolbar, beside Play.

use super::form::Form;

/// Draws the Record section. `source` is the decoded frame size, recorded by default.
pub(super) fn record_section(ui: &mut egui::Ui, form: &mut Form, source: (u32, u32)) {
    ui.heading("Record");
    ui.horizontal(|ui| {
        let label = ui.label("Record file");
        ui.add(egui::TextEdit::singleline(&mut form.record_path).desired_width(220.0))
            .labelled_by(label.id);
    });
    ui.weak(".mp4 (H.264), .y4m, or a folder / .png for a PNG sequence");
    let output = form.controls.output.size();
    ui.checkbox(
        &mut form.record_at_output_size,
        format!(
            "Record at {}x{} (else the source size, {}x{})",
            output.0, output.1, source.0, source.1
        ),
    );
}
