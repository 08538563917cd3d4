//! Finding and opening weight files the way users keep them: a diffusers folder
//! (`config.json` + `*.safetensors`, fp32 or fp16, `.fp16.safetensors` variants),
//! memory-mapped, with errors that name the file.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;

use super::{ModelError, Result};

/// Reads and parses a JSON config file; the error names the file and what is wrong.
pub fn read_config<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ModelError::Missing {
            path: path.to_path_buf(),
        },
        _ => ModelError::bad_file(path, e),
    })?;
    serde_json::from_str(&text).map_err(|e| {
        // serde says "missing field `x`" for a missing key: keep its words.
        ModelError::bad_file(path, format!("invalid config: {e}"))
    })
}

/// The weights file of a component folder: the first that exists of
/// `diffusion_pytorch_model.safetensors`, `model.safetensors`, then their `.fp16` variants.
pub fn find_weights(dir: &Path) -> Result<PathBuf> {
    if !dir.is_dir() {
        return Err(ModelError::Missing {
            path: dir.to_path_buf(),
        });
    }
    const NAMES: [&str; 4] = [
        "diffusion_pytorch_model.safetensors",
        "model.safetensors",
        "diffusion_pytorch_model.fp16.safetensors",
        "model.fp16.safetensors",
    ];
    NAMES
        .iter()
        .map(|name| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            ModelError::bad_file(
                dir,
                format!("no weights file (looked for {})", NAMES.join(", ")),
            )
        })
}

/// Memory-maps safetensors files as f32 weights on `device`.
///
/// fp16/bf16 files are converted tensor by tensor as they are read. A truncated or
/// corrupt file is reported with its path.
pub fn mmap_var_builder(files: &[PathBuf], device: &Device) -> Result<VarBuilder<'static>> {
    for file in files {
        if !file.is_file() {
            return Err(ModelError::Missing { path: file.clone() });
        }
        // Check each file on its own so the error can name it.
        // SAFETY: the file is mapped read-only; like every mmap reader we assume it is not
        // truncated by another process while mapped.
        #[allow(unsafe_code)]
        let check = unsafe { candle_core::safetensors::MmapedSafetensors::new(file) };
        check.map_err(|e| {
            ModelError::bad_file(file, format!("not a valid safetensors file: {e}"))
        })?;
    }
    // SAFETY: as above.
    #[allow(unsafe_code)]
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(files, DType::F32, device) };
    vb.map_err(|e| ModelError::bad_file(&files[0], e))
}

/// Wraps an error raised while building a component from `file`, so it names the file
/// (candle's own messages name the tensor and the shapes, not the file).
pub fn in_file(file: &Path) -> impl Fn(candle_core::Error) -> ModelError + '_ {
    move |e| ModelError::bad_file(file, e)
}
