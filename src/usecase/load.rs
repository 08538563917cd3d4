//! Weights as users have them (a diffusers folder, a Hugging Face id in the local cache, a
//! single-file checkpoint, a TAESD file) or the built-in demo model, turned into the [`Engine`] every stage runs on.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::gpu::GpuDecode;
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
            let mut demo = StableDiffusion::demo();
            if let Some(taesd) = &source.taesd {
                demo.set_taesd(taesd)?;
            }
            demo
        }
        Some(model) if single_file::is_single_file(Path::new(model)) => {
            StableDiffusion::load_single_file_with_loras(
                Path::new(model),
                &source.single_file,
                source.taesd.as_deref(),
                &loras,
            )?
        }
        Some(model) => StableDiffusion::load_with_loras(model, source.taesd.as_deref(), &loras)?,
    };
    Ok(Arc::new(engine))
}

/// [`load_engine`] for headless work: TAESD decodes on a GPU adapter when `gpu_decode`
/// wants it (see [`crate::gpu::with_headless_gpu_decoder`]). The note says why the CPU
/// decodes when the GPU was asked for and cannot.
pub fn headless_engine(
    source: &ModelSource,
    gpu_decode: GpuDecode,
) -> Result<(Arc<dyn Engine>, Option<String>), ModelError> {
    Ok(crate::gpu::with_headless_gpu_decoder(
        load_engine(source)?,
        gpu_decode,
    ))
}
