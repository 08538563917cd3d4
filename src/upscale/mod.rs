//! CPU upscaling of frames to the output size.
//!
//! Bicubic is fast_image_resize's `CatmullRom` convolution: Catmull-Rom, a = -0.5 (OpenCV's
//! INTER_CUBIC uses a = -0.75, a little sharper with more ringing). At the borders the
//! kernel window is clipped to the image and its weights renormalised. The GPU shader in
//! `gpu` reproduces the same filter within ±1 per 8-bit channel.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use crate::frame::RgbaImage;

/// Where frames are brought to the output size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
pub enum UpscaleMode {
    /// Frames stay at the decoded (source) size.
    None,
    /// Bicubic on the CPU worker pool.
    #[default]
    Cpu,
    /// The consumer upscales on the GPU (the viewer): the pipeline passes source frames.
    Gpu,
}

/// A reusable bicubic resizer (keeps its scratch buffers between frames).
pub struct BicubicResizer {
    resizer: Resizer,
    options: ResizeOptions,
}

impl Default for BicubicResizer {
    fn default() -> Self {
        Self::new()
    }
}

impl BicubicResizer {
    pub fn new() -> Self {
        Self {
            resizer: Resizer::new(),
            options: ResizeOptions::new()
                .resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom))
                // Frames are opaque: premultiplying alpha would only cost time.
                .use_alpha(false),
        }
    }

    /// Resizes `src` to `width` x `height` (a copy when the size is already right).
    pub fn resize(&mut self, src: &RgbaImage, width: u32, height: u32) -> RgbaImage {
        if (src.width, src.height) == (width, height) {
            return src.clone();
        }
        let mut dst = Image::new(width, height, PixelType::U8x4);
        let src_view = ImageRef::new(src.width, src.height, &src.pixels, PixelType::U8x4)
            .expect("RgbaImage always holds width*height*4 bytes");
        self.resizer
            .resize(&src_view, &mut dst, &self.options)
            .expect("same pixel type on both sides");
        RgbaImage::from_pixels(width, height, dst.into_vec()).expect("resizer output size")
    }
}

/// Bicubic resize with a fresh resizer (convenience for one-off use).
pub fn bicubic(src: &RgbaImage, width: u32, height: u32) -> RgbaImage {
    BicubicResizer::new().resize(src, width, height)
}
