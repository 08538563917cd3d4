//! The values behind the window's fields and sliders, and the pipeline [`Settings`] they
//! make. Kept apart from the drawing so that "every slider reaches the pipeline" is a plain
//! function to test.

use std::path::PathBuf;
use std::sync::Arc;

use crate::frame::RgbaImage;
use crate::model::{DecoderKind, EndpointRequest, Fit, ImageKeyframe, Keyframe, ModelDefaults};
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

/// One keyframe row of the window: a prompt, or a picture with the prompt it is denoised
/// with (used when the image strength is above 0).
#[derive(Clone, Debug, PartialEq)]
pub struct KeyframeControl {
    /// The prompt (an image keyframe's img2img prompt).
    pub text: String,
    /// The picture of an image keyframe.
    pub image: Option<KeyframeImage>,
}

impl KeyframeControl {
    /// A prompt keyframe.
    pub fn prompt(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            image: None,
        }
    }
}

/// A picture read for a keyframe: where from, its pixels, and a small copy for the panel.
#[derive(Clone, Debug)]
pub struct KeyframeImage {
    pub path: PathBuf,
    pub pixels: Arc<RgbaImage>,
    /// At most [`THUMBNAIL_SIDE`] pixels on its longer side.
    pub thumbnail: Arc<RgbaImage>,
}

impl PartialEq for KeyframeImage {
    fn eq(&self, other: &Self) -> bool {
        // One read, one allocation: compared each frame, so not byte by byte.
        self.path == other.path && Arc::ptr_eq(&self.pixels, &other.pixels)
    }
}

/// The longer side of a keyframe's thumbnail in the panel, in pixels.
pub const THUMBNAIL_SIDE: u32 = 96;

impl KeyframeImage {
    /// Reads the picture at `path` (PNG, JPEG or WebP); the error names the file.
    pub fn read(path: PathBuf) -> crate::model::Result<Self> {
        let pixels = crate::model::read_image(&path)?;
        let thumbnail = crate::model::keyframe::thumbnail(&pixels, THUMBNAIL_SIDE);
        Ok(Self {
            path,
            pixels: Arc::new(pixels),
            thumbnail: Arc::new(thumbnail),
        })
    }

    /// The file's name without its folder.
    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.path.display().to_string())
    }
}

/// Everything the user sets in the window.
#[derive(Clone, Debug, PartialEq)]
pub struct Controls {
    /// Keyframes in walk order (two or more): prompts and pictures.
    pub keyframes: Vec<KeyframeControl>,
    /// How image keyframes meet the frame size.
    pub image_fit: Fit,
    /// img2img strength of image keyframes, 0 to 1 (0: the picture as it is).
    pub image_strength: f64,
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
    /// Refine: diffused in-betweens made while the walk plays.
    pub refine: bool,
    /// Diffused in-betweens per keyframe pair when refining (fewer when the pair has
    /// fewer positions between its keyframes).
    pub refine_positions: usize,
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
pub const MAX_REFINE_POSITIONS: usize = 15;

impl Controls {
    /// What the window starts with for a model.
    pub fn new(defaults: &ModelDefaults) -> Self {
        Self {
            keyframes: vec![
                KeyframeControl::prompt("a misty forest at dawn, volumetric light"),
                KeyframeControl::prompt("a lighthouse on a cliff in a storm, oil painting"),
            ],
            image_fit: Fit::Crop,
            image_strength: 0.0,
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
            refine: false,
            refine_positions: 3,
            decoder: DecoderKind::Taesd,
            upscale: UpscaleMode::Gpu,
            output: OutputSize::P2160,
        }
    }

    /// The pipeline settings these controls make, for a model decoding `image_size` frames.
    pub fn settings(&self, image_size: (u32, u32)) -> Settings {
        Settings {
            endpoints: EndpointRequest {
                keyframes: self.keyframes.iter().map(|k| self.keyframe(k)).collect(),
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
            diffuse: match self.refine {
                true => (self.refine_positions.max(1)).min(self.steps_between.saturating_sub(1)),
                false => 0,
            },
        }
    }
}

impl Controls {
    /// The model's keyframe for a row: its prompt, or its picture with the image settings.
    pub(super) fn keyframe(&self, control: &KeyframeControl) -> Keyframe {
        let text = control.text.trim().to_string();
        match &control.image {
            None => Keyframe::Prompt(text),
            Some(image) => Keyframe::Image(ImageKeyframe {
                fit: self.image_fit,
                strength: self.image_strength,
                prompt: text,
                ..ImageKeyframe::new(image.path.clone(), Arc::clone(&image.pixels))
            }),
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
