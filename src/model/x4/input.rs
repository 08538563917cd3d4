//! Reading the picture a person asks to upscale, and refusing one the pipeline cannot take
//! before any work: not a PNG/JPEG/WebP, too small, too large, transparent. A greyscale
//! picture is made RGB (its grey in all three channels) and an opaque alpha channel is
//! dropped; each such change is reported, so the person knows what was upscaled.

use std::path::Path;

use image::{ColorType, DynamicImage, ImageFormat, ImageReader};

use crate::frame::{RgbaImage, MAX_IMAGE_SIDE};
use crate::model::{ModelError, Result};

/// The smallest side accepted, in pixels: the real model's UNet halves the latent three
/// times, and below 8 pixels its deepest level has less than one.
pub const MIN_LOW_RES_SIDE: u32 = 8;

/// The largest side accepted, in pixels: its 4x upscale is the largest image dreamwalk
/// writes ([`MAX_IMAGE_SIDE`]).
pub const MAX_LOW_RES_SIDE: u32 = MAX_IMAGE_SIDE / 4;

/// A picture read for upscaling.
#[derive(Clone, Debug)]
pub struct LowResPicture {
    /// Its pixels, opaque RGB in an RGBA image.
    pub image: RgbaImage,
    /// What was changed to make it RGB, one sentence each (empty for an 8-bit RGB file).
    pub conversions: Vec<String>,
}

/// Reads and checks the picture at `path`. Errors name the file and say what is wrong.
pub fn read_low_res(path: &Path) -> Result<LowResPicture> {
    let bad = |message: String| ModelError::bad_file(path, message);
    if !path.is_file() {
        return Err(ModelError::Missing {
            path: path.to_path_buf(),
        });
    }
    let reader = ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| bad(format!("cannot read the picture: {e}")))?;
    match reader.format() {
        Some(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP) => {}
        _ => return Err(bad("not a PNG, JPEG or WebP picture".into())),
    }
    // The size first, from the header: a huge picture is refused before it is decoded.
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| bad(format!("cannot read the picture: {e}")))?;
    check_side(w, h).map_err(bad)?;
    let decoded = ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| bad(format!("cannot read the picture: {e}")))?
        .decode()
        .map_err(|e| bad(format!("cannot decode the picture: {e}")))?;
    let conversions = conversions(&decoded).map_err(bad)?;
    let rgb = decoded.into_rgb8();
    let (width, height) = rgb.dimensions();
    let pixels = rgb
        .pixels()
        .flat_map(|p| [p.0[0], p.0[1], p.0[2], 255])
        .collect();
    let image = RgbaImage::from_pixels(width, height, pixels)
        .ok_or_else(|| bad("the decoder gave the wrong number of bytes".into()))?;
    Ok(LowResPicture { image, conversions })
}

/// Whether a `w` x `h` picture can be upscaled 4x; the reason when not.
fn check_side(w: u32, h: u32) -> std::result::Result<(), String> {
    super::pipeline::check_size(w as usize, h as usize, 4)
}

/// The changes that make `image` 8-bit RGB, or why it cannot be: transparency, which an
/// upscale to RGB would silently lose.
fn conversions(image: &DynamicImage) -> std::result::Result<Vec<String>, String> {
    let colour = image.color();
    let mut notes = Vec::new();
    if colour.has_alpha() {
        let transparent = image.to_rgba8().pixels().filter(|p| p.0[3] < 255).count();
        if transparent > 0 {
            return Err(format!(
                "has transparency ({transparent} pixels not opaque): the x4 upscaler makes RGB \
                 pictures; flatten it onto a background first"
            ));
        }
        notes.push("its alpha channel (fully opaque) was dropped".to_string());
    }
    if !colour.has_color() {
        notes.push("greyscale: its grey was copied to red, green and blue".to_string());
    }
    if !matches!(
        colour,
        ColorType::Rgb8 | ColorType::Rgba8 | ColorType::L8 | ColorType::La8
    ) {
        notes.push(format!(
            "{} bits per channel: reduced to 8",
            colour.bits_per_pixel() / u16::from(colour.channel_count())
        ));
    }
    Ok(notes)
}

/// An RGBA picture as the pipeline's (1, 3, h, w) tensor in [0, 1] (`byte / 255`, as
/// diffusers' image processor).
pub fn unit_tensor(image: &RgbaImage) -> Result<candle_core::Tensor> {
    let (w, h) = (image.width as usize, image.height as usize);
    let mut planes = vec![0f32; 3 * w * h];
    for (i, p) in image.pixels.chunks_exact(4).enumerate() {
        for c in 0..3 {
            planes[c * w * h + i] = f32::from(p[c]) / 255.0;
        }
    }
    Ok(candle_core::Tensor::from_vec(
        planes,
        (1, 3, h, w),
        &candle_core::Device::Cpu,
    )?)
}
