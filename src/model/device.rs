//! Sampling a keyframe on another device than candle's CPU: the traits a GPU implements
//! (`gpu::sample`), and [`SamplingSlot`], which holds one for a model and moves sampling
//! back to the CPU, with a message, when the device fails.
//!
//! The model hands the device what only it knows: the token ids, the start latents, the
//! conditioning and each step's scalars ([`LinearStep`]). The loop itself (the UNet calls
//! with guidance as one batch of two, the scheduler arithmetic) runs on the device, and the
//! latents come back once, at the end.

use std::sync::Arc;

use candle_core::Tensor;
use candle_nn::VarBuilder;
use parking_lot::{Mutex, RwLock};

use super::schedulers::LinearStep;
use super::text::ClipTextConfig;
use super::unet::UNetConfig;
use super::Result;

/// One denoising loop for a device: the steps from `first_step` on.
pub struct DeviceJob<'a> {
    /// The latents at the first step run: txt2img noise times `init_noise_sigma`, or
    /// img2img's noised picture. (1, C, h, w).
    pub latents: &'a Tensor,
    /// The UNet's text context: (1, tokens, dim), or (2, ..) `[negative, prompt]` with
    /// guidance.
    pub context: &'a Tensor,
    /// Each step run: the timestep given to the UNet and the step's scalars.
    pub steps: Vec<(f64, LinearStep)>,
    /// The schedule index of `steps[0]` (for progress: img2img starts part way).
    pub first_step: usize,
    /// Steps in the whole schedule.
    pub num_steps: usize,
    /// Classifier-free guidance scale, when guided (the context has two rows).
    pub guidance: Option<f32>,
}

/// Why a device did not finish.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// `on_step` asked to stop.
    #[error("cancelled")]
    Cancelled,
    /// The device failed (lost, out of memory, a shader error): the CPU takes over.
    #[error("{0}")]
    Failed(String),
}

/// A device that runs a keyframe's text encoder and denoising loop.
pub trait SamplingDevice: Send + Sync {
    /// The device's name, as the heads-up display shows it ("NVIDIA GeForce RTX 4090
    /// (Vulkan)").
    fn label(&self) -> String;
    /// The CLIP text encoder's last hidden state for `ids` (1, tokens, hidden).
    fn encode_text(&self, ids: &[u32]) -> std::result::Result<Tensor, DeviceError>;
    /// Runs `job`; `on_step(i, n)` after each step (schedule index `i`, 1-based, of `n`),
    /// returning `false` to cancel. The denoised latents (1, C, h, w).
    fn denoise(
        &self,
        job: &DeviceJob<'_>,
        on_step: &mut dyn FnMut(usize, usize) -> bool,
    ) -> std::result::Result<Tensor, DeviceError>;
}

/// A model's weights as they load, for a device to copy what it needs.
pub struct DeviceWeights<'a> {
    /// The UNet's weights (diffusers names at the root).
    pub unet: VarBuilder<'static>,
    /// Its config.
    pub unet_config: &'a UNetConfig,
    /// The text encoder's weights (`embeddings.`, `encoder.`, `final_layer_norm.` at the root).
    pub text: VarBuilder<'static>,
    /// Its config.
    pub text_config: &'a ClipTextConfig,
}

/// Makes a [`SamplingDevice`] from a model's weights while they load (the GPU's loader).
pub trait DeviceLoader {
    /// The device for these weights, or why it cannot run them (the CPU samples then).
    fn load(&self, weights: DeviceWeights<'_>) -> Result<Arc<dyn SamplingDevice>>;
}

/// Where a model samples: a device while it works, else the CPU.
#[derive(Default)]
pub struct SamplingSlot {
    device: RwLock<Option<Arc<dyn SamplingDevice>>>,
    /// Why sampling is on the CPU when a device was asked for.
    note: Mutex<Option<String>>,
}

impl SamplingSlot {
    /// A slot with `device`, or on the CPU with `note` saying why.
    pub fn new(device: Option<Arc<dyn SamplingDevice>>, note: Option<String>) -> Self {
        Self {
            device: RwLock::new(device),
            note: Mutex::new(note),
        }
    }

    /// The device, while it has not failed.
    pub fn device(&self) -> Option<Arc<dyn SamplingDevice>> {
        self.device.read().clone()
    }

    /// Moves sampling to the CPU for good after `device` failed with `why`.
    pub fn failed(&self, why: &str) {
        let mut device = self.device.write();
        if let Some(d) = device.take() {
            let note = format!("{} failed: {why}", d.label());
            tracing::warn!("sampling moved to the CPU: {note}");
            *self.note.lock() = Some(note);
        }
    }

    /// Where sampling runs, for the heads-up display: "sampling on <device>", or "sampling
    /// on the CPU" with the reason when a device was asked for.
    pub fn description(&self) -> String {
        match self.device.read().as_ref() {
            Some(d) => format!("sampling on {}", d.label()),
            None => match self.note.lock().as_ref() {
                Some(note) => format!("sampling on the CPU ({note})"),
                None => "sampling on the CPU".to_string(),
            },
        }
    }
}
