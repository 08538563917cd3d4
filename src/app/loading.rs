//! Loading a model in the background, so the window draws (a spinner, a clock) while
//! weights are read: [`crate::usecase::load_engine`] on a thread, then, when the window has a
//! wgpu device, [`crate::gpu::with_gpu_decoder`] to move TAESD onto it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::session::Session;
use super::{Notice, ViewerApp};
use crate::gpu::sample::{GpuSamplerLoader, SamplePrecision};
use crate::gpu::{with_gpu_decoder, DecodedFrames, GpuDecode};
use crate::model::device::DeviceLoader;
use crate::model::Engine;
use crate::usecase::ModelSource;

/// A wgpu device the model's TAESD can be uploaded to.
#[derive(Clone, Debug)]
pub struct GpuTarget {
    /// The device (eframe's, so decoded frames can be drawn without a copy).
    pub device: wgpu::Device,
    /// Its queue.
    pub queue: wgpu::Queue,
    /// The adapter it runs on: whether the GPU decoder is worth it, and its name.
    pub adapter: wgpu::AdapterInfo,
}

impl GpuTarget {
    /// eframe's device.
    pub fn from_render_state(rs: &egui_wgpu::RenderState) -> Self {
        Self {
            device: rs.device.clone(),
            queue: rs.queue.clone(),
            adapter: rs.adapter.get_info(),
        }
    }

    /// "NVIDIA GeForce RTX 4090 (Vulkan)": see [`crate::gpu::adapter_label`].
    pub fn adapter_name(&self) -> String {
        crate::gpu::adapter_label(&self.adapter)
    }
}

/// A loaded model, and a note for the status line.
pub(super) struct Loaded {
    engine: Arc<dyn Engine>,
    note: Option<String>,
}

/// Where the model comes from while it loads.
pub(super) enum ModelState {
    Loading {
        /// The model, in words ("the built-in demo model").
        what: String,
        started: Instant,
        result: Receiver<anyhow::Result<Loaded>>,
    },
    Ready(Box<Session>),
    Failed(String),
}

impl ModelState {
    /// The session, once the model is loaded.
    pub fn session(&self) -> Option<&Session> {
        match self {
            ModelState::Ready(session) => Some(session),
            _ => None,
        }
    }

    pub fn session_mut(&mut self) -> Option<&mut Session> {
        match self {
            ModelState::Ready(session) => Some(session),
            _ => None,
        }
    }
}

/// How models load: which GPU, if any, gets the TAESD decoder and the keyframes' sampling.
pub(super) struct Loader {
    pub gpu: Option<GpuTarget>,
    pub gpu_decode: GpuDecode,
    pub gpu_sampling: GpuDecode,
    pub gpu_precision: SamplePrecision,
}

impl Loader {
    /// Starts loading `source` on a thread.
    pub fn start(&self, source: ModelSource) -> ModelState {
        let what = source
            .model
            .clone()
            .unwrap_or_else(|| "the built-in demo model".into());
        let (gpu, gpu_decode, gpu_sampling) =
            (self.gpu.clone(), self.gpu_decode, self.gpu_sampling);
        let precision = self.gpu_precision;
        let (tx, rx) = crossbeam_channel::bounded(1);
        let spawned = std::thread::Builder::new()
            .name("model-loader".into())
            .spawn(move || {
                // Keyframes are sampled on eframe's device too when it is one to use.
                let sampling = gpu
                    .as_ref()
                    .filter(|g| gpu_sampling.wants(g.adapter.device_type))
                    .map(|g| GpuSamplerLoader {
                        device: g.device.clone(),
                        queue: g.queue.clone(),
                        adapter: g.adapter.clone(),
                        choice: gpu_sampling,
                        precision,
                    });
                let sampling = sampling.as_ref().map(|l| l as &dyn DeviceLoader);
                let loaded = crate::usecase::load_engine_on(&source, sampling)
                    .map_err(anyhow::Error::from)
                    .map(|engine| {
                        let (engine, note) = match &gpu {
                            // Frames decoded on eframe's device stay there for the present
                            // shader.
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
}

impl ViewerApp {
    /// Waits (up to `timeout`) for the model to finish loading; `true` when it is ready.
    pub fn wait_for_model(&mut self, timeout: Duration) -> bool {
        if let ModelState::Loading { result, .. } = &self.model {
            if let Ok(loaded) = result.recv_timeout(timeout) {
                self.model_loaded(loaded);
            }
        }
        matches!(self.model, ModelState::Ready(_))
    }

    /// Takes a finished load, if there is one; `true` when one was taken.
    pub(super) fn poll_loading(&mut self) -> bool {
        let ModelState::Loading { result, .. } = &self.model else {
            return false;
        };
        match result.try_recv() {
            Ok(loaded) => {
                self.model_loaded(loaded);
                true
            }
            Err(_) => false,
        }
    }

    /// Starts loading another model; the walk on the current one ends.
    pub(super) fn load_model(&mut self, model: Option<String>) {
        if let Some(session) = self.model.session_mut() {
            session.stop();
        }
        // Another model: the LoRAs and single-file options were for the one before.
        self.model_source = ModelSource {
            model,
            taesd: self.model_source.taesd.clone(),
            ..Default::default()
        };
        self.model = self.loader.start(self.model_source.clone());
    }

    /// Loads the model again with LoRA `index` at `strength`; a walk that was playing
    /// plays again once it has loaded, sampling its keyframes with the new weights.
    pub(super) fn set_lora_strength(&mut self, index: usize, strength: f64) {
        let Some(spec) = self.model_source.loras.get_mut(index) else {
            return;
        };
        if spec.strength == strength {
            return;
        }
        spec.strength = strength;
        let playing = self
            .model
            .session()
            .is_some_and(|s| s.state() == super::PlayState::Playing);
        if let Some(session) = self.model.session_mut() {
            session.stop();
        }
        self.autoplay = playing;
        self.model = self.loader.start(self.model_source.clone());
    }

    /// The form takes the model's defaults, the status line says what loaded, and the
    /// settings are checked against it (a `--source` size it cannot decode is said now,
    /// not at Play).
    fn model_loaded(&mut self, loaded: anyhow::Result<Loaded>) {
        let Loaded { engine, note } = match loaded {
            Ok(loaded) => loaded,
            Err(e) => {
                let text = format!("cannot load the model: {e:#}");
                self.notice = Some(Notice::error(text.clone()));
                self.model = ModelState::Failed(text);
                return;
            }
        };
        let controls = &mut self.form.controls;
        let defaults = engine.defaults();
        controls.sampler_steps = defaults.steps;
        controls.guidance = defaults.guidance;
        if !engine.decoders().contains(&controls.decoder) {
            controls.decoder = engine.decoders()[0];
        }
        self.model = ModelState::Ready(Box::new(Session::new(engine.clone())));
        self.form.loras = self
            .model_source
            .loras
            .iter()
            .map(|spec| {
                let name = spec.path.file_stem().unwrap_or(spec.path.as_os_str());
                (name.to_string_lossy().into_owned(), spec.strength)
            })
            .collect();
        let mut text = format!("loaded {}", engine.name());
        let mut is_error = false;
        for problem in [note, self.checked_settings().err()].into_iter().flatten() {
            text = format!("{text}; {problem}");
            is_error = true;
        }
        self.notice = Some(Notice { text, is_error });
    }
}
