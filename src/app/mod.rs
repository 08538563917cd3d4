//! The desktop viewer (eframe + egui on wgpu): prompts, Play, live sliders, the picture
//! upscaled on the GPU, a heads-up display, and recording.
//!
//! The window holds no pipeline logic: [`Session`] runs the stages, [`Controls`] turns the
//! widgets' values into pipeline settings, [`present`] draws frames. Frames reach the
//! screen through the display thread (deadline-paced at the target fps), which asks egui
//! for a repaint after each new frame.

pub mod controls;
pub mod present;
pub mod session;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::gpu::{with_gpu_decoder, DecodedFrames, GpuDecode};
use crate::model::{DecoderKind, Engine};
use crate::pipeline::{Inbetweens, StatsSnapshot};
use crate::record::{RecordOptions, RecordSummary};
use crate::upscale::UpscaleMode;
use crate::usecase::ModelSource;
use crate::walk::{Easing, Interp, LoopMode};
pub use controls::{keyframe_name, Controls, OutputSize};
use present::{Presenter, Shown};
pub use session::{PlayState, RecordingStatus, Session};

/// How the viewer starts.
#[derive(Clone, Debug, Default)]
pub struct ViewerOptions {
    pub model: ModelSource,
    /// Start playing as soon as the model is loaded.
    pub autoplay: bool,
    /// Save a PNG of the window this long after the first frame, then close
    /// (for the screenshot test). A JSON beside it gives the picture's rectangle.
    pub screenshot: Option<(PathBuf, Duration)>,
    /// Where TAESD decodes: see [`GpuDecode`].
    pub gpu_decode: GpuDecode,
    /// The device to decode on. [`ViewerApp::new`] fills it from eframe's wgpu device;
    /// tests may give a headless one.
    pub gpu: Option<GpuTarget>,
    /// Decoded frame size (width, height) instead of the model's default.
    pub source: Option<(u32, u32)>,
}

/// A wgpu device the model's TAESD can be uploaded to.
#[derive(Clone, Debug)]
pub struct GpuTarget {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub adapter: wgpu::AdapterInfo,
}

impl GpuTarget {
    pub fn from_render_state(rs: &egui_wgpu::RenderState) -> Self {
        Self {
            device: rs.device.clone(),
            queue: rs.queue.clone(),
            adapter: rs.adapter.get_info(),
        }
    }

    /// "NVIDIA GeForce RTX 4090 (Vulkan)".
    pub fn adapter_name(&self) -> String {
        format!("{} ({:?})", self.adapter.name, self.adapter.backend)
    }
}

/// A loaded model, and a note for the status line.
struct Loaded {
    engine: Arc<dyn Engine>,
    note: Option<String>,
}

/// Opens the window and runs until it is closed.
pub fn run(options: ViewerOptions) -> anyhow::Result<()> {
    let native = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("dreamwalk")
            .with_inner_size([1480.0, 860.0])
            .with_min_inner_size([720.0, 480.0]),
        renderer: eframe::Renderer::Wgpu,
        ..Default::default()
    };
    eframe::run_native(
        "dreamwalk",
        native,
        Box::new(move |cc| Ok(Box::new(ViewerApp::new(cc, options)))),
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "cannot open the window: {e}. Without a display, use `dreamwalk render` \
             (headless); without a GPU, install Mesa's software one (Debian: \
             mesa-vulkan-drivers libvulkan1)"
        )
    })
}

/// Where the model comes from while it loads.
enum ModelState {
    Loading {
        what: String,
        started: Instant,
        result: Receiver<anyhow::Result<Loaded>>,
    },
    Ready(Box<Session>),
    Failed(String),
}

/// A line for the status area: what happened last.
#[derive(Clone, Debug)]
struct Notice {
    text: String,
    is_error: bool,
}

/// The eframe application.
pub struct ViewerApp {
    model: ModelState,
    /// The model folder field (loads another model).
    model_field: String,
    controls: Controls,
    /// Prompt text as typed; committed into `controls` on Enter or leaving the field, so a
    /// half-typed prompt does not start sampling.
    prompt_fields: Vec<String>,
    negative_field: String,
    /// The controls the running pipeline has.
    applied: Option<Controls>,
    presenter: Option<Presenter>,
    record_path: String,
    /// Record at the output size instead of the frames' own size.
    record_at_output_size: bool,
    notice: Option<Notice>,
    fullscreen: bool,
    show_panels: bool,
    autoplay: bool,
    screenshot: Option<ScreenshotPlan>,
    /// Where the picture was drawn last frame, in points.
    picture_rect: Option<egui::Rect>,
    /// The heads-up display's lines as last drawn (saved with a screenshot).
    hud: Vec<String>,
    gpu_decode: GpuDecode,
    gpu: Option<GpuTarget>,
    source: Option<(u32, u32)>,
}

struct ScreenshotPlan {
    path: PathBuf,
    after: Duration,
    first_frame: Option<Instant>,
    requested: bool,
    done: Arc<parking_lot::Mutex<Option<Result<(), String>>>>,
}

impl ViewerApp {
    /// Builds the app inside eframe (GPU presenter when eframe runs on wgpu).
    pub fn new(cc: &eframe::CreationContext<'_>, mut options: ViewerOptions) -> Self {
        if options.gpu.is_none() {
            options.gpu = cc
                .wgpu_render_state
                .as_ref()
                .map(GpuTarget::from_render_state);
        }
        let mut app = Self::headless(options);
        app.presenter = Some(Presenter::new(cc.wgpu_render_state.as_ref()));
        if !app.presenter.as_ref().is_some_and(Presenter::has_gpu) {
            app.controls.upscale = UpscaleMode::Cpu;
        }
        app
    }

    /// Builds the app without eframe (tests drive it with `egui_kittest`): frames are drawn
    /// as plain egui textures.
    pub fn headless(options: ViewerOptions) -> Self {
        let what = match &options.model.model {
            None => "the built-in demo model".to_string(),
            Some(m) => m.clone(),
        };
        let model = load_in_background(
            what,
            options.model.clone(),
            options.gpu.clone(),
            options.gpu_decode,
        );
        // Replaced by the model's own defaults once it is loaded.
        let controls = Controls::new(&crate::model::ModelDefaults {
            image_size: (1024, 576),
            steps: 20,
            guidance: 7.5,
        });
        Self {
            model,
            model_field: options.model.model.clone().unwrap_or_default(),
            prompt_fields: controls.prompts.clone(),
            negative_field: controls.negative.clone(),
            controls,
            applied: None,
            presenter: None,
            record_path: default_record_path().display().to_string(),
            record_at_output_size: false,
            notice: None,
            fullscreen: false,
            show_panels: true,
            autoplay: options.autoplay,
            screenshot: options.screenshot.map(|(path, after)| ScreenshotPlan {
                path,
                after,
                first_frame: None,
                requested: false,
                done: Default::default(),
            }),
            picture_rect: None,
            hud: Vec::new(),
            source: options.source,
            gpu_decode: options.gpu_decode,
            gpu: options.gpu,
        }
    }

    /// The session, once the model is loaded.
    pub fn session(&self) -> Option<&Session> {
        match &self.model {
            ModelState::Ready(session) => Some(session),
            _ => None,
        }
    }

    pub fn session_mut(&mut self) -> Option<&mut Session> {
        match &mut self.model {
            ModelState::Ready(session) => Some(session),
            _ => None,
        }
    }

    /// The values of the window's widgets.
    pub fn controls(&self) -> &Controls {
        &self.controls
    }

    /// The last message shown in the status area.
    pub fn notice(&self) -> Option<&str> {
        self.notice.as_ref().map(|n| n.text.as_str())
    }

    /// Waits (up to `timeout`) for the model to finish loading; `true` when it is ready.
    pub fn wait_for_model(&mut self, timeout: Duration) -> bool {
        if let ModelState::Loading { result, .. } = &self.model {
            if let Ok(loaded) = result.recv_timeout(timeout) {
                self.model_loaded(loaded);
            }
        }
        matches!(self.model, ModelState::Ready(_))
    }

    fn model_loaded(&mut self, loaded: anyhow::Result<Loaded>) {
        match loaded {
            Ok(Loaded { engine, note }) => {
                let defaults = engine.defaults();
                self.controls.sampler_steps = defaults.steps;
                self.controls.guidance = defaults.guidance;
                if !engine.decoders().contains(&self.controls.decoder) {
                    self.controls.decoder = engine.decoders()[0];
                }
                self.notice = Some(match note {
                    None => Notice {
                        text: format!("loaded {}", engine.name()),
                        is_error: false,
                    },
                    Some(note) => Notice {
                        text: format!("loaded {}; {note}", engine.name()),
                        is_error: true,
                    },
                });
                self.model = ModelState::Ready(Box::new(Session::new(engine)));
            }
            Err(e) => {
                let text = format!("cannot load the model: {e:#}");
                self.notice = Some(Notice {
                    text: text.clone(),
                    is_error: true,
                });
                self.model = ModelState::Failed(text);
            }
        }
    }

    fn load_model(&mut self, model: Option<String>) {
        if let Some(session) = self.session_mut() {
            session.stop();
        }
        self.applied = None;
        let what = model
            .clone()
            .unwrap_or_else(|| "the built-in demo model".into());
        self.model = load_in_background(
            what,
            ModelSource { model, taesd: None },
            self.gpu.clone(),
            self.gpu_decode,
        );
    }

    fn image_size(&self) -> (u32, u32) {
        self.source
            .or_else(|| self.session().map(|s| s.engine().defaults().image_size))
            .unwrap_or((1024, 576))
    }

    /// Play: start the walk, or resume it.
    pub fn play(&mut self, ctx: &egui::Context) {
        self.commit_text_fields();
        if let Some(problem) = self.controls.problem() {
            self.notice = Some(Notice {
                text: problem,
                is_error: true,
            });
            // A paused walk still resumes, with the settings it had.
            if let Some(session) = self.session() {
                session.resume();
            }
            return;
        }
        let settings = self.controls.settings(self.image_size());
        let ctx = ctx.clone();
        let Some(session) = self.session_mut() else {
            return;
        };
        session.play(settings, Box::new(move |_| ctx.request_repaint()));
        self.applied = Some(self.controls.clone());
        self.notice = None;
    }

    pub fn pause(&mut self) {
        if let Some(session) = self.session() {
            session.pause();
        }
    }

    /// Stop: finish a recording, end every pipeline thread.
    pub fn stop(&mut self) {
        let outcome = self.session_mut().and_then(Session::stop);
        self.report_recording(outcome);
        self.applied = None;
    }

    pub fn new_seed(&mut self) {
        self.controls.seed = rand::random::<u32>() as u64;
    }

    pub fn start_recording(&mut self) {
        let path = PathBuf::from(self.record_path.trim());
        let mut options = RecordOptions {
            fps: self.controls.target_fps,
            comment: self
                .session()
                .map(|s| crate::record::provenance(&s.engine().name(), &self.controls.prompts)),
            ..RecordOptions::default()
        };
        // The source size by default (what was decoded, however it is displayed).
        options.size = Some(if self.record_at_output_size {
            self.controls.output.size()
        } else {
            self.image_size()
        });
        let Some(session) = self.session_mut() else {
            return;
        };
        let result = session.start_recording(&path, options);
        self.notice = Some(match result {
            Ok(()) => Notice {
                text: format!("recording to {}", path.display()),
                is_error: false,
            },
            Err(e) => Notice {
                text: format!("cannot record: {e}"),
                is_error: true,
            },
        });
    }

    pub fn stop_recording(&mut self) {
        let outcome = self.session_mut().and_then(Session::stop_recording);
        self.report_recording(outcome);
    }

    fn report_recording(
        &mut self,
        outcome: Option<Result<RecordSummary, crate::record::RecordError>>,
    ) {
        match outcome {
            Some(Ok(summary)) => {
                self.notice = Some(Notice {
                    text: format!("saved {summary}"),
                    is_error: false,
                });
                // The next recording goes to a new file.
                self.record_path = default_record_path().display().to_string();
            }
            Some(Err(e)) => {
                self.notice = Some(Notice {
                    text: format!("recording: {e}"),
                    is_error: true,
                })
            }
            None => {}
        }
    }

    fn commit_text_fields(&mut self) {
        self.controls.prompts = self.prompt_fields.clone();
        self.controls.negative = self.negative_field.clone();
    }

    /// Sends changed controls to the running walk.
    fn apply_controls(&mut self) {
        if self.applied.as_ref() == Some(&self.controls) {
            return;
        }
        if let Some(problem) = self.controls.problem() {
            // The walk plays on with what it has; say why the change is not taken.
            if self
                .session()
                .is_some_and(|s| s.state() != PlayState::Stopped)
            {
                self.notice = Some(Notice {
                    text: problem,
                    is_error: true,
                });
            }
            return;
        }
        let settings = self.controls.settings(self.image_size());
        if let Some(session) = self.session() {
            if session.state() != PlayState::Stopped {
                session.apply(&settings);
                self.applied = Some(self.controls.clone());
            }
        }
    }

    /// Housekeeping each frame: the model loader, the recording, the screenshot.
    fn poll(&mut self, ctx: &egui::Context) {
        if let ModelState::Loading { result, .. } = &self.model {
            if let Ok(loaded) = result.try_recv() {
                self.model_loaded(loaded);
                if self.autoplay {
                    self.play(ctx);
                }
            } else {
                ctx.request_repaint_after(Duration::from_millis(100));
            }
        }
        let outcome = self.session_mut().and_then(Session::poll);
        self.report_recording(outcome);
        if let Some(session) = self.session() {
            // Progress bars and the recording clock move without new frames.
            let busy = session.recording().is_some()
                || session
                    .stats()
                    .is_some_and(|s| s.endpoint_progress.is_some());
            if busy {
                ctx.request_repaint_after(Duration::from_millis(100));
            }
        }
    }

    /// The whole window.
    pub fn show(&mut self, ui: &mut egui::Ui, render_state: Option<&egui_wgpu::RenderState>) {
        let ctx = ui.ctx().clone();
        self.poll(&ctx);
        if self.presenter.is_none() {
            self.presenter = Some(Presenter::new(render_state));
        }
        if self.controls.upscale == UpscaleMode::Gpu
            && !self.presenter.as_ref().is_some_and(Presenter::has_gpu)
        {
            // No GPU adapter: the CPU path, as the Upscale choice says.
            self.controls.upscale = UpscaleMode::Cpu;
        }
        if ctx.input(|i| i.key_pressed(egui::Key::F11)) {
            self.set_fullscreen(&ctx, !self.fullscreen);
        }
        if ctx.input(|i| i.key_pressed(egui::Key::Escape)) && self.fullscreen {
            self.set_fullscreen(&ctx, false);
        }
        if self.show_panels {
            egui::Panel::top("toolbar").show(ui, |ui| self.toolbar(ui));
            egui::Panel::left("controls")
                .default_size(330.0)
                .show(ui, |ui| {
                    egui::ScrollArea::vertical().show(ui, |ui| self.control_panel(ui));
                });
        }
        egui::CentralPanel::default()
            .frame(egui::Frame::NONE.fill(egui::Color32::from_gray(8)))
            .show(ui, |ui| self.picture(ui, render_state));
        self.apply_controls();
        self.screenshot_step(&ctx);
    }

    fn set_fullscreen(&mut self, ctx: &egui::Context, on: bool) {
        self.fullscreen = on;
        self.show_panels = !on;
        ctx.send_viewport_cmd(egui::ViewportCommand::Fullscreen(on));
    }

    fn toolbar(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        ui.horizontal(|ui| {
            ui.heading("dreamwalk");
            ui.separator();
            match &self.model {
                ModelState::Ready(session) => {
                    let name = session.engine().name();
                    let text = egui::RichText::new(&name).strong();
                    if name.contains("random weights") {
                        ui.label(text.color(egui::Color32::from_rgb(255, 190, 60)))
                            .on_hover_text(
                                "No weights were given: a tiny model with random weights \
                                 shows the pipeline running. Start with --model DIR for \
                                 real images.",
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
            ui.separator();
            let state = self
                .session()
                .map(Session::state)
                .unwrap_or(PlayState::Stopped);
            let ready = self.session().is_some();
            if state == PlayState::Playing {
                if ui.button("Pause").clicked() {
                    self.pause();
                }
            } else if ui.add_enabled(ready, egui::Button::new("Play")).clicked() {
                self.play(&ctx);
            }
            if ui
                .add_enabled(state != PlayState::Stopped, egui::Button::new("Stop"))
                .clicked()
            {
                self.stop();
            }
            if ui.button("New seed").clicked() {
                self.new_seed();
            }
            ui.separator();
            let recording = self.session().and_then(Session::recording);
            match recording {
                Some(status) => {
                    if ui
                        .button(egui::RichText::new("Stop recording").color(egui::Color32::RED))
                        .clicked()
                    {
                        self.stop_recording();
                    }
                    ui.label(format!(
                        "{} · {} frames · queue {}/{}",
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
                        self.start_recording();
                    }
                }
            }
            ui.separator();
            let mut fullscreen = self.fullscreen;
            if ui.toggle_value(&mut fullscreen, "Fullscreen").changed() {
                self.set_fullscreen(&ctx, fullscreen);
            }
        });
        if let Some(notice) = &self.notice {
            let color = if notice.is_error {
                egui::Color32::LIGHT_RED
            } else {
                ui.visuals().weak_text_color()
            };
            ui.colored_label(color, &notice.text);
        }
    }

    fn control_panel(&mut self, ui: &mut egui::Ui) {
        ui.heading("Prompts");
        let mut remove = None;
        let mut commit = false;
        let count = self.prompt_fields.len();
        for (i, prompt) in self.prompt_fields.iter_mut().enumerate() {
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
            self.prompt_fields.remove(i);
            commit = true;
        }
        ui.horizontal(|ui| {
            if ui.button("+ keyframe").clicked() {
                self.prompt_fields.push(String::new());
            }
            let edited = self.prompt_fields != self.controls.prompts
                || self.negative_field != self.controls.negative;
            if ui
                .add_enabled(edited, egui::Button::new("Apply prompts"))
                .on_hover_text("Enter in a field does the same")
                .clicked()
            {
                self.commit_text_fields();
            }
        });
        let label = ui.label("Negative prompt");
        let negative = ui
            .add(
                egui::TextEdit::singleline(&mut self.negative_field)
                    .hint_text("what to avoid")
                    .desired_width(280.0),
            )
            .labelled_by(label.id);
        // Leaving a field (Enter included) applies what was typed.
        if commit || negative.lost_focus() {
            self.commit_text_fields();
        }

        let engine = self.session().map(|s| s.engine().clone());
        ui.separator();
        ui.heading("Keyframes");
        ui.horizontal(|ui| {
            let label = ui.label("Seed");
            ui.add(egui::DragValue::new(&mut self.controls.seed).range(0..=u32::MAX as u64))
                .labelled_by(label.id);
            if ui.button("New").on_hover_text("New seed").clicked() {
                self.new_seed();
            }
        });
        ui.add(
            egui::Slider::new(
                &mut self.controls.sampler_steps,
                1..=controls::MAX_SAMPLER_STEPS,
            )
            .text("Sampler steps"),
        );
        ui.add(
            egui::Slider::new(&mut self.controls.guidance, 0.0..=controls::MAX_GUIDANCE)
                .step_by(0.5)
                .text("Guidance"),
        );
        if let Some(progress) = self
            .session()
            .and_then(Session::stats)
            .and_then(|s| s.endpoint_progress.map(|p| (p, s.phase)))
        {
            let ((done, total), phase) = progress;
            ui.add(
                egui::ProgressBar::new(done as f32 / total.max(1) as f32)
                    .text(phase)
                    .animate(true),
            );
        }

        ui.separator();
        ui.heading("Walk");
        ui.add(
            egui::Slider::new(
                &mut self.controls.steps_between,
                1..=controls::MAX_STEPS_BETWEEN,
            )
            .logarithmic(true)
            .text("Steps between keyframes"),
        );
        choice(
            ui,
            "Interpolation",
            &mut self.controls.interp,
            &[(Interp::Slerp, "slerp"), (Interp::Lerp, "lerp")],
        );
        choice(
            ui,
            "Easing",
            &mut self.controls.easing,
            &[(Easing::Linear, "linear"), (Easing::InOut, "ease in-out")],
        );
        choice(
            ui,
            "Loop",
            &mut self.controls.loop_mode,
            &[
                (LoopMode::Once, "once"),
                (LoopMode::PingPong, "ping-pong"),
                (LoopMode::Endless, "endless"),
            ],
        );

        ui.separator();
        ui.heading("Frames");
        let mut auto = self.controls.inbetweens == Inbetweens::Auto;
        let mut k = match self.controls.inbetweens {
            Inbetweens::Fixed(k) => k,
            Inbetweens::Auto => self
                .session()
                .and_then(Session::stats)
                .map_or(3, |s| s.inbetweens),
        };
        ui.horizontal(|ui| {
            ui.add_enabled(
                !auto,
                egui::Slider::new(&mut k, 0..=controls::MAX_INBETWEENS).text("In-betweens"),
            );
            ui.checkbox(&mut auto, "auto");
        });
        self.controls.inbetweens = if auto {
            Inbetweens::Auto
        } else {
            Inbetweens::Fixed(k)
        };
        ui.add(
            egui::Slider::new(&mut self.controls.target_fps, controls::FPS_RANGE)
                .text("Target fps"),
        );

        ui.separator();
        ui.heading("Picture");
        let decoders = engine
            .as_ref()
            .map_or_else(|| vec![DecoderKind::Taesd], |e| e.decoders());
        let decoder_choices: Vec<(DecoderKind, &str)> =
            decoders.iter().map(|d| (*d, d.label())).collect();
        choice(ui, "Decoder", &mut self.controls.decoder, &decoder_choices);
        let has_gpu = self.presenter.as_ref().is_some_and(Presenter::has_gpu);
        let mut upscale_choices = vec![
            (UpscaleMode::Cpu, "CPU bicubic"),
            (UpscaleMode::None, "none"),
        ];
        if has_gpu {
            upscale_choices.insert(0, (UpscaleMode::Gpu, "GPU bicubic"));
        }
        choice(ui, "Upscale", &mut self.controls.upscale, &upscale_choices);
        if !has_gpu {
            ui.weak("No GPU adapter: frames are upscaled on the CPU.");
        }
        let size_choices: Vec<(OutputSize, &str)> =
            OutputSize::ALL.iter().map(|s| (*s, s.label())).collect();
        choice(ui, "Output size", &mut self.controls.output, &size_choices);

        ui.separator();
        ui.heading("Record");
        ui.horizontal(|ui| {
            let label = ui.label("Record file");
            ui.add(egui::TextEdit::singleline(&mut self.record_path).desired_width(220.0))
                .labelled_by(label.id);
        });
        ui.weak(".mp4 (H.264), .y4m, or a folder / .png for a PNG sequence");
        let source = self.image_size();
        let output = self.controls.output.size();
        ui.checkbox(
            &mut self.record_at_output_size,
            format!(
                "Record at {}x{} (else the source size, {}x{})",
                output.0, output.1, source.0, source.1
            ),
        );

        ui.separator();
        ui.collapsing("Model", |ui| {
            ui.label("Diffusers folder or Hugging Face id (empty: demo model)");
            ui.text_edit_singleline(&mut self.model_field);
            if ui.button("Load").clicked() {
                let field = self.model_field.trim();
                let model = (!field.is_empty()).then(|| field.to_string());
                self.load_model(model);
            }
        });
    }

    fn picture(&mut self, ui: &mut egui::Ui, render_state: Option<&egui_wgpu::RenderState>) {
        let area = ui.available_rect_before_wrap();
        let frame = self.session().and_then(Session::current_frame);
        let stats = self.session().and_then(Session::stats);
        let Some(frame) = frame else {
            self.picture_rect = None;
            ui.centered_and_justified(|ui| match &self.model {
                ModelState::Failed(text) => {
                    ui.colored_label(egui::Color32::LIGHT_RED, text);
                }
                ModelState::Loading { what, .. } => {
                    ui.label(format!("loading {what}…"));
                }
                ModelState::Ready(_) => match &stats {
                    Some(s) if s.last_error.is_some() => {
                        ui.colored_label(
                            egui::Color32::LIGHT_RED,
                            s.last_error.clone().unwrap_or_default(),
                        );
                    }
                    Some(s) => {
                        ui.label(format!("{}…", s.phase));
                    }
                    None => {
                        ui.label("Type two prompts and press Play");
                    }
                },
            });
            return;
        };
        let upscale = self
            .session()
            .and_then(Session::settings)
            .map_or(self.controls.upscale, |s| s.upscale);
        let target = match upscale {
            UpscaleMode::Gpu => self.controls.output.size(),
            _ => frame.image.size(),
        };
        let shown: Result<Shown, String> = match (self.presenter.as_mut(), render_state) {
            (Some(Presenter::Gpu(gpu)), Some(rs)) => {
                gpu.show(rs, &frame, target).map_err(|e| e.to_string())
            }
            (Some(Presenter::Cpu(cpu)), _) => cpu.show(ui.ctx(), &frame).map_err(|e| e.to_string()),
            _ => Err("no presenter".into()),
        };
        let shown = match shown {
            Ok(shown) => shown,
            Err(e) => {
                ui.colored_label(egui::Color32::LIGHT_RED, format!("cannot draw: {e}"));
                return;
            }
        };
        let rect = fit(area, shown.size);
        self.picture_rect = Some(rect);
        ui.painter().image(
            shown.texture,
            rect,
            egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0)),
            egui::Color32::WHITE,
        );
        if let Some(plan) = &mut self.screenshot {
            plan.first_frame.get_or_insert_with(Instant::now);
        }
        self.hud = self.hud_lines(&frame, stats.as_ref(), shown.size, upscale);
        draw_hud(ui, area, &self.hud, stats.as_ref());
    }

    fn hud_lines(
        &self,
        frame: &crate::pipeline::Frame,
        stats: Option<&StatsSnapshot>,
        shown: (u32, u32),
        upscale: UpscaleMode,
    ) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(session) = self.session() {
            let decoder = session
                .settings()
                .map_or(self.controls.decoder, |s| s.decoder);
            lines.push(format!(
                "{} · {}",
                session.engine().name(),
                session.engine().decoder_description(decoder)
            ));
        }
        let presenter = self
            .presenter
            .as_ref()
            .map(Presenter::describe)
            .unwrap_or_default();
        let (w, h) = frame.image.size();
        lines.push(match upscale {
            UpscaleMode::Gpu => format!(
                "{w}x{h} → {}x{} GPU bicubic · {presenter}",
                shown.0, shown.1
            ),
            UpscaleMode::Cpu => format!("{w}x{h} CPU bicubic · drawn by {presenter}"),
            UpscaleMode::None => format!("{w}x{h} not upscaled · drawn by {presenter}"),
        });
        if let Some(s) = stats {
            // GPU upscaling happens at draw time, outside the pipeline's timings.
            let upscale_time = match upscale {
                UpscaleMode::Cpu => format!(" · upscale {:.1} ms", s.upscale_ms),
                UpscaleMode::Gpu | UpscaleMode::None => String::new(),
            };
            // In-betweens of frames kept on the GPU are blended by the present shader.
            let inbetween_time = if frame.image.is_on_gpu() {
                "in-betweens in the shader".to_string()
            } else {
                format!("in-between {:.1} ms", s.inbetween_ms)
            };
            lines.push(format!(
                "{:.1} / {} fps · decode {:.0} ms · {inbetween_time}{upscale_time}",
                s.shown_fps, self.controls.target_fps, s.decode_ms
            ));
            lines.push(format!(
                "buffer {}/{} · underruns {} · frame {} · {} in-betweens",
                s.buffer_fill, s.buffer_capacity, s.underruns, frame.index, s.inbetweens
            ));
            let prompts = self.controls.prompts.len().max(2);
            let (pair, t) = s.position;
            lines.push(format!(
                "keyframes {} → {} · {:.0}% · {}",
                keyframe_name(pair % prompts),
                keyframe_name((pair + 1) % prompts),
                t * 100.0,
                s.phase
            ));
        }
        lines
    }

    /// Takes the screenshot when it is due, saves it, then closes the window.
    fn screenshot_step(&mut self, ctx: &egui::Context) {
        let Some(plan) = &mut self.screenshot else {
            return;
        };
        if let Some(outcome) = plan.done.lock().take() {
            match outcome {
                Ok(()) => eprintln!("dreamwalk: saved {}", plan.path.display()),
                Err(e) => eprintln!("dreamwalk: screenshot failed: {e}"),
            }
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
            return;
        }
        let due = plan.first_frame.is_some_and(|t| t.elapsed() >= plan.after);
        if due && !plan.requested {
            plan.requested = true;
            let (path, done, hud) = (plan.path.clone(), plan.done.clone(), self.hud.clone());
            let pixels_per_point = ctx.pixels_per_point();
            let rect = self.picture_rect.map(|r| {
                [
                    r.min.x * pixels_per_point,
                    r.min.y * pixels_per_point,
                    r.max.x * pixels_per_point,
                    r.max.y * pixels_per_point,
                ]
            });
            let repaint = ctx.clone();
            ctx.send_viewport_cmd(egui::ViewportCommand::Screenshot(
                egui::ScreenshotCallback::new(move |image| {
                    *done.lock() = Some(save_screenshot(&path, &image, rect, &hud));
                    repaint.request_repaint();
                }),
            ));
        }
        if plan.first_frame.is_some() {
            ctx.request_repaint_after(Duration::from_millis(100));
        }
    }
}

impl eframe::App for ViewerApp {
    fn ui(&mut self, ui: &mut egui::Ui, frame: &mut eframe::Frame) {
        let render_state = frame.wgpu_render_state().cloned();
        self.show(ui, render_state.as_ref());
    }

    fn on_exit(&mut self) {
        // Finish a recording and join every thread before the window goes.
        self.stop();
    }
}

fn load_in_background(
    what: String,
    args: ModelSource,
    gpu: Option<GpuTarget>,
    gpu_decode: GpuDecode,
) -> ModelState {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let spawned = std::thread::Builder::new()
        .name("model-loader".into())
        .spawn(move || {
            let loaded = crate::usecase::load_engine(&args)
                .map_err(anyhow::Error::from)
                .map(|engine| {
                    let (engine, note) = match &gpu {
                        // Frames decoded on eframe's device stay there for the present shader.
                        Some(g) => with_gpu_decoder(
                            engine,
                            &g.device,
                            &g.queue,
                            &g.adapter,
                            gpu_decode,
                            DecodedFrames::StayOnGpu,
                        ),
                        None => (engine, None),
                    };
                    Loaded { engine, note }
                });
            let _ = tx.send(loaded);
        });
    match spawned {
        Ok(_) => ModelState::Loading {
            what,
            started: Instant::now(),
            result: rx,
        },
        Err(e) => ModelState::Failed(format!("cannot start the model loader: {e}")),
    }
}

/// `~/Videos/dreamwalk-<time>.mp4` when there is a Videos folder, else in the working folder.
pub fn default_record_path() -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let name = format!("dreamwalk-{}.mp4", format_timestamp(stamp));
    match dirs::video_dir().filter(|d| d.is_dir()) {
        Some(dir) => dir.join(name),
        None => Path::new(".").join(name),
    }
}

/// `YYYYMMDD-HHMMSS` (UTC) of a Unix time.
fn format_timestamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn format_elapsed(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}", s / 60, s % 60)
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

/// The largest rectangle of `size`'s aspect inside `area`, centred.
fn fit(area: egui::Rect, size: (u32, u32)) -> egui::Rect {
    let aspect = size.0 as f32 / size.1.max(1) as f32;
    let mut w = area.width();
    let mut h = w / aspect;
    if h > area.height() {
        h = area.height();
        w = h * aspect;
    }
    egui::Rect::from_center_size(area.center(), egui::vec2(w, h))
}

fn draw_hud(ui: &egui::Ui, area: egui::Rect, lines: &[String], stats: Option<&StatsSnapshot>) {
    let painter = ui.painter();
    let font = egui::FontId::monospace(13.0);
    let line_height = 17.0;
    let width = lines
        .iter()
        .map(|l| l.chars().count() as f32 * 7.9)
        .fold(200.0, f32::max);
    let bar_height = if stats.is_some() { 10.0 } else { 0.0 };
    let rect = egui::Rect::from_min_size(
        area.min + egui::vec2(10.0, 10.0),
        egui::vec2(
            width + 16.0,
            lines.len() as f32 * line_height + 12.0 + bar_height,
        ),
    );
    painter.rect_filled(rect, 4.0, egui::Color32::from_black_alpha(170));
    for (i, line) in lines.iter().enumerate() {
        painter.text(
            rect.min + egui::vec2(8.0, 6.0 + i as f32 * line_height),
            egui::Align2::LEFT_TOP,
            line,
            font.clone(),
            egui::Color32::from_gray(230),
        );
    }
    if let Some(s) = stats {
        // The buffer's fill as a bar: full is healthy, empty means the display starves.
        let fill = s.buffer_fill as f32 / s.buffer_capacity.max(1) as f32;
        let bar = egui::Rect::from_min_size(
            egui::pos2(rect.min.x + 8.0, rect.max.y - 12.0),
            egui::vec2(width, 6.0),
        );
        painter.rect_filled(bar, 2.0, egui::Color32::from_gray(60));
        let color = if fill < 0.25 {
            egui::Color32::from_rgb(230, 80, 60)
        } else {
            egui::Color32::from_rgb(90, 200, 120)
        };
        painter.rect_filled(
            egui::Rect::from_min_size(bar.min, egui::vec2(width * fill, 6.0)),
            2.0,
            color,
        );
    }
}

/// Writes the screenshot as PNG, and beside it as JSON the picture's rectangle (pixels) and
/// the heads-up display's lines.
fn save_screenshot(
    path: &Path,
    image: &egui::ColorImage,
    picture: Option<[f32; 4]>,
    hud: &[String],
) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let [w, h] = image.size;
    let rgba: Vec<u8> = image.pixels.iter().flat_map(|c| c.to_array()).collect();
    let frame = crate::frame::RgbaImage::from_pixels(w as u32, h as u32, rgba)
        .ok_or_else(|| "screenshot has the wrong number of pixels".to_string())?;
    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), frame.width, frame.height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder
        .write_header()
        .and_then(|mut writer| writer.write_image_data(&frame.to_rgb()))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let json = serde_json::json!({ "width": w, "height": h, "picture": picture, "hud": hud });
    std::fs::write(path.with_extension("json"), json.to_string())
        .map_err(|e| format!("{}: {e}", path.display()))
}
