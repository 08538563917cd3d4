//! What the user asks the window to do. Panels return [`Command`]s instead of acting while
//! they draw, and [`ViewerApp::run_command`] carries them out in one place: every button's
//! effect is found here, and nothing changes under a panel half-way through drawing it.

use std::path::PathBuf;

use super::controls::{keyframe_name, KeyframeImage, MAX_STEPS_BETWEEN};
use super::session::Session;
use super::{Notice, ViewerApp};
use crate::record::{RecordError, RecordOptions, RecordSummary};

/// An action from a button, a key or the window itself.
#[must_use = "a command does nothing until it is run"]
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Start the walk with the form's settings, or resume a paused one.
    Play,
    Pause,
    /// Finish a recording and end every pipeline thread.
    Stop,
    /// A random seed for the keyframes.
    NewSeed,
    /// Record the frames shown from now on to the form's record file.
    StartRecording,
    StopRecording,
    /// Load another model (`None`: the built-in demo model).
    LoadModel(Option<String>),
    /// Fullscreen with the panels hidden, or back.
    SetFullscreen(bool),
    /// Read this picture and add it as the last keyframe ("+ image", or a file dropped on
    /// the window). A file that cannot be read is a notice; the walk plays on.
    AddImageKeyframe(PathBuf),
    /// Load the model again with LoRA `index` at `strength` (LoRAs are merged into the
    /// weights as they load); a playing walk re-samples its keyframes with it.
    SetLoraStrength {
        index: usize,
        strength: f64,
    },
    /// Jump to this place along the walk, 0 (the first keyframe) to 1 (the last).
    Seek(f64),
    /// The keyframes' seed.
    SetSeed(u64),
    /// Steps between keyframes (the walk's speed: fewer is faster).
    SetStepsBetween(usize),
    /// Refine on or off: diffused in-betweens made in the background while the walk plays,
    /// each replacing its slerp when the walk next passes it.
    SetRefine(bool),
    /// Keyframe `keyframe`'s prompt (0-based), applied at once.
    SetPrompt {
        keyframe: usize,
        text: String,
    },
    /// The weight of part `part` of keyframe `keyframe`'s prompt mix (both 0-based),
    /// applied at once: the walk re-samples that keyframe while it plays.
    SetMixWeight {
        keyframe: usize,
        part: usize,
        weight: f64,
    },
}

impl ViewerApp {
    /// Carries out `command`. `ctx` is the window's: Play asks it for a repaint after each
    /// new frame, fullscreen is a viewport command.
    pub fn run_command(&mut self, ctx: &egui::Context, command: Command) {
        match command {
            Command::Play => self.play(ctx),
            Command::Pause => {
                if let Some(session) = self.model.session() {
                    session.pause();
                }
            }
            Command::Stop => self.stop(),
            Command::NewSeed => self.form.controls.seed = rand::random::<u32>() as u64,
            Command::StartRecording => self.start_recording(),
            Command::StopRecording => {
                let Some(session) = self.model.session_mut() else {
                    return;
                };
                match session.end_recording() {
                    None if session.recording().is_some() => {
                        self.notice = Some(Notice::info(
                            "finishing the lap: the recording ends where the loop begins, so                              it loops seamlessly",
                        ));
                    }
                    outcome => self.report_recording(outcome),
                }
            }
            Command::LoadModel(model) => self.load_model(model),
            Command::SetFullscreen(on) => {
                self.fullscreen = on;
                ctx.send_viewport_cmd(egui::ViewportCommand::Fullscreen(on));
            }
            Command::AddImageKeyframe(path) => self.add_image_keyframe(path),
            Command::SetLoraStrength { index, strength } => self.set_lora_strength(index, strength),
            Command::Seek(fraction) => {
                if let Some(session) = self.model.session() {
                    session.seek(fraction);
                }
            }
            Command::SetSeed(seed) => self.form.controls.seed = seed,
            Command::SetStepsBetween(steps) => {
                self.form.controls.steps_between = steps.clamp(1, MAX_STEPS_BETWEEN);
            }
            Command::SetRefine(on) => self.form.controls.refine = on,
            Command::SetPrompt { .. } | Command::SetMixWeight { .. } => {
                if let Err(problem) = self.edit_prompt(&command) {
                    self.notice = Some(Notice::error(problem));
                }
            }
        }
    }

    /// Carries out [`Command::SetPrompt`] and [`Command::SetMixWeight`]: the row's text
    /// changes and is applied at once (that row only, so other rows' typing stays typing).
    /// A keyframe or part that is not there is an error saying so.
    pub(super) fn edit_prompt(&mut self, command: &Command) -> Result<(), String> {
        match command {
            Command::SetPrompt { keyframe, text } => self.form.set_prompt(*keyframe, text),
            Command::SetMixWeight {
                keyframe,
                part,
                weight,
            } => self.form.set_mix_weight(*keyframe, *part, *weight),
            _ => Ok(()),
        }
    }

    /// Carries out the commands OSC messages brought since the last frame, here with the
    /// buttons' (see [`super::osc`]). One naming a keyframe or part that is not there is
    /// counted with the ignored messages; a notice tells of messages dropped.
    pub(super) fn run_osc_commands(&mut self, ctx: &egui::Context) {
        let commands = match &self.osc {
            Some(osc) => {
                osc.set_repaint(ctx);
                osc.take_commands()
            }
            None => return,
        };
        for command in commands {
            match command {
                Command::SetPrompt { .. } | Command::SetMixWeight { .. } => {
                    if let (Err(problem), Some(osc)) = (self.edit_prompt(&command), &self.osc) {
                        osc.count_ignored(problem);
                    }
                }
                other => self.run_command(ctx, other),
            }
        }
        let Some(stats) = self.osc_stats() else {
            return;
        };
        if stats.dropped() > self.osc_dropped_told {
            self.osc_dropped_told = stats.dropped();
            let last = stats.last_problem.unwrap_or_default();
            self.notice = Some(Notice::error(format!(
                "OSC: ignored {} malformed packets and {} messages so far; last: {last}",
                stats.malformed, stats.ignored
            )));
        }
    }

    /// Reads the picture and adds it as the last keyframe; the running walk gets it with the
    /// next settings sent. An unreadable file changes nothing but the notice.
    fn add_image_keyframe(&mut self, path: PathBuf) {
        match KeyframeImage::read(path) {
            Ok(image) => {
                let name = image.file_name();
                self.form.add_image(image);
                let letter = keyframe_name(self.form.keyframe_fields.len() - 1);
                self.notice = Some(Notice::info(format!("image {letter}: {name}")));
            }
            Err(e) => self.notice = Some(Notice::error(format!("cannot use the image: {e}"))),
        }
    }

    /// Play: start the walk, or resume it, with the typed prompts.
    fn play(&mut self, ctx: &egui::Context) {
        self.form.commit_text();
        let settings = self.checked_settings();
        let warning = settings
            .as_ref()
            .ok()
            .and_then(|s| self.settings_warning(s));
        let Some(session) = self.model.session_mut() else {
            return;
        };
        match settings {
            Ok(settings) => {
                let ctx = ctx.clone();
                session.play(settings, Box::new(move |_| ctx.request_repaint()));
                self.notice = warning.map(Notice::info);
            }
            Err(problem) => {
                // A paused walk still resumes, with the settings it had.
                session.resume();
                self.notice = Some(Notice::error(problem));
            }
        }
    }

    /// Stop: finish a recording, end every pipeline thread.
    pub(super) fn stop(&mut self) {
        let outcome = self.model.session_mut().and_then(Session::stop);
        self.report_recording(outcome);
    }

    /// Records what the walk runs (its frame rate, its prompts in the file's comment), not
    /// what the form may hold unapplied.
    fn start_recording(&mut self) {
        let path = PathBuf::from(self.form.record_path.trim());
        let at_output_size = self.form.record_at_output_size;
        let Some(session) = self.model.session_mut() else {
            return;
        };
        // No settings: nothing plays, and the session says so.
        let options = match session.settings() {
            Some(settings) => RecordOptions {
                fps: settings.target_fps.round() as u32,
                comment: Some(crate::record::provenance(
                    &session.engine().name(),
                    &crate::usecase::keyframe_labels(&settings.endpoints.keyframes),
                )),
                // The source size by default (what was decoded, however it is displayed).
                size: Some(if at_output_size {
                    settings.output_size
                } else {
                    settings.endpoints.image_size
                }),
                ..RecordOptions::default()
            },
            None => RecordOptions::default(),
        };
        self.notice = Some(match session.start_recording(&path, options) {
            Ok(()) => Notice::info(format!("recording to {}", path.display())),
            Err(e) => Notice::error(format!("cannot record: {e}")),
        });
    }

    /// Says how a recording ended, when one did.
    pub(super) fn report_recording(&mut self, outcome: Option<Result<RecordSummary, RecordError>>) {
        match outcome {
            Some(Ok(summary)) => {
                self.notice = Some(Notice::info(format!("saved {summary}")));
                // The next recording goes to a new file.
                self.form.next_record_path();
            }
            Some(Err(e)) => self.notice = Some(Notice::error(format!("recording: {e}"))),
            None => {}
        }
    }
}
