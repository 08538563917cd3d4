//! The bar across the top: the model, Play / Pause / Stop, New seed, recording, fullscreen,
//! and under it the notice (what happened last).

use std::time::Duration;

use super::command::Command;
use super::lap_gate::LapGate;
use super::loading::ModelState;
use super::session::{PlayState, Session};
use super::Notice;

/// Draws the toolbar; returns what was clicked.
pub(super) fn toolbar(
    ui: &mut egui::Ui,
    model: &ModelState,
    notice: Option<&Notice>,
    fullscreen: bool,
) -> Vec<Command> {
    let mut commands = Vec::new();
    ui.horizontal(|ui| {
        ui.heading("dreamwalk");
        ui.separator();
        model_label(ui, model);
        ui.separator();
        let session = model.session();
        let state = session.map_or(PlayState::Stopped, Session::state);
        if state == PlayState::Playing {
            if ui.button("Pause").clicked() {
                commands.push(Command::Pause);
            }
        } else if ui
            .add_enabled(session.is_some(), egui::Button::new("Play"))
            .clicked()
        {
            commands.push(Command::Play);
        }
        if ui
            .add_enabled(state != PlayState::Stopped, egui::Button::new("Stop"))
            .clicked()
        {
            commands.push(Command::Stop);
        }
        if ui.button("New seed").clicked() {
            commands.push(Command::NewSeed);
        }
        ui.separator();
        match session.and_then(Session::recording) {
            Some(status) => {
                // An endless loop's recording is whole laps: it waits for one to start, and
                // a first Stop finishes the lap (a second stops at once).
                let (button, phase) = match status.gate {
                    LapGate::WaitingForLap => ("Stop recording", "waiting for the lap to start · "),
                    LapGate::FinishingLap => ("Stop now", "finishing the lap · "),
                    LapGate::Recording | LapGate::Done => ("Stop recording", ""),
                };
                if ui
                    .button(egui::RichText::new(button).color(egui::Color32::RED))
                    .clicked()
                {
                    commands.push(Command::StopRecording);
                }
                ui.label(format!(
                    "{phase}{} · {} frames · queue {}/{}",
                    format_elapsed(status.elapsed),
                    status.frames,
                    status.queue.0,
                    status.queue.1
                ));
            }
            None => {
                if ui
                    .add_enabled(state != PlayState::Stopped, egui::Button::new("Record"))
                    .on_hover_text("Writes the frames shown, from now on, to the file below")
                    .clicked()
                {
                    commands.push(Command::StartRecording);
                }
            }
        }
        ui.separator();
        let mut on = fullscreen;
        if ui.toggle_value(&mut on, "Fullscreen").changed() {
            commands.push(Command::SetFullscreen(on));
        }
    });
    if let Some(notice) = notice {
        notice.show(ui);
    }
    commands
}

/// The model's name, a spinner while it loads, or that none is loaded.
fn model_label(ui: &mut egui::Ui, model: &ModelState) {
    match model {
        ModelState::Ready(session) => {
            let name = session.engine().name();
            let text = egui::RichText::new(&name).strong();
            if name.contains("random weights") {
                ui.label(text.color(egui::Color32::from_rgb(255, 190, 60)))
                    .on_hover_text(
                        "No weights were given: a tiny model with random weights shows the \
                         pipeline running. Start with --model DIR for real images.",
                    );
            } else {
                ui.label(text);
            }
        }
        ModelState::Loading { what, started, .. } => {
            ui.spinner();
            ui.label(format!(
                "loading {what}… {:.0} s",
                started.elapsed().as_secs_f32()
            ));
        }
        ModelState::Failed(_) => {
            ui.colored_label(egui::Color32::LIGHT_RED, "no model loaded");
        }
    }
}

/// "m:ss" for the recording clock.
fn format_elapsed(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}", s / 60, s % 60)
}
