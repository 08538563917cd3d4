//! [`ScriptedEngine`]: an engine without a network, for exercising the stages after the
//! model (the walk, in-betweens, upscale, the ring, the display, the recorder) in the tests
//! and the bench, where a real model would only add minutes and noise.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use candle_core::{Device, Tensor};

use super::{
    DecoderKind, EndpointError, EndpointRequest, Engine, ModelDefaults, Result, SamplingProgress,
};
use crate::frame::RgbaImage;

/// Latent pixels per image pixel side (as TAESD and the VAE: 8).
const FACTOR: u32 = 8;

/// How far a diffused position's latents sit above the straight line between its keyframes
/// (grey frames 20 levels lighter than the slerp's), so a test can tell them apart.
pub const DIFFUSED_BUMP: f64 = 1.0;

/// An [`Engine`] whose outputs are known in advance.
///
/// * Endpoints: keyframe `k` (a prompt or a picture alike) is a latent (1, 4, h/8, w/8) full
///   of the value `4k + seed`, one sampler step reported per step asked for (a `false` from
///   the callback cancels).
/// * Decoding, as built: [`ScriptedEngine::grey`] paints the latent mean (x20, clamped) as a
///   grey level, so frames along a walk are distinguishable and predictable;
///   [`ScriptedEngine::premade`] hands out the frames it was given in turn, whatever the
///   latents, so a timed pipeline spends nothing on decoding.
/// * [`ScriptedEngine::with_decode_delay`] makes every decode sleep first (a slow decoder).
/// * Diffused positions (grey frames only): the straight line between the two keyframes'
///   values at `t`, plus [`DIFFUSED_BUMP`]; the same steps reported as a keyframe's.
/// * [`ScriptedEngine::decodes`], [`ScriptedEngine::keyframes_sampled`] and
///   [`ScriptedEngine::positions_diffused`] count the calls.
pub struct ScriptedEngine {
    frames: Frames,
    decode_delay: Duration,
    decodes: AtomicU64,
    keyframes_sampled: AtomicU64,
    diffused: AtomicU64,
}

/// What a decode returns.
enum Frames {
    /// A grey image of the latent's size x 8, its level the latent mean x 20.
    LatentMeanGrey,
    /// These images in turn, the n-th decode getting `frames[n % len]`.
    Premade(Vec<RgbaImage>),
}

impl ScriptedEngine {
    /// Decodes paint the latent mean as grey; the default size is 32x16.
    pub fn grey() -> Self {
        Self::with_frames(Frames::LatentMeanGrey)
    }

    /// Decodes hand out `frames` in turn (the first decode the first frame), whatever the
    /// latents; the default size is the first frame's.
    ///
    /// # Panics
    /// When `frames` is empty, or its frames differ in size.
    pub fn premade(frames: Vec<RgbaImage>) -> Self {
        let first = frames
            .first()
            .expect("ScriptedEngine::premade needs a frame");
        let size = (first.width, first.height);
        assert!(
            frames.iter().all(|f| (f.width, f.height) == size),
            "ScriptedEngine::premade: frames of different sizes"
        );
        Self::with_frames(Frames::Premade(frames))
    }

    fn with_frames(frames: Frames) -> Self {
        Self {
            frames,
            decode_delay: Duration::ZERO,
            decodes: AtomicU64::new(0),
            keyframes_sampled: AtomicU64::new(0),
            diffused: AtomicU64::new(0),
        }
    }

    /// Every decode sleeps `delay` before it returns (and before it is counted).
    pub fn with_decode_delay(mut self, delay: Duration) -> Self {
        self.decode_delay = delay;
        self
    }

    /// Decodes finished so far.
    pub fn decodes(&self) -> u64 {
        self.decodes.load(Ordering::SeqCst)
    }

    /// Diffused positions sampled so far ([`Engine::diffused_latents`] calls, cancelled
    /// ones included).
    pub fn positions_diffused(&self) -> u64 {
        self.diffused.load(Ordering::SeqCst)
    }

    /// Keyframes sampled so far ([`Engine::keyframe_latents`] calls, cancelled ones
    /// included): what the pipeline spends on sampling.
    pub fn keyframes_sampled(&self) -> u64 {
        self.keyframes_sampled.load(Ordering::SeqCst)
    }
}

impl Engine for ScriptedEngine {
    fn name(&self) -> String {
        match self.frames {
            Frames::LatentMeanGrey => "scripted engine (grey frames)".to_string(),
            Frames::Premade(_) => "scripted engine (pre-made frames)".to_string(),
        }
    }

    fn decoders(&self) -> Vec<DecoderKind> {
        vec![DecoderKind::Taesd]
    }

    fn size_multiple(&self) -> u32 {
        FACTOR
    }

    fn latent_shape(&self, (w, h): (u32, u32)) -> [usize; 4] {
        [1, 4, (h / FACTOR) as usize, (w / FACTOR) as usize]
    }

    fn defaults(&self) -> ModelDefaults {
        match &self.frames {
            Frames::LatentMeanGrey => ModelDefaults {
                image_size: (32, 16),
                steps: 2,
                guidance: 1.0,
            },
            Frames::Premade(frames) => ModelDefaults {
                image_size: (frames[0].width, frames[0].height),
                steps: 1,
                guidance: 1.0,
            },
        }
    }

    fn keyframe_latents(
        &self,
        request: &EndpointRequest,
        k: usize,
        progress: &mut dyn FnMut(SamplingProgress) -> bool,
    ) -> Result<Tensor, EndpointError> {
        self.keyframes_sampled.fetch_add(1, Ordering::SeqCst);
        let (w, h) = request.image_size;
        let shape = (1, 4, (h / FACTOR) as usize, (w / FACTOR) as usize);
        for step in 1..=request.steps {
            let p = SamplingProgress {
                keyframe: k,
                keyframes: request.keyframes.len(),
                step,
                steps: request.steps,
            };
            if !progress(p) {
                return Err(EndpointError::Cancelled);
            }
        }
        let value = (k as u64 * 4 + request.seed) as f32;
        Ok(Tensor::full(value, shape, &Device::Cpu)?)
    }

    fn can_diffuse(&self) -> bool {
        matches!(self.frames, Frames::LatentMeanGrey)
    }

    fn diffused_latents(
        &self,
        request: &EndpointRequest,
        (from, to): (usize, usize),
        t: f64,
        progress: &mut dyn FnMut(SamplingProgress) -> bool,
    ) -> Result<Tensor, EndpointError> {
        if !self.can_diffuse() {
            return Err(super::ModelError::Invalid(format!(
                "{} cannot sample in-betweens (diffused positions)",
                self.name()
            ))
            .into());
        }
        self.diffused.fetch_add(1, Ordering::SeqCst);
        let (w, h) = request.image_size;
        let shape = (1, 4, (h / FACTOR) as usize, (w / FACTOR) as usize);
        for step in 1..=request.steps {
            let p = SamplingProgress {
                keyframe: from,
                keyframes: request.keyframes.len(),
                step,
                steps: request.steps,
            };
            if !progress(p) {
                return Err(EndpointError::Cancelled);
            }
        }
        let value = |k: usize| (k as u64 * 4 + request.seed) as f64;
        let lerped = (1.0 - t) * value(from) + t * value(to);
        Ok(Tensor::full(
            (lerped + DIFFUSED_BUMP) as f32,
            shape,
            &Device::Cpu,
        )?)
    }

    fn decode(&self, latents: &Tensor, _decoder: DecoderKind) -> Result<RgbaImage> {
        if !self.decode_delay.is_zero() {
            std::thread::sleep(self.decode_delay);
        }
        let n = self.decodes.fetch_add(1, Ordering::SeqCst);
        match &self.frames {
            Frames::LatentMeanGrey => {
                let (_, _, h, w) = latents.dims4()?;
                let mean = latents.mean_all()?.to_scalar::<f32>()?;
                let mut image = RgbaImage::new(w as u32 * FACTOR, h as u32 * FACTOR);
                let grey = (mean * 20.0).round().clamp(0.0, 255.0) as u8;
                for p in image.pixels.chunks_exact_mut(4) {
                    p[..3].copy_from_slice(&[grey, grey, grey]);
                }
                Ok(image)
            }
            Frames::Premade(frames) => Ok(frames[(n % frames.len() as u64) as usize].clone()),
        }
    }
}
