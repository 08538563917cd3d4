//! The values behind the window's fields and sliders, and the pipeline [`Settings`] they
//! make. Kept apart from the drawing so that "every slider reaches the pipeline" is a plain
//! function to test.

use crate::model::{DecoderKind, EndpointRequest, ModelDefaults};
use crate::pipeline::{Inbetweens, Settings};
use crate::upscale::UpscaleMode;
use crate::walk::{Easing, Interp, LoopMode, WalkSettings};

/// Output sizes the viewer offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OutputSize {
    P1080,
    P1440,
    #[default]
    P2160,
}

impl OutputSize {
    pub const ALL: [OutputSize; 3] = [OutputSize::P1080, OutputSize::P1440, OutputSize::P2160];

    pub fn size(self) -> (u32, u32) {
        match self {
            OutputSize::P1080 => (1920, 1080),
            OutputSize::P1440 => (2560, 1440),
            OutputSize::P2160 => (3840, 2160),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            OutputSize::P1080 => "1080p",
            OutputSize::P1440 => "1440p",
            OutputSize::P2160 => "4K",
        }
    }
}

/// Everything the user sets in the window.
#[derive(Clone, Debug, PartialEq)]
pub struct Controls {
    /// Keyframe prompts in walk order (two or more).
    pub prompts: Vec<String>,
    pub negative: String,
    pub seed: u64,
    /// Sampler steps per keyframe.
    pub sampler_steps: usize,
    pub guidance: f64,
    /// Walk positions from one keyframe to the next: fewer is a faster walk.
    pub steps_between: usize,
    pub inbetweens: Inbetweens,
    pub target_fps: u32,
    pub interp: Interp,
    pub easing: Easing,
    pub loop_mode: LoopMode,
    pub decoder: DecoderKind,
    pub upscale: UpscaleMode,
    pub output: OutputSize,
}

/// Limits of the sliders (the tests move each one over its range).
pub const MAX_STEPS_BETWEEN: usize = 240;
pub const MAX_INBETWEENS: usize = 15;
pub const FPS_RANGE: std::ops::RangeInclusive<u32> = 1..=60;
pub const MAX_SAMPLER_STEPS: usize = 100;
pub const MAX_GUIDANCE: f64 = 20.0;

impl Controls {
    /// What the window starts with for a model.
    pub fn new(defaults: &ModelDefaults) -> Self {
        Self {
            prompts: vec![
                "a misty forest at dawn, volumetric light".into(),
                "a lighthouse on a cliff in a storm, oil painting".into(),
            ],
            negative: String::new(),
            seed: 42,
            sampler_steps: defaults.steps,
            guidance: defaults.guidance,
            steps_between: 48,
            inbetweens: Inbetweens::Fixed(3),
            target_fps: 30,
            interp: Interp::Slerp,
            // Linger a little at each keyframe, where the images are the prompts'.
            easing: Easing::InOut,
            loop_mode: LoopMode::PingPong,
            decoder: DecoderKind::Taesd,
            upscale: UpscaleMode::Gpu,
            output: OutputSize::P2160,
        }
    }

    /// The pipeline settings these controls make, for a model decoding `image_size` frames.
    pub fn settings(&self, image_size: (u32, u32)) -> Settings {
        Settings {
            endpoints: EndpointRequest {
                prompts: self.prompts.iter().map(|p| p.trim().to_string()).collect(),
                negative: self.negative.trim().to_string(),
                seed: self.seed,
                seed_per_keyframe: false,
                steps: self.sampler_steps.max(1),
                guidance: self.guidance,
                image_size,
                init_latents: None,
            },
            walk: WalkSettings {
                steps_between: self.steps_between.max(1),
                interp: self.interp,
                easing: self.easing,
                loop_mode: self.loop_mode,
            },
            decoder: self.decoder,
            inbetweens: self.inbetweens,
            target_fps: f64::from(self.target_fps),
            upscale: self.upscale,
            output_size: self.output.size(),
        }
    }
}

/// "A", "B", ... "Z", then "27", ...: how the window names keyframes.
pub fn keyframe_name(index: usize) -> String {
    match u8::try_from(index) {
        Ok(i) if i < 26 => char::from(b'A' + i).to_string(),
        _ => (index + 1).to_string(),
    }
}
