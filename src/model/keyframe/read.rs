//! Reading a person's picture (PNG, JPEG or WebP) into RGBA bytes, with errors that name the
//! file and say what is wrong with it.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};

use super::fit::PAD_GREY;
use crate::frame::RgbaImage;
use crate::model::{ModelError, Result};

/// The formats read, as the messages name them.
const FORMATS: &str = "PNG, JPEG or WebP";

/// Reads the picture at `path`: its EXIF orientation applied (a phone's portrait photo
/// stands up), transparency flattened onto [`PAD_GREY`] (the encoders take no alpha).
///
/// Errors name the file: missing, unreadable, not a PNG/JPEG/WebP, damaged, or of zero
/// size.
pub fn read_image(path: &Path) -> Result<RgbaImage> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ModelError::Missing {
            path: path.to_path_buf(),
        },
        _ => ModelError::bad_file(path, format!("cannot read the image: {e}")),
    })?;
    if bytes.is_empty() {
        return Err(ModelError::bad_file(
            path,
            format!("an empty file, not a {FORMATS} image"),
        ));
    }
    // A PNG that says it has no rows or columns: the decoder would only call it invalid.
    if let Some((w, h)) = png_header_size(&bytes).filter(|&(w, h)| w == 0 || h == 0) {
        return Err(zero_size(path, w, h));
    }
    let reader = ImageReader::new(Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| ModelError::bad_file(path, format!("cannot read the image: {e}")))?;
    match reader.format() {
        Some(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP) => {}
        Some(other) => {
            return Err(ModelError::bad_file(
                path,
                format!(
                    "a {} image: image keyframes are {FORMATS}",
                    other
                        .extensions_str()
                        .first()
                        .unwrap_or(&"?")
                        .to_uppercase()
                ),
            ))
        }
        None => return Err(ModelError::bad_file(path, format!("not a {FORMATS} image"))),
    }
    let damaged =
        |e: image::ImageError| ModelError::bad_file(path, format!("cannot decode the image: {e}"));
    let mut decoder = reader.into_decoder().map_err(damaged)?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(zero_size(path, w, h));
    }
    let orientation = decoder.orientation().map_err(damaged)?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(damaged)?;
    image.apply_orientation(orientation);
    let rgba = image.into_rgba8();
    let (width, height) = rgba.dimensions();
    let mut pixels = rgba.into_raw();
    for p in pixels.chunks_exact_mut(4) {
        let alpha = u32::from(p[3]);
        if alpha < 255 {
            for c in &mut p[..3] {
                let over = u32::from(*c) * alpha + u32::from(PAD_GREY) * (255 - alpha);
                *c = ((over + 127) / 255) as u8;
            }
            p[3] = 255;
        }
    }
    RgbaImage::from_pixels(width, height, pixels)
        .ok_or_else(|| ModelError::bad_file(path, "the decoder gave the wrong number of bytes"))
}

fn zero_size(path: &Path, w: u32, h: u32) -> ModelError {
    ModelError::bad_file(path, format!("an image of zero size ({w}x{h})"))
}

/// The (width, height) a PNG's header declares, if `bytes` start like a PNG.
fn png_header_size(bytes: &[u8]) -> Option<(u32, u32)> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if bytes.len() < 24 || !bytes.starts_with(SIGNATURE) || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let be =
        |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    Some((be(16), be(20)))
}
