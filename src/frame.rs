//! Images as they travel through the pipeline.

/// An 8-bit RGBA image, rows top to bottom, no padding between rows.
///
/// RGBA rather than RGB because GPUs have no 3-channel 8-bit texture format and the
/// SIMD resize and blend paths work on 4-byte pixels.
#[derive(Clone, PartialEq, Eq)]
pub struct RgbaImage {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

impl RgbaImage {
    /// A black, opaque image.
    pub fn new(width: u32, height: u32) -> Self {
        let mut pixels = vec![0u8; width as usize * height as usize * 4];
        pixels.chunks_exact_mut(4).for_each(|p| p[3] = 255);
        Self {
            width,
            height,
            pixels,
        }
    }

    /// Wraps existing RGBA bytes; `None` when the length does not match the size.
    pub fn from_pixels(width: u32, height: u32, pixels: Vec<u8>) -> Option<Self> {
        (pixels.len() == width as usize * height as usize * 4).then_some(Self {
            width,
            height,
            pixels,
        })
    }

    /// The RGB bytes without alpha (for PNG and video writers).
    pub fn to_rgb(&self) -> Vec<u8> {
        let mut rgb = Vec::with_capacity(self.pixels.len() / 4 * 3);
        for p in self.pixels.chunks_exact(4) {
            rgb.extend_from_slice(&p[..3]);
        }
        rgb
    }
}

impl std::fmt::Debug for RgbaImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RgbaImage({}x{})", self.width, self.height)
    }
}
