//! Images as they travel through the pipeline, and the pixel arithmetic stages share.

pub mod blend;
mod gpu;

use std::sync::Arc;

pub use gpu::{map_read, read_texture_on, FrameError, GpuFrame, GPU_FRAME_FORMAT};

/// The largest image side dreamwalk decodes or writes, in pixels: beyond it a single frame
/// is over a gigabyte and no GPU texture can hold it.
pub const MAX_IMAGE_SIDE: u32 = 16384;

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

/// The pixels of a frame in the pipeline: bytes in memory, or a texture on the GPU that
/// decoded it. A frame decoded on the viewer's GPU stays there: the present shader draws it
/// (and blends its in-betweens) without a copy to the CPU; only stages that need bytes
/// (recording, the CPU upscaler) read it back, with [`FrameImage::to_cpu`].
#[derive(Clone, Debug)]
pub enum FrameImage {
    Cpu(Arc<RgbaImage>),
    Gpu(Arc<GpuFrame>),
    /// In-between `j` of `k` from `prev` toward `next` ([`blend::blend`]), not yet drawn:
    /// the present shader blends while it upscales.
    GpuInbetween {
        prev: Arc<GpuFrame>,
        next: Arc<GpuFrame>,
        j: usize,
        k: usize,
    },
}

impl FrameImage {
    /// Width and height in pixels.
    pub fn size(&self) -> (u32, u32) {
        match self {
            FrameImage::Cpu(image) => (image.width, image.height),
            FrameImage::Gpu(frame) | FrameImage::GpuInbetween { next: frame, .. } => frame.size(),
        }
    }

    /// Bytes the frame takes where it lives (for memory budgets). An in-between on the GPU
    /// takes none of its own: it is drawn from its two frames.
    pub fn byte_len(&self) -> usize {
        let (w, h) = self.size();
        match self {
            FrameImage::GpuInbetween { .. } => 0,
            _ => w as usize * h as usize * 4,
        }
    }

    /// Whether the pixels are on the GPU.
    pub fn is_on_gpu(&self) -> bool {
        !matches!(self, FrameImage::Cpu(_))
    }

    /// The bytes: as they are for a CPU frame; read back from the GPU (once per decoded
    /// frame) otherwise, with in-betweens blended on the CPU exactly as the shader does.
    pub fn to_cpu(&self) -> Result<Arc<RgbaImage>, FrameError> {
        match self {
            FrameImage::Cpu(image) => Ok(image.clone()),
            FrameImage::Gpu(frame) => frame.to_cpu(),
            FrameImage::GpuInbetween { prev, next, j, k } => Ok(Arc::new(blend::blend(
                &*prev.to_cpu()?,
                &*next.to_cpu()?,
                *j,
                *k,
            ))),
        }
    }

    /// In-between `j` of `k` from `prev` toward `next` (frames of one size, `j < k <=
    /// MAX_INBETWEENS`, else an error). Two frames on one GPU give a [`FrameImage::GpuInbetween`], which costs nothing until drawn; any
    /// other pair is blended on the CPU, reading back what is on the GPU.
    pub fn inbetween(
        prev: &FrameImage,
        next: &FrameImage,
        j: usize,
        k: usize,
    ) -> Result<FrameImage, FrameError> {
        if prev.size() != next.size() || j >= k || k > blend::MAX_INBETWEENS {
            return Err(FrameError::BadInput(format!(
                "in-between {j} of {k} of a {:?} and a {:?} frame",
                prev.size(),
                next.size()
            )));
        }
        match (prev, next) {
            (FrameImage::Gpu(p), FrameImage::Gpu(n)) if p.device() == n.device() => {
                Ok(FrameImage::GpuInbetween {
                    prev: p.clone(),
                    next: n.clone(),
                    j,
                    k,
                })
            }
            _ => Ok(FrameImage::Cpu(Arc::new(blend::blend(
                &*prev.to_cpu()?,
                &*next.to_cpu()?,
                j,
                k,
            )))),
        }
    }
}

impl From<RgbaImage> for FrameImage {
    fn from(image: RgbaImage) -> Self {
        FrameImage::Cpu(Arc::new(image))
    }
}
