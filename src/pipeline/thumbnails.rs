//! Small pictures of the keyframes the walk plays between, for the viewer's keyframe rows:
//! made by the endpoint stage from the sampled latents with the model's fastest decoder,
//! after the walk has them (so they never delay the first frame).

use std::sync::Arc;

use candle_core::Tensor;

use crate::frame::RgbaImage;
use crate::model::keyframe::thumbnail;
use crate::model::{DecoderKind, Engine, Keyframe, Result};

/// The keyframes of one sampling and a small picture of each, in walk order.
#[derive(Debug)]
pub struct KeyframeThumbnails {
    /// The request generation they were sampled for (as [`super::StatsSnapshot::generation`]).
    pub generation: u64,
    /// What each keyframe was sampled from.
    pub keyframes: Vec<Keyframe>,
    /// The decoded keyframe, at most the requested side on its longer side.
    pub images: Vec<Arc<RgbaImage>>,
}

impl KeyframeThumbnails {
    /// The thumbnail of keyframe `index` if that keyframe is `keyframe` (a row of a form
    /// that still shows what was sampled).
    pub fn of(&self, index: usize, keyframe: &Keyframe) -> Option<&Arc<RgbaImage>> {
        (self.keyframes.get(index)? == keyframe).then(|| &self.images[index])
    }
}

/// Decodes each keyframe's `latents` with TAESD when the model has it (else its first
/// decoder) and shrinks it to at most `side` pixels on its longer side.
pub(super) fn make_thumbnails(
    engine: &dyn Engine,
    generation: u64,
    keyframes: &[Keyframe],
    latents: &[Tensor],
    side: u32,
) -> Result<KeyframeThumbnails> {
    let decoders = engine.decoders();
    let decoder = if decoders.contains(&DecoderKind::Taesd) {
        DecoderKind::Taesd
    } else {
        decoders.first().copied().unwrap_or(DecoderKind::Taesd)
    };
    let images = latents
        .iter()
        .map(|latent| Ok(Arc::new(thumbnail(&engine.decode(latent, decoder)?, side))))
        .collect::<Result<Vec<_>>>()?;
    Ok(KeyframeThumbnails {
        generation,
        keyframes: keyframes.to_vec(),
        images,
    })
}
