//! The side panel's Prompts section: one row per keyframe (a prompt field, or a picture's
//! thumbnail with the prompt it is denoised with), "+ keyframe", "+ image" with its file
//! field, "Apply prompts", the image settings, the negative prompt. Typing stays in the
//! [`Form`]'s fields until committed (Enter, leaving a field, or the button), so a
//! half-typed prompt does not start sampling.

use std::path::PathBuf;
use std::sync::Arc;

use super::command::Command;
use super::controls::{keyframe_name, THUMBNAIL_SIDE};
use super::form::Form;
use crate::frame::RgbaImage;
use crate::model::text::{MixPart, PromptMix};
use crate::model::Fit;
use crate::pipeline::KeyframeThumbnails;

/// How tall a thumbnail is drawn in the panel, in points.
const THUMBNAIL_POINTS: f32 = 40.0;

/// One row per keyframe, "+ keyframe", "+ image", "Apply prompts", the image settings, the
/// negative prompt. Typing is committed on Enter or on leaving a field; "+ image" returns
/// the command that reads the picture.
pub(super) fn prompts(
    ui: &mut egui::Ui,
    form: &mut Form,
    walk: Option<&KeyframeThumbnails>,
) -> Vec<Command> {
    let mut commands = Vec::new();
    ui.heading("Prompts");
    let mut remove = None;
    let mut commit = false;
    let count = form.keyframe_fields.len();
    let thumbnails = thumbnails(ui.ctx(), form, walk);
    for (i, (keyframe, thumbnail)) in form.keyframe_fields.iter_mut().zip(thumbnails).enumerate() {
        ui.horizontal(|ui| {
            let (label, hint) = match &keyframe.image {
                None => (format!("Prompt {}", keyframe_name(i)), "what to see"),
                Some(_) => (
                    format!("Image {}", keyframe_name(i)),
                    "prompt (strength > 0)",
                ),
            };
            let label = ui.label(label);
            if let Some(texture) = thumbnail {
                let size = texture.size_vec2() * (THUMBNAIL_POINTS / texture.size_vec2().y);
                let (alt, hover) = match &keyframe.image {
                    Some(image) => (image.file_name(), image.path.display().to_string()),
                    None => (
                        format!("keyframe {}", keyframe_name(i)),
                        "keyframe as sampled".to_string(),
                    ),
                };
                let thumbnail =
                    egui::Image::new((texture.id(), size)).alt_text(format!("thumbnail of {alt}"));
                ui.add(thumbnail).on_hover_text(hover);
            }
            let width = if keyframe.image.is_some() {
                160.0
            } else {
                210.0
            };
            let response = ui
                .add(
                    egui::TextEdit::singleline(&mut keyframe.text)
                        .hint_text(hint)
                        .desired_width(width),
                )
                .labelled_by(label.id);
            if response.lost_focus() {
                commit = true;
            }
            if count > 2 && ui.small_button("x").on_hover_text("remove").clicked() {
                remove = Some(i);
            }
        });
        commands.extend(mix_weights(ui, i, &keyframe.text));
    }
    if let Some(i) = remove {
        form.keyframe_fields.remove(i);
        commit = true;
    }
    ui.horizontal(|ui| {
        if ui.button("+ keyframe").clicked() {
            form.keyframe_fields
                .push(super::controls::KeyframeControl::prompt(""));
        }
        if ui
            .add_enabled(form.text_edited(), egui::Button::new("Apply prompts"))
            .on_hover_text("Enter in a field does the same")
            .clicked()
        {
            form.commit_text();
        }
    });
    ui.horizontal(|ui| {
        let label = ui.label("Image file");
        ui.add(
            egui::TextEdit::singleline(&mut form.image_path)
                .hint_text("PNG, JPEG, WebP, or drop one here")
                .desired_width(170.0),
        )
        .labelled_by(label.id);
        let path = form.image_path.trim();
        if ui
            .add_enabled(!path.is_empty(), egui::Button::new("+ image"))
            .on_hover_text("add the picture as the last keyframe")
            .clicked()
        {
            commands.push(Command::AddImageKeyframe(PathBuf::from(path)));
        }
    });
    if form.keyframe_fields.iter().any(|k| k.image.is_some()) {
        image_settings(ui, form);
    }
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
    commands
}

/// One weight slider per part when row `keyframe`'s text is a mix of two or more prompts
/// (`"a fox:0.7 | a wolf:0.3"`). They act live, like the sliders below: a moved weight is
/// written into the row's text and applied, and the walk re-samples that keyframe in the
/// background while it plays.
fn mix_weights(ui: &mut egui::Ui, keyframe: usize, text: &str) -> Vec<Command> {
    let Some(mix) = PromptMix::parse(text).filter(|mix| mix.parts.len() > 1) else {
        return Vec::new();
    };
    let letter = keyframe_name(keyframe);
    let mut commands = Vec::new();
    ui.indent(("mix weights", keyframe), |ui| {
        for (part, MixPart { text, weight }) in mix.parts.iter().enumerate() {
            let mut value = *weight;
            // Past 1 when the text asks for more; never below 0 (refused, by the settings).
            let range = 0.0..=weight.max(1.0);
            let slider = egui::Slider::new(&mut value, range)
                .step_by(0.01)
                .text(format!("weight {letter}{}: {}", part + 1, shortened(text)));
            if ui.add(slider).changed() {
                commands.push(Command::SetMixWeight {
                    keyframe,
                    part,
                    weight: value,
                });
            }
        }
    });
    commands
}

/// A part's text for its slider's label: at most 32 characters.
fn shortened(text: &str) -> String {
    const MAX_CHARS: usize = 32;
    if text.chars().count() <= MAX_CHARS {
        return text.to_string();
    }
    let cut: String = text.chars().take(MAX_CHARS - 1).collect();
    format!("{}…", cut.trim_end())
}

/// Strength and fit of the image keyframes: they act live, like the sliders below.
fn image_settings(ui: &mut egui::Ui, form: &mut Form) {
    let controls = &mut form.controls;
    ui.add(
        egui::Slider::new(&mut controls.image_strength, 0.0..=1.0)
            .step_by(0.05)
            .text("Image strength"),
    )
    .on_hover_text(
        "0: the picture as it is; higher: re-noised and denoised with its prompt over that \
         share of the sampler steps, so it takes the model's look",
    );
    egui::ComboBox::from_label("Image fit")
        .selected_text(controls.image_fit.label())
        .show_ui(ui, |ui| {
            for fit in Fit::ALL {
                ui.selectable_value(&mut controls.image_fit, fit, fit.label());
            }
        });
}

/// The thumbnail texture of each row: a picture's own, or for a prompt the keyframe as the
/// running walk sampled it (when the row still says what was sampled). Textures are made on
/// first sight and kept while their image is shown.
fn thumbnails(
    ctx: &egui::Context,
    form: &mut Form,
    walk: Option<&KeyframeThumbnails>,
) -> Vec<Option<egui::TextureHandle>> {
    let key = |image: &Arc<RgbaImage>| Arc::as_ptr(image) as usize;
    let images: Vec<Option<(&Arc<RgbaImage>, String)>> = form
        .keyframe_fields
        .iter()
        .enumerate()
        .map(|(i, row)| match &row.image {
            Some(image) => Some((&image.thumbnail, image.path.display().to_string())),
            None => walk?
                .of(i, &form.controls.keyframe(row))
                .map(|small| (small, format!("keyframe {}", keyframe_name(i)))),
        })
        .collect();
    form.thumbnails
        .retain(|k, _| images.iter().flatten().any(|(image, _)| key(image) == *k));
    images
        .into_iter()
        .map(|image| {
            let (small, name) = image?;
            let texture = form.thumbnails.entry(key(small)).or_insert_with(|| {
                let size = [small.width as usize, small.height as usize];
                let pixels = egui::ColorImage::from_rgba_unmultiplied(size, &small.pixels);
                debug_assert!(small.width.max(small.height) <= THUMBNAIL_SIDE);
                ctx.load_texture(
                    format!("keyframe thumbnail {name}"),
                    pixels,
                    egui::TextureOptions::LINEAR,
                )
            });
            Some(texture.clone())
        })
        .collect()
}
