//! The side panel: prompts ([`super::prompts_panel`]), keyframes, walk, frames, picture,
//! then the Record section ([`super::record_panel`]) and the Model section. Widgets edit the [`Form`] they show;
//! buttons that act (New seed, Load) return [`Command`]s.

use super::command::Command;
use super::controls::{
    OutputSize, FPS_RANGE, MAX_GUIDANCE, MAX_INBETWEENS, MAX_REFINE_POSITIONS, MAX_SAMPLER_STEPS,
    MAX_STEPS_BETWEEN,
};
use super::form::Form;
use super::session::Session;
use super::{prompts_panel, record_panel};
use crate::model::DecoderKind;
use crate::pipeline::Inbetweens;
use crate::upscale::UpscaleMode;
use crate::walk::{Easing, Interp, LoopMode};

/// What the panel shows but does not edit.
pub(super) struct PanelContext<'a> {
    /// The loaded model's session: its decoders, the walk's progress and in-betweens.
    pub session: Option<&'a Session>,
    /// Whether frames can be upscaled on the GPU here.
    pub has_gpu: bool,
    /// The decoded frame size.
    pub image_size: (u32, u32),
}

/// Draws the side panel's sections; returns what was clicked.
pub(super) fn controls_panel(
    ui: &mut egui::Ui,
    form: &mut Form,
    context: &PanelContext<'_>,
) -> Vec<Command> {
    let mut commands = Vec::new();
    let walk_thumbnails = context.session.and_then(Session::keyframe_thumbnails);
    commands.extend(prompts_panel::prompts(ui, form, walk_thumbnails.as_deref()));
    ui.separator();
    commands.extend(keyframes(ui, form, context.session));
    ui.separator();
    commands.extend(walk(ui, form, context.session));
    ui.separator();
    frames(ui, form, context.session);
    ui.separator();
    picture(ui, form, context);
    ui.separator();
    record_panel::record_section(ui, form, context.image_size);
    ui.separator();
    commands.extend(model_section(ui, form));
    commands
}

/// Seed, sampler steps, guidance, and the keyframes' sampling progress.
fn keyframes(ui: &mut egui::Ui, form: &mut Form, session: Option<&Session>) -> Vec<Command> {
    let mut commands = Vec::new();
    let controls = &mut form.controls;
    ui.heading("Keyframes");
    ui.horizontal(|ui| {
        let label = ui.label("Seed");
        ui.add(egui::DragValue::new(&mut controls.seed).range(0..=u32::MAX as u64))
            .labelled_by(label.id);
        if ui.button("New").on_hover_text("New seed").clicked() {
            commands.push(Command::NewSeed);
        }
    });
    ui.add(
        egui::Slider::new(&mut controls.sampler_steps, 1..=MAX_SAMPLER_STEPS).text("Sampler steps"),
    );
    ui.add(
        egui::Slider::new(&mut controls.guidance, 0.0..=MAX_GUIDANCE)
            .step_by(0.5)
            .text("Guidance"),
    );
    if let Some(stats) = session.and_then(Session::stats) {
        if let Some((done, total)) = stats.endpoint_progress {
            ui.add(
                egui::ProgressBar::new(done as f32 / total.max(1) as f32)
                    .text(stats.phase)
                    .animate(true),
            );
        }
    }
    commands
}

/// Steps between keyframes, interpolation, easing, loop, Refine.
fn walk(ui: &mut egui::Ui, form: &mut Form, session: Option<&Session>) -> Option<Command> {
    let controls = &mut form.controls;
    ui.heading("Walk");
    ui.add(
        egui::Slider::new(&mut controls.steps_between, 1..=MAX_STEPS_BETWEEN)
            .logarithmic(true)
            .text("Steps between keyframes"),
    );
    choice(
        ui,
        "Interpolation",
        &mut controls.interp,
        &[(Interp::Slerp, "slerp"), (Interp::Lerp, "lerp")],
    );
    choice(
        ui,
        "Easing",
        &mut controls.easing,
        &[(Easing::Linear, "linear"), (Easing::InOut, "ease in-out")],
    );
    choice(
        ui,
        "Loop",
        &mut controls.loop_mode,
        &[
            (LoopMode::Once, "once"),
            (LoopMode::PingPong, "ping-pong"),
            (LoopMode::Endless, "endless"),
        ],
    );
    let controls = &mut form.controls;
    let mut command = None;
    ui.horizontal(|ui| {
        let mut refine = controls.refine;
        if ui
            .toggle_value(&mut refine, "Refine")
            .on_hover_text(
                "Sample in-betweens for real while the walk plays: each replaces its slerp \
                 the next time the walk passes it",
            )
            .clicked()
        {
            command = Some(Command::SetRefine(refine));
        }
        ui.add(
            egui::Slider::new(&mut controls.refine_positions, 1..=MAX_REFINE_POSITIONS)
                .text("per pair"),
        );
    });
    if let Some((done, total)) = session.and_then(Session::stats).and_then(|s| s.refined) {
        ui.label(format!("refined {done} of {total}"));
    }
    command
}

/// In-betweens (fixed or auto) and the target frame rate.
fn frames(ui: &mut egui::Ui, form: &mut Form, session: Option<&Session>) {
    let controls = &mut form.controls;
    ui.heading("Frames");
    let mut auto = controls.inbetweens == Inbetweens::Auto;
    // On auto the slider shows the count the pipeline chose.
    let mut k = match controls.inbetweens {
        Inbetweens::Fixed(k) => k,
        Inbetweens::Auto => session.and_then(Session::stats).map_or(3, |s| s.inbetweens),
    };
    ui.horizontal(|ui| {
        ui.add_enabled(
            !auto,
            egui::Slider::new(&mut k, 0..=MAX_INBETWEENS).text("In-betweens"),
        );
        ui.checkbox(&mut auto, "auto");
    });
    controls.inbetweens = if auto {
        Inbetweens::Auto
    } else {
        Inbetweens::Fixed(k)
    };
    ui.add(egui::Slider::new(&mut controls.target_fps, FPS_RANGE).text("Target fps"));
}

/// Decoder, upscaling, output size.
fn picture(ui: &mut egui::Ui, form: &mut Form, context: &PanelContext<'_>) {
    let controls = &mut form.controls;
    ui.heading("Picture");
    let decoders = context
        .session
        .map_or_else(|| vec![DecoderKind::Taesd], |s| s.engine().decoders());
    let decoder_choices: Vec<(DecoderKind, &str)> =
        decoders.iter().map(|d| (*d, d.label())).collect();
    choice(ui, "Decoder", &mut controls.decoder, &decoder_choices);
    let mut upscale_choices = vec![
        (UpscaleMode::Cpu, "CPU bicubic"),
        (UpscaleMode::None, "none"),
    ];
    if context.has_gpu {
        upscale_choices.insert(0, (UpscaleMode::Gpu, "GPU bicubic"));
    }
    choice(ui, "Upscale", &mut controls.upscale, &upscale_choices);
    if !context.has_gpu {
        ui.weak("No GPU adapter: frames are upscaled on the CPU.");
    }
    let size_choices: Vec<(OutputSize, &str)> =
        OutputSize::ALL.iter().map(|s| (*s, s.label())).collect();
    choice(ui, "Output size", &mut controls.output, &size_choices);
}

/// The model folder field and Load.
fn model_section(ui: &mut egui::Ui, form: &mut Form) -> Option<Command> {
    let mut command = None;
    ui.collapsing("Model", |ui| {
        ui.label("Diffusers folder or Hugging Face id (empty: demo model)");
        ui.text_edit_singleline(&mut form.model_field);
        if ui.button("Load").clicked() {
            let field = form.model_field.trim();
            command = Some(Command::LoadModel(
                (!field.is_empty()).then(|| field.to_string()),
            ));
        }
    });
    // Visible without opening "Model": a LoRA's strength is a look to play with.
    for (index, (name, strength)) in form.loras.iter_mut().enumerate() {
        let range = strength.min(-1.0)..=strength.max(2.0);
        let slider = egui::Slider::new(strength, range)
            .step_by(0.05)
            .text(format!("LoRA {name}"));
        let response = ui.add(slider);
        // Merging a LoRA reloads the model: only when the slider is let go (or set by
        // keyboard), not on every step of a drag.
        if response.drag_stopped() || (response.changed() && !response.dragged()) {
            command = Some(Command::SetLoraStrength {
                index,
                strength: *strength,
            });
        }
    }
    command
}

/// A combo box over `options`, named `label` (for screen readers and the UI tests too).
fn choice<T: PartialEq + Copy>(
    ui: &mut egui::Ui,
    label: &str,
    value: &mut T,
    options: &[(T, &str)],
) {
    let current = options
        .iter()
        .find(|(v, _)| v == value)
        .map_or("?", |(_, name)| name);
    egui::ComboBox::from_label(label)
        .selected_text(current)
        .show_ui(ui, |ui| {
            for (option, name) in options {
                ui.selectable_value(value, *option, *name);
            }
        });
}
