//! The status line under the toolbar: what happened last, in one readable sentence, with
//! the whole story (an error's causes, a long list) behind a "details" toggle.

/// The longest headline, in characters; what is cut is in the details.
const HEADLINE_CHARS: usize = 160;

/// What happened last.
#[derive(Clone, Debug)]
pub(super) struct Notice {
    /// The whole message.
    pub text: String,
    pub is_error: bool,
}

impl Notice {
    pub fn info(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            is_error: false,
        }
    }

    pub fn error(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            is_error: true,
        }
    }

    /// The first line of the message, cut to [`HEADLINE_CHARS`] characters.
    pub fn headline(&self) -> String {
        let first = self.text.lines().next().unwrap_or_default().trim_end();
        if first.chars().count() <= HEADLINE_CHARS {
            return first.to_string();
        }
        let cut: String = first.chars().take(HEADLINE_CHARS - 1).collect();
        // End on a word where there is one near the cut.
        let cut = match cut.rfind(' ') {
            Some(space) if space > HEADLINE_CHARS / 2 => &cut[..space],
            _ => &cut,
        };
        format!("{}…", cut.trim_end_matches([' ', ',', ';', ':']))
    }

    /// The whole message when the headline does not show all of it.
    pub fn details(&self) -> Option<&str> {
        let whole = self.text.trim_end();
        (self.headline() != whole).then_some(whole)
    }

    /// Draws the headline, and the details behind a toggle.
    pub fn show(&self, ui: &mut egui::Ui) {
        let color = if self.is_error {
            egui::Color32::LIGHT_RED
        } else {
            ui.visuals().weak_text_color()
        };
        ui.add(egui::Label::new(egui::RichText::new(self.headline()).color(color)).truncate());
        if let Some(details) = self.details() {
            egui::CollapsingHeader::new("details")
                .id_salt("notice-details")
                .default_open(false)
                .show(ui, |ui| {
                    egui::ScrollArea::vertical()
                        .max_height(160.0)
                        .show(ui, |ui| {
                            ui.add(
                                egui::Label::new(egui::RichText::new(details).monospace()).wrap(),
                            );
                        });
                });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_message_is_its_own_headline() {
        let notice = Notice::error("cannot record: disk full");
        assert_eq!(notice.headline(), "cannot record: disk full");
        assert_eq!(notice.details(), None);
    }

    #[test]
    fn a_long_or_many_line_message_keeps_one_line_and_the_rest_in_details() {
        let trace: Vec<String> = (0..20).map(|i| format!("   {i}: frame {i}")).collect();
        let text = format!(
            "cannot load the model: shape mismatch for up_blocks.0.weight\n{}",
            trace.join("\n")
        );
        let notice = Notice::error(text.clone());
        assert_eq!(
            notice.headline(),
            "cannot load the model: shape mismatch for up_blocks.0.weight"
        );
        assert_eq!(notice.details(), Some(text.as_str()));

        let long = format!("cannot load the model: {}", "word ".repeat(80));
        let notice = Notice::error(long.clone());
        let headline = notice.headline();
        assert!(headline.chars().count() <= HEADLINE_CHARS, "{headline}");
        assert!(headline.ends_with("word…"), "{headline}");
        assert_eq!(notice.details(), Some(long.trim_end()));
    }
}
