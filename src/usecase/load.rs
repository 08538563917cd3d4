//! Weights as users have them (a diffusers folder, a Hugging Face id in the local cache, a
//! single-file checkpoint, a TAESD file) or the built-in demo model, turned into the [`Engine`] every stage runs on.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::gpu::sample::{GpuSamplerLoader, SamplePrecision};
use crate::gpu::{with_gpu_decoder, DecodedFrames, GpuContext, GpuDecode};
use crate::model::device::DeviceLoader;
use crate::model::lora::{LoraSet, LoraSpec};
use crate::model::{single_file, Engine, ModelError, SingleFileOptions, StableDiffusion};

/// Which weights to run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelSource {
    /// A diffusers model folder or a Hugging Face id found in the local cache; `None` runs
    /// the built-in demo model.
    pub model: Option<String>,
    /// A TAESD decoder (a diffusers AutoencoderTiny folder or a `.safetensors` file) to use
    /// instead of the model's own.
    pub taesd: Option<PathBuf>,
    /// How to read `model` when it is a single-file checkpoint.
    pub single_file: SingleFileOptions,
    /// LoRA files merged into the model's weights, with their strengths.
    pub loras: Vec<LoraSpec>,
}

/// Loads the weights `source` names, or the built-in demo model.
pub fn load_engine(source: &ModelSource) -> Result<Arc<dyn Engine>, ModelError> {
    load_engine_on(source, None)
}

/// [`load_engine`], keyframes sampled on the device `sampling` makes from the weights as
/// they load (a GPU: [`crate::gpu::sample::GpuSamplerLoader`]); on the CPU, with a note in
/// [`Engine::sampler_description`], when it cannot.
pub fn load_engine_on(
    source: &ModelSource,
    sampling: Option<&dyn DeviceLoader>,
) -> Result<Arc<dyn Engine>, ModelError> {
    let loras = LoraSet::load(&source.loras)?;
    let engine = match &source.model {
        None if !loras.is_empty() => {
            return Err(ModelError::Invalid(
                "a LoRA is trained for a real model: give one with --model (the built-in demo \
                 model has random weights)"
                    .into(),
            ))
        }
        None => {
            let mut demo = StableDiffusion::demo_on(sampling);
            if let Some(taesd) = &source.taesd {
                demo.set_taesd(taesd)?;
            }
            demo
        }
        Some(model) if single_file::is_single_file(Path::new(model)) => {
            StableDiffusion::load_single_file_on(
                Path::new(model),
                &source.single_file,
                source.taesd.as_deref(),
                &loras,
                sampling,
            )?
        }
        Some(model) => StableDiffusion::load_on(model, source.taesd.as_deref(), &loras, sampling)?,
    };
    Ok(Arc::new(engine))
}

/// [`load_engine`] for headless work, on the adapter [`crate::gpu::GpuContext::new_headless`]
/// finds when `gpu` wants it (see [`GpuDecode::wants`]: a hardware one for `Auto`, any for
/// `On`): keyframes are sampled there (the CLIP text encoder, the UNet and the scheduler's
/// arithmetic) and TAESD decodes there. The note says why the CPU works when the GPU was
/// asked for and cannot. `precision` is what the sampler keeps its weights in.
pub fn headless_engine(
    source: &ModelSource,
    gpu: GpuDecode,
    precision: SamplePrecision,
    decode: GpuDecode,
) -> Result<(Arc<dyn Engine>, Option<String>), ModelError> {
    if gpu == GpuDecode::Off && decode == GpuDecode::Off {
        return Ok((load_engine(source)?, None));
    }
    let ctx = match GpuContext::new_headless() {
        Ok(ctx) => ctx,
        Err(e) => {
            let asked = gpu == GpuDecode::On || decode == GpuDecode::On;
            let note = asked.then(|| format!("sampling and TAESD run on the CPU: {e}"));
            return Ok((load_engine(source)?, note));
        }
    };
    let info = ctx.adapter.get_info();
    let loader = gpu.wants(info.device_type).then(|| GpuSamplerLoader {
        device: ctx.device.clone(),
        queue: ctx.queue.clone(),
        adapter: info.clone(),
        choice: gpu,
        precision,
    });
    let engine = load_engine_on(source, loader.as_ref().map(|l| l as &dyn DeviceLoader))?;
    Ok(with_gpu_decoder(
        engine,
        &ctx.device,
        &ctx.queue,
        &info,
        decode,
        DecodedFrames::ReadBack,
    ))
}
