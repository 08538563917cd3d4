//! What a keyframe of a walk is made from: a prompt, sampled from seeded noise, or a
//! person's picture, encoded into the model's latent space and optionally re-noised and
//! denoised with a prompt (diffusers' img2img recipe) so that it takes the model's look.
//!
//! Reading the file ([`read_image`]) happens when the request is built, so a bad file is
//! refused before any work; fitting it to the walk's size ([`fit_image`]) and encoding it
//! ([`encoder`]) happen when the keyframes are sampled, since the size may change while a
//! walk plays.

pub mod encoder;
mod fit;
mod read;

use std::path::PathBuf;
use std::sync::Arc;

use crate::frame::RgbaImage;

pub use encoder::{image_tensor, ImageEncoder};
pub use fit::{fit_image, thumbnail, Fit, PAD_GREY};
pub use read::read_image;

/// One keyframe of a walk, in walk order.
#[derive(Clone, Debug, PartialEq)]
pub enum Keyframe {
    /// Latents sampled from seeded noise with this prompt.
    Prompt(String),
    /// Latents encoded from a picture.
    Image(ImageKeyframe),
}

impl Keyframe {
    /// The prompt its latents are sampled or denoised with (an image's img2img prompt).
    pub fn prompt(&self) -> &str {
        match self {
            Keyframe::Prompt(prompt) => prompt,
            Keyframe::Image(image) => &image.prompt,
        }
    }

    /// The image, for an image keyframe.
    pub fn image(&self) -> Option<&ImageKeyframe> {
        match self {
            Keyframe::Prompt(_) => None,
            Keyframe::Image(image) => Some(image),
        }
    }

    /// How files and logs name it: the prompt, or "image photo.png".
    pub fn label(&self) -> String {
        match self {
            Keyframe::Prompt(prompt) => prompt.clone(),
            Keyframe::Image(image) => format!("image {}", image.file_name()),
        }
    }
}

impl From<&str> for Keyframe {
    fn from(prompt: &str) -> Self {
        Keyframe::Prompt(prompt.to_string())
    }
}

impl From<String> for Keyframe {
    fn from(prompt: String) -> Self {
        Keyframe::Prompt(prompt)
    }
}

/// A picture as a keyframe: its pixels as read, how they meet the walk's size, and how far
/// the model re-imagines them.
#[derive(Clone, Debug)]
pub struct ImageKeyframe {
    /// Where the picture was read from (for messages and file comments).
    pub path: PathBuf,
    /// The picture as read (orientation applied, alpha flattened onto [`PAD_GREY`]).
    pub pixels: Arc<RgbaImage>,
    /// Crop to fill the frame, or pad to show all of it.
    pub fit: Fit,
    /// img2img strength in [0, 1]: 0 keeps the encoded picture as the keyframe; above 0 it
    /// is noised to the `int(steps x strength)`-th last timestep and denoised with
    /// [`Self::prompt`] from there, as diffusers' `StableDiffusionImg2ImgPipeline`.
    pub strength: f64,
    /// The prompt the picture is denoised with when `strength` is above 0.
    pub prompt: String,
}

impl ImageKeyframe {
    /// A picture used as it is (strength 0), cropped to fill the frame.
    pub fn new(path: PathBuf, pixels: Arc<RgbaImage>) -> Self {
        Self {
            path,
            pixels,
            fit: Fit::Crop,
            strength: 0.0,
            prompt: String::new(),
        }
    }

    /// The file's name without its folder.
    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.path.display().to_string())
    }
}

impl PartialEq for ImageKeyframe {
    fn eq(&self, other: &Self) -> bool {
        // Pixels read once are shared: the same allocation is the same picture (a cheap
        // test each frame the window compares its settings), else compare the bytes.
        self.path == other.path
            && self.fit == other.fit
            && self.strength == other.strength
            && self.prompt == other.prompt
            && (Arc::ptr_eq(&self.pixels, &other.pixels) || self.pixels == other.pixels)
    }
}
