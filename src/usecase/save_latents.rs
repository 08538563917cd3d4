//! `--save-latents`: an [`Engine`] wrapper that writes the keyframe latents the walk gets
//! from the engine (`keyframe_0`, `keyframe_1`, ...) to a safetensors file as they are
//! sampled, so the walk's own latents are saved and nothing is sampled twice. The pipeline
//! samples keyframe by keyframe ([`Engine::keyframe_latents`]): the file is written once
//! every keyframe of a request has its latents.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Tensor;
use parking_lot::Mutex;

use crate::frame::{FrameImage, RgbaImage};
use crate::model::{
    DecoderKind, EndpointError, EndpointRequest, Engine, ModelDefaults, ModelError,
    SamplingProgress, TaesdDecoder,
};

/// `inner`, saving every set of endpoints it samples to `path`.
pub struct SavingLatents {
    inner: Arc<dyn Engine>,
    path: PathBuf,
    /// The request being sampled and its keyframes' latents so far.
    sampled: Mutex<Option<(EndpointRequest, Vec<Option<Tensor>>)>>,
}

impl SavingLatents {
    pub fn new(inner: Arc<dyn Engine>, path: PathBuf) -> Self {
        Self {
            inner,
            path,
            sampled: Mutex::new(None),
        }
    }
}

/// Writes `latents` as `keyframe_0`, `keyframe_1`, ... to a safetensors file at `path`:
/// under a temporary name beside it first, renamed when whole.
pub fn save_keyframes(latents: &[Tensor], path: &Path) -> Result<(), ModelError> {
    let tensors: HashMap<String, Tensor> = latents
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("keyframe_{i}"), t.clone()))
        .collect();
    let part = crate::record::partial_path(path);
    let saved = candle_core::safetensors::save(&tensors, &part)
        .map_err(|e| e.to_string())
        .and_then(|()| std::fs::rename(&part, path).map_err(|e| e.to_string()));
    saved.map_err(|e| {
        let _ = std::fs::remove_file(&part);
        ModelError::bad_file(path, format!("cannot save the latents: {e}"))
    })
}

/// Checks, before any work, that the latents can be saved at `path`: its folder exists, and
/// nothing is there unless `overwrite`.
pub fn check_destination(path: &Path, overwrite: bool) -> Result<(), String> {
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !folder.is_dir() {
        return Err(format!(
            "cannot save the latents to {}: folder {} does not exist",
            path.display(),
            folder.display()
        ));
    }
    if path.is_dir() {
        return Err(format!(
            "cannot save the latents to {}: it is a folder",
            path.display()
        ));
    }
    if !overwrite && path.symlink_metadata().is_ok() {
        return Err(format!(
            "{} already exists and was left as it is: choose another name for the latents \
             (or replace it: --overwrite)",
            path.display()
        ));
    }
    Ok(())
}

impl Engine for SavingLatents {
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

    fn keyframe_latents(
        &self,
        request: &EndpointRequest,
        index: usize,
        progress: &mut dyn FnMut(SamplingProgress) -> bool,
    ) -> Result<Tensor, EndpointError> {
        let latents = self.inner.keyframe_latents(request, index, progress)?;
        let complete = {
            let mut sampled = self.sampled.lock();
            let slots = match &mut *sampled {
                Some((same, slots)) if same == request => slots,
                other => {
                    let slots = vec![None; request.keyframes.len()];
                    &mut other.insert((request.clone(), slots)).1
                }
            };
            if let Some(slot) = slots.get_mut(index) {
                *slot = Some(latents.clone());
            }
            slots.iter().cloned().collect::<Option<Vec<Tensor>>>()
        };
        if let Some(all) = complete {
            save_keyframes(&all, &self.path)?;
        }
        Ok(latents)
    }

    fn decode(&self, latents: &Tensor, decoder: DecoderKind) -> Result<RgbaImage, ModelError> {
        self.inner.decode(latents, decoder)
    }

    fn decode_frame(
        &self,
        latents: &Tensor,
        decoder: DecoderKind,
    ) -> Result<FrameImage, ModelError> {
        self.inner.decode_frame(latents, decoder)
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
        self.inner.decoder_description(decoder)
    }
}
