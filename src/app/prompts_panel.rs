//! The side panel's Prompts section: one field per keyframe, "+ keyframe", "Apply prompts",
//! the negative prompt. Typing stays in the [`Form`]'s text fields until committed (Enter,
//! leaving a field, or the button), so a half-typed prompt does not start sampling.

use super::controls::keyframe_name;
use super::form::Form;

/// One field per keyframe prompt, "+ keyframe", "Apply prompts", the negative prompt.
/// Typing is committed on Enter or on leaving a field.
pub(super) fn prompts(ui: &mut egui::Ui, form: &mut Form) {
    ui.heading("Prompts");
    let mut remove = None;
    let mut commit = false;
    let count = form.prompt_fields.len();
    for (i, prompt) in form.prompt_fields.iter_mut().enumerate() {
        ui.horizontal(|ui| {
            let label = ui.label(format!("Prompt {}", keyframe_name(i)));
            let response = ui
                .add(
                    egui::TextEdit::singleline(prompt)
                        .hint_text("what to see")
                        .desired_width(210.0),
                )
                .labelled_by(label.id);
            if response.lost_focus() {
                commit = true;
            }
            if count > 2 && ui.small_button("x").on_hover_text("remove").clicked() {
                remove = Some(i);
            }
        });
    }
    if let Some(i) = remove {
        form.prompt_fields.remove(i);
        commit = true;
    }
    ui.horizontal(|ui| {
        if ui.button("+ keyframe").clicked() {
            form.prompt_fields.push(String::new());
        }
        if ui
            .add_enabled(form.text_edited(), egui::Button::new("Apply prompts"))
            .on_hover_text("Enter in a field does the same")
            .clicked()
        {
            form.commit_text();
        }
    });
    let label = ui.label("Negative prompt");
    let negative = ui
        .add(
            egui::TextEdit::singleline(&mut form.negative_field)
                .hint_text("what to avoid")
                .desired_width(280.0),
        )
        .labelled_by(label.id);
    // Leaving a field (Enter included) applies what was typed.
    if commit || negative.lost_focus() {
        form.commit_text();
    }
}
