//! What the panels edit: the [`Controls`], and the text fields whose typing is not yet
//! meant for the walk. Panels change this freely while they draw; everything else they want
//! done goes through a [`super::Command`].

use std::collections::HashMap;

use super::controls::{keyframe_name, Controls, KeyframeControl, KeyframeImage};
use super::record_path::default_record_path;
use crate::model::text::PromptMix;

/// The window's form state.
pub(super) struct Form {
    /// The values of the sliders and choices, and the committed keyframes.
    pub controls: Controls,
    /// The keyframe rows as typed; committed into `controls` on Enter, on leaving a field
    /// or by "Apply prompts", so a half-typed prompt does not start sampling.
    pub keyframe_fields: Vec<KeyframeControl>,
    /// The negative prompt as typed, committed with the prompts.
    pub negative_field: String,
    /// The picture file "+ image" adds.
    pub image_path: String,
    /// The keyframe rows' thumbnails as textures (a picture's own, or a prompt's keyframe as
    /// sampled), by the address of their pixels.
    pub thumbnails: HashMap<usize, egui::TextureHandle>,
    /// The model folder field (loads another model).
    pub model_field: String,
    /// The loaded model's LoRAs as their sliders show them: (file name, strength).
    pub loras: Vec<(String, f64)>,
    /// Where the next recording goes.
    pub record_path: String,
    /// Record at the output size instead of the frames' own size.
    pub record_at_output_size: bool,
}

impl Form {
    /// A form showing `controls`, with the model field showing `model`.
    pub fn new(controls: Controls, model: Option<String>) -> Self {
        Self {
            keyframe_fields: controls.keyframes.clone(),
            negative_field: controls.negative.clone(),
            image_path: String::new(),
            thumbnails: HashMap::new(),
            controls,
            model_field: model.unwrap_or_default(),
            loras: Vec::new(),
            record_path: default_record_path().display().to_string(),
            record_at_output_size: false,
        }
    }

    /// Whether the text fields hold typing not yet committed.
    pub fn text_edited(&self) -> bool {
        self.keyframe_fields != self.controls.keyframes
            || self.negative_field != self.controls.negative
    }

    /// Takes the typed prompts into the controls.
    pub fn commit_text(&mut self) {
        self.controls.keyframes = self.keyframe_fields.clone();
        self.controls.negative = self.negative_field.clone();
    }

    /// Sets row `keyframe`'s prompt and applies it.
    pub fn set_prompt(&mut self, keyframe: usize, text: &str) -> Result<(), String> {
        let row = self.row(keyframe)?;
        row.text = text.to_string();
        self.commit_row(keyframe);
        Ok(())
    }

    /// Sets the weight of part `part` of row `keyframe`'s prompt mix and applies it.
    pub fn set_mix_weight(
        &mut self,
        keyframe: usize,
        part: usize,
        weight: f64,
    ) -> Result<(), String> {
        let name = keyframe_name(keyframe);
        let row = self.row(keyframe)?;
        let Some(mut mix) = PromptMix::parse(&row.text) else {
            return Err(format!(
                "prompt {name} is not a mix (write TEXT:WEIGHT | TEXT:WEIGHT)"
            ));
        };
        let count = mix.parts.len();
        let Some(slot) = mix.parts.get_mut(part) else {
            return Err(format!(
                "prompt {name} has no part {part} (its mix has {count}, counted from 0)"
            ));
        };
        slot.weight = weight;
        row.text = mix.to_text();
        self.commit_row(keyframe);
        Ok(())
    }

    fn row(&mut self, keyframe: usize) -> Result<&mut KeyframeControl, String> {
        let count = self.keyframe_fields.len();
        self.keyframe_fields.get_mut(keyframe).ok_or_else(|| {
            format!("there is no keyframe {keyframe} (the walk has {count}, counted from 0)")
        })
    }

    /// Applies row `keyframe` as typed, leaving other rows' typing uncommitted (all of it
    /// when rows were added or removed since the last commit).
    fn commit_row(&mut self, keyframe: usize) {
        if self.keyframe_fields.len() == self.controls.keyframes.len() {
            self.controls.keyframes[keyframe] = self.keyframe_fields[keyframe].clone();
        } else {
            self.commit_text();
        }
    }

    /// Adds `image` as the last keyframe, committed (with what was typed) at once: adding a
    /// picture is a deliberate act, like "Apply prompts".
    pub fn add_image(&mut self, image: KeyframeImage) {
        self.keyframe_fields.push(KeyframeControl {
            text: String::new(),
            image: Some(image),
        });
        self.commit_text();
    }

    /// A new default record path, so the next recording does not overwrite the last.
    pub fn next_record_path(&mut self) {
        self.record_path = default_record_path().display().to_string();
    }
}
