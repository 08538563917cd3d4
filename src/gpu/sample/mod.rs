//! Keyframes sampled on the GPU: the CLIP text encoder, every UNet call (guidance as one
//! batch of two) and the scheduler's arithmetic run as WGSL kernels (`gpu::nn`) on one
//! device; the latents come back once, when the keyframe is done.
//!
//! [`GpuSampler`] is a [`SamplingDevice`]: a `StableDiffusion` loaded with a
//! [`GpuSamplerLoader`] hands it each keyframe, and falls back to its CPU model for good
//! (the keyframe sampled again there, nothing lost) if the device fails.
//!
//! The weight matrices are f32 or, where the device has `SHADER_F16`, f16
//! ([`SamplePrecision`]): half the memory and the bandwidth, within the fixtures' tolerances
//! (README, "GPU sampling", has the measured differences).

mod clip;
mod layers;
mod unet;
mod weights;

use std::sync::Arc;

use candle_core::{Device, Tensor};
use parking_lot::Mutex;

pub use self::clip::GpuClip;
pub use self::unet::GpuUNet;
use super::nn::{GpuTensor, Nn, NnOptions, Precision};
use super::{GpuDecode, GpuError};
use crate::model::device::{DeviceError, DeviceJob, DeviceLoader, DeviceWeights, SamplingDevice};
use crate::model::{ModelError, Result};

/// The text encoder and UNet of one model on one device.
pub struct GpuSampler {
    nn: Nn,
    unet: GpuUNet,
    clip: GpuClip,
    label: String,
    /// One keyframe at a time: the kernels share one command stream.
    busy: Mutex<()>,
}

impl GpuSampler {
    /// Uploads `weights` to `device` (named `label` in messages and the heads-up display)
    /// in f32, with the default kernel options.
    pub fn new(
        device: wgpu::Device,
        queue: wgpu::Queue,
        label: String,
        weights: DeviceWeights<'_>,
    ) -> Result<Self> {
        Self::with_options(device, queue, label, weights, NnOptions::default())
    }

    /// Uploads `weights` to `device` with the kernels' `options`; f16 weights add ", f16" to
    /// the label. F16 on a device without `SHADER_F16` is refused before any upload.
    pub fn with_options(
        device: wgpu::Device,
        queue: wgpu::Queue,
        label: String,
        weights: DeviceWeights<'_>,
        options: NnOptions,
    ) -> Result<Self> {
        GpuUNet::supports(weights.unet_config).map_err(ModelError::Invalid)?;
        let nn = Nn::with_options(device, queue, options)
            .map_err(|e| ModelError::Invalid(e.to_string()))?;
        let label = match options.precision {
            Precision::F32 => label,
            Precision::F16 => format!("{label}, f16"),
        };
        let unet = GpuUNet::load(&nn, &weights.unet, weights.unet_config)?;
        let clip = GpuClip::load(&nn, &weights.text, weights.text_config)?;
        nn.flush().map_err(|e| ModelError::Invalid(e.to_string()))?;
        Ok(Self {
            nn,
            unet,
            clip,
            label,
            busy: Mutex::new(()),
        })
    }

    /// The kernels' context (flop count, device loss for tests).
    pub fn nn(&self) -> &Nn {
        &self.nn
    }

    /// The UNet on the device.
    pub fn unet(&self) -> &GpuUNet {
        &self.unet
    }

    /// The text encoder on the device.
    pub fn clip(&self) -> &GpuClip {
        &self.clip
    }

    /// A host tensor on the device.
    pub fn upload(&self, t: &Tensor) -> std::result::Result<GpuTensor, GpuError> {
        let values = t
            .to_dtype(candle_core::DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| GpuError::BadInput(e.to_string()))?;
        self.nn.upload(&values, t.dims())
    }

    /// A device tensor back on the host (waits for the work that makes it).
    pub fn download(&self, t: &GpuTensor) -> std::result::Result<Tensor, GpuError> {
        let values = self.nn.download(t)?;
        Tensor::from_vec(values, t.shape(), &Device::Cpu)
            .map_err(|e| GpuError::BadInput(e.to_string()))
    }

    /// Waits until the work submitted so far is done, reporting a device error.
    fn finish(&self) -> std::result::Result<(), GpuError> {
        self.nn.flush()?;
        // A lost device reports through `check`; the wait itself cannot hang on it.
        let _ = self.nn.device().poll(wgpu::PollType::wait_indefinitely());
        self.nn.check()
    }

    fn run(
        &self,
        job: &DeviceJob<'_>,
        on_step: &mut dyn FnMut(usize, usize) -> bool,
    ) -> std::result::Result<Option<Tensor>, GpuError> {
        let mut x = self.upload(job.latents)?;
        let context = self.upload(job.context)?;
        for (k, (timestep, step)) in job.steps.iter().enumerate() {
            let input = match step.input_scale == 1.0 {
                true => x.clone(),
                false => self.nn.scale(&x, step.input_scale)?,
            };
            let input = match job.guidance {
                Some(_) => self.nn.repeat_batch(&input, 2)?,
                None => input,
            };
            let output = self.unet.forward(&self.nn, &input, *timestep, &context)?;
            x = self.nn.sampler_step(&x, &output, step, job.guidance)?;
            self.finish()?;
            if !on_step(job.first_step + k + 1, job.num_steps) {
                return Ok(None);
            }
        }
        self.download(&x).map(Some)
    }
}

impl SamplingDevice for GpuSampler {
    fn label(&self) -> String {
        self.label.clone()
    }

    fn encode_text(&self, ids: &[u32]) -> std::result::Result<Tensor, DeviceError> {
        let _busy = self.busy.lock();
        let fail = |e: GpuError| DeviceError::Failed(e.to_string());
        let hidden = self.clip.forward(&self.nn, ids).map_err(fail)?;
        self.download(&hidden).map_err(fail)
    }

    fn denoise(
        &self,
        job: &DeviceJob<'_>,
        on_step: &mut dyn FnMut(usize, usize) -> bool,
    ) -> std::result::Result<Tensor, DeviceError> {
        let _busy = self.busy.lock();
        match self.run(job, on_step) {
            Ok(Some(latents)) => Ok(latents),
            Ok(None) => Err(DeviceError::Cancelled),
            Err(e) => Err(DeviceError::Failed(e.to_string())),
        }
    }
}

/// What the sampler stores its weight matrices in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SamplePrecision {
    /// f16 where the device has `SHADER_F16` and f16 was measured within the tolerances
    /// ([`F16_WITHIN_TOLERANCE`], false: so f32 for now).
    #[default]
    Auto,
    /// f32 always.
    F32,
    /// f16; refused (the model samples on the CPU, saying why) without `SHADER_F16`.
    F16,
}

/// Whether f16 weights keep the fixture UNet within 1e-3 of diffusers, tiny-sd's keyframe
/// latents within 1e-3 of `e2e/` and its frames within 2/255. They do not
/// (`tests/it/gpu_f16.rs` measures it; README, "GPU sampling", has the numbers), so `Auto`
/// stays f32 and f16 is an explicit choice.
pub const F16_WITHIN_TOLERANCE: bool = false;

impl SamplePrecision {
    /// The weights' precision on `device`.
    pub fn on(self, device: &wgpu::Device) -> Precision {
        match self {
            SamplePrecision::Auto
                if F16_WITHIN_TOLERANCE
                    && device.features().contains(wgpu::Features::SHADER_F16) =>
            {
                Precision::F16
            }
            SamplePrecision::Auto | SamplePrecision::F32 => Precision::F32,
            SamplePrecision::F16 => Precision::F16,
        }
    }
}

/// Loads a model's sampling onto a wgpu device when `choice` wants its adapter (see
/// [`GpuDecode::wants`]: a hardware one for `Auto`).
pub struct GpuSamplerLoader {
    /// The device and queue to sample on (the viewer's own, or a headless one).
    pub device: wgpu::Device,
    /// Its queue.
    pub queue: wgpu::Queue,
    /// Its adapter.
    pub adapter: wgpu::AdapterInfo,
    /// Whether to use it.
    pub choice: GpuDecode,
    /// What to store the weights in.
    pub precision: SamplePrecision,
}

impl DeviceLoader for GpuSamplerLoader {
    fn load(&self, weights: DeviceWeights<'_>) -> Result<Arc<dyn SamplingDevice>> {
        if !self.choice.wants(self.adapter.device_type) {
            return Err(ModelError::Invalid(format!(
                "{} is a software adapter, slower than the CPU (--gpu on uses it anyway)",
                super::adapter_label(&self.adapter)
            )));
        }
        let options = NnOptions {
            precision: self.precision.on(&self.device),
            ..NnOptions::default()
        };
        let sampler = GpuSampler::with_options(
            self.device.clone(),
            self.queue.clone(),
            super::adapter_label(&self.adapter),
            weights,
            options,
        )?;
        Ok(Arc::new(sampler))
    }
}
