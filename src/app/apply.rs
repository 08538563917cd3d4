//! From the form to the running walk: the [`Settings`] the controls make, checked by
//! [`Settings::validate`] against the loaded model (the one place the rules live), and sent
//! to the walk when they differ from what it runs.
//!
//! What the walk runs is asked of the session ([`super::Session::settings`]) and nowhere
//! else: there is no copy of "what was applied" to fall out of step with it.

use super::controls::keyframe_name;
use super::session::PlayState;
use super::{Notice, ViewerApp};
use crate::pipeline::{Settings, SettingsError};

impl ViewerApp {
    /// The decoded frame size: `--source`, else the model's default.
    pub(super) fn image_size(&self) -> (u32, u32) {
        self.source
            .or_else(|| {
                self.model
                    .session()
                    .map(|s| s.engine().defaults().image_size)
            })
            .unwrap_or((1024, 576))
    }

    /// The settings the form makes, if the loaded model can run them; else why not, in the
    /// window's words.
    pub(super) fn checked_settings(&self) -> Result<Settings, String> {
        let Some(session) = self.model.session() else {
            return Err("no model loaded".into());
        };
        let settings = self.form.controls.settings(self.image_size());
        match settings.validate(session.engine().as_ref()) {
            Ok(()) => Ok(settings),
            Err(e) => Err(describe(&e)),
        }
    }

    /// What the settings will run with that the user may not expect (a prompt longer than
    /// the text encoder reads), as one line for the notice; `None` when nothing.
    pub(super) fn settings_warning(&self, settings: &Settings) -> Option<String> {
        let session = self.model.session()?;
        let warnings = settings.warnings(session.engine().as_ref());
        (!warnings.is_empty()).then(|| warnings.join("; "))
    }

    /// Sends changed controls to the running walk. Settings the model cannot run are not
    /// sent: the walk plays on with what it has, and the notice says why.
    pub(super) fn apply_controls(&mut self) {
        let Some(running) = self
            .model
            .session()
            .filter(|s| s.state() != PlayState::Stopped)
            .and_then(|s| s.settings())
        else {
            return;
        };
        let wanted = self.form.controls.settings(self.image_size());
        if running == wanted {
            return;
        }
        match self.checked_settings() {
            Ok(settings) => {
                if let Some(warning) = self.settings_warning(&settings) {
                    self.notice = Some(Notice::info(warning));
                }
                if let Some(session) = self.model.session() {
                    session.apply(&settings);
                }
            }
            Err(problem) => self.notice = Some(Notice::error(problem)),
        }
    }
}

/// A settings error as the window says it: keyframes by their letters, fields by their
/// labels rather than the command line's options.
pub(super) fn describe(error: &SettingsError) -> String {
    match error {
        SettingsError::TooFewPrompts => "a walk needs two or more prompts".into(),
        SettingsError::EmptyPrompt(n) => format!(
            "prompt {} is empty: type something or remove it",
            keyframe_name(n.saturating_sub(1))
        ),
        SettingsError::NoStepsBetween => "steps between keyframes must be at least 1".into(),
        SettingsError::PromptMix { index, problem, .. } => format!(
            "prompt {}: {problem}",
            keyframe_name(index.saturating_sub(1))
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_errors_name_keyframes_by_letter() {
        assert_eq!(
            describe(&SettingsError::EmptyPrompt(3)),
            "prompt C is empty: type something or remove it"
        );
        assert_eq!(
            describe(&SettingsError::TooFewPrompts),
            "a walk needs two or more prompts"
        );
    }

    /// `--source` is checked by `Settings::validate` as the model loads, and Play refuses it.
    #[test]
    fn a_source_size_the_model_cannot_decode_is_a_notice() {
        let mut app = ViewerApp::headless(super::super::ViewerOptions {
            source: Some((100, 60)),
            ..Default::default()
        });
        assert!(app.wait_for_model(std::time::Duration::from_secs(60)));
        let notice = app.notice().unwrap_or_default().to_string();
        assert!(notice.contains("source size 100x60"), "{notice}");
        app.run_command(&egui::Context::default(), super::super::Command::Play);
        let notice = app.notice().unwrap_or_default().to_string();
        assert!(notice.starts_with("source size 100x60"), "{notice}");
        assert_eq!(app.session().unwrap().state(), PlayState::Stopped);
    }
}
