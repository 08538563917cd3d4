//! A model whose TAESD decodes run on a wgpu device: the viewer wraps the loaded engine in
//! [`GpuDecodedEngine`] when it has a hardware adapter, so the pipeline's decode stage (which
//! calls [`Engine::decode_frame`]) decodes on the GPU without knowing it. Sampling and the full VAE stay
//! on the inner engine.

use std::sync::Arc;

use candle_core::Tensor;
use parking_lot::Mutex;

use super::{GpuError, GpuTaesd};
use crate::frame::{FrameImage, RgbaImage};
use crate::model::{
    DecoderKind, EndpointError, EndpointRequest, Engine, ModelDefaults, ModelError,
    SamplingProgress, TaesdDecoder,
};

/// Whether the viewer decodes TAESD on the GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GpuDecode {
    /// On a hardware adapter; on a software one (lavapipe, llvmpipe) the CPU is faster.
    #[default]
    Auto,
    /// Whenever there is an adapter, software ones included.
    On,
    /// Always on the CPU.
    Off,
}

impl GpuDecode {
    /// Whether to decode on an adapter of this type.
    pub fn wants(self, device_type: wgpu::DeviceType) -> bool {
        match self {
            GpuDecode::Auto => device_type != wgpu::DeviceType::Cpu,
            GpuDecode::On => true,
            GpuDecode::Off => false,
        }
    }
}

/// Where a frame decoded on the GPU goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodedFrames {
    /// Read back at once ([`Engine::decode_frame`] gives CPU images): for `render`, which
    /// writes every frame to a file anyway.
    ReadBack,
    /// Kept on the GPU ([`crate::frame::FrameImage::Gpu`]) for a presenter on the same
    /// device: the viewer.
    StayOnGpu,
}

/// `engine` with its TAESD decoding on `device` when `choice` wants that adapter (see
/// [`GpuDecode::wants`]). A model without TAESD keeps decoding on the CPU; so does one whose
/// decoder the device refuses, with a note saying why.
pub fn with_gpu_decoder(
    engine: Arc<dyn Engine>,
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    adapter: &wgpu::AdapterInfo,
    choice: GpuDecode,
    frames: DecodedFrames,
) -> (Arc<dyn Engine>, Option<String>) {
    if !choice.wants(adapter.device_type) || engine.taesd().is_none() {
        return (engine, None);
    }
    match GpuDecodedEngine::new(engine.clone(), device, queue, super::adapter_label(adapter)) {
        Ok(decoded) => (Arc::new(decoded.with_frames(frames)), None),
        Err(e) => (
            engine,
            Some(format!(
                "TAESD runs on the CPU: the GPU decoder failed ({e})"
            )),
        ),
    }
}

/// `inner` with [`DecoderKind::Taesd`] decoded by [`GpuTaesd`].
///
/// A GPU failure (device lost, out of memory) does not stop the walk: that decode and every
/// later one run on the inner engine's CPU decoder, and [`Engine::decoder_description`]
/// says why.
pub struct GpuDecodedEngine {
    inner: Arc<dyn Engine>,
    taesd: GpuTaesd,
    adapter: String,
    frames: DecodedFrames,
    /// Set on the first GPU error; from then on TAESD runs on the CPU.
    failure: Mutex<Option<String>>,
}

impl GpuDecodedEngine {
    /// Uploads the inner engine's TAESD weights to `device`. `adapter` names the device for
    /// the window ("NVIDIA GeForce RTX 4090 (Vulkan)").
    pub fn new(
        inner: Arc<dyn Engine>,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        adapter: String,
    ) -> Result<Self, GpuError> {
        let decoder: &TaesdDecoder = inner.taesd().ok_or_else(|| {
            GpuError::Unsupported(format!("{} has no TAESD decoder", inner.name()))
        })?;
        let taesd = GpuTaesd::with_device(device, queue, decoder)?;
        Ok(Self {
            inner,
            taesd,
            adapter,
            frames: DecodedFrames::ReadBack,
            failure: Mutex::new(None),
        })
    }

    /// Whether [`Engine::decode_frame`] reads frames back or keeps them on the GPU
    /// (default: read back).
    pub fn with_frames(mut self, frames: DecodedFrames) -> Self {
        self.frames = frames;
        self
    }

    /// Why TAESD fell back to the CPU, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().clone()
    }

    /// A bad latent is the caller's error, not the GPU's: reported, the GPU kept. Any other
    /// error moves TAESD to the CPU for good, starting with this frame (`on_cpu`).
    fn on_gpu_error<T>(
        &self,
        error: GpuError,
        on_cpu: impl FnOnce() -> Result<T, ModelError>,
    ) -> Result<T, ModelError> {
        if let GpuError::BadInput(_) = error {
            return Err(ModelError::Invalid(error.to_string()));
        }
        tracing::warn!("GPU TAESD failed, decoding on the CPU from now on: {error}");
        *self.failure.lock() = Some(error.to_string());
        on_cpu()
    }

    fn decode_on_gpu(&self, latents: &Tensor) -> Result<RgbaImage, GpuError> {
        self.taesd
            .decode_rgba(latents)?
            .pop()
            .ok_or_else(|| GpuError::Readback("TAESD decoded no image".into()))
    }
}

impl Engine for GpuDecodedEngine {
    fn name(&self) -> String {
        self.inner.name()
    }

    fn decoders(&self) -> Vec<DecoderKind> {
        self.inner.decoders()
    }

    fn size_multiple(&self) -> u32 {
        self.inner.size_multiple()
    }

    fn defaults(&self) -> ModelDefaults {
        self.inner.defaults()
    }

    fn latent_shape(&self, image_size: (u32, u32)) -> [usize; 4] {
        self.inner.latent_shape(image_size)
    }

    fn prompt_tokens(&self, prompt: &str) -> Option<usize> {
        self.inner.prompt_tokens(prompt)
    }

    fn check_image_encoder(&self) -> crate::model::Result<()> {
        self.inner.check_image_encoder()
    }

    fn decoded_size(&self, image_size: (u32, u32), decoder: DecoderKind) -> (u32, u32) {
        self.inner.decoded_size(image_size, decoder)
    }

    fn keyframe_latents(
        &self,
        request: &EndpointRequest,
        index: usize,
        progress: &mut dyn FnMut(SamplingProgress) -> bool,
    ) -> Result<Tensor, EndpointError> {
        self.inner.keyframe_latents(request, index, progress)
    }

    fn endpoints(
        &self,
        request: &EndpointRequest,
        progress: &mut dyn FnMut(SamplingProgress) -> bool,
    ) -> Result<Vec<Tensor>, EndpointError> {
        self.inner.endpoints(request, progress)
    }

    fn decode(&self, latents: &Tensor, decoder: DecoderKind) -> Result<RgbaImage, ModelError> {
        if decoder != DecoderKind::Taesd || self.failure.lock().is_some() {
            return self.inner.decode(latents, decoder);
        }
        match self.decode_on_gpu(latents) {
            Ok(image) => Ok(image),
            Err(e) => self.on_gpu_error(e, || self.inner.decode(latents, decoder)),
        }
    }

    fn decode_frame(
        &self,
        latents: &Tensor,
        decoder: DecoderKind,
    ) -> Result<FrameImage, ModelError> {
        if self.frames == DecodedFrames::ReadBack
            || decoder != DecoderKind::Taesd
            || self.failure.lock().is_some()
        {
            return self.decode(latents, decoder).map(Into::into);
        }
        match self.taesd.decode_frame(latents) {
            Ok(frame) => Ok(FrameImage::Gpu(Arc::new(frame))),
            Err(e) => self.on_gpu_error(e, || self.inner.decode_frame(latents, decoder)),
        }
    }

    fn taesd(&self) -> Option<&TaesdDecoder> {
        self.inner.taesd()
    }

    fn can_diffuse(&self) -> bool {
        self.inner.can_diffuse()
    }

    fn diffused_latents(
        &self,
        request: &EndpointRequest,
        pair: (usize, usize),
        t: f64,
        progress: &mut dyn FnMut(SamplingProgress) -> bool,
    ) -> Result<Tensor, EndpointError> {
        self.inner.diffused_latents(request, pair, t, progress)
    }

    fn sampler_description(&self) -> String {
        self.inner.sampler_description()
    }

    fn decoder_description(&self, decoder: DecoderKind) -> String {
        match (decoder, self.failure.lock().as_deref()) {
            (DecoderKind::Taesd, None) => match self.frames {
                DecodedFrames::ReadBack => format!("TAESD on the GPU ({})", self.adapter),
                DecodedFrames::StayOnGpu => {
                    format!("TAESD on the GPU ({}), frames stay there", self.adapter)
                }
            },
            (DecoderKind::Taesd, Some(why)) => {
                format!("TAESD on the CPU (GPU decode failed: {why})")
            }
            _ => self.inner.decoder_description(decoder),
        }
    }
}
