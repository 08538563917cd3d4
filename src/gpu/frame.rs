//! A decoded frame that stays on the GPU: the texture [`super::GpuTaesd`] decoded into, drawn
//! by the bicubic present shader as it is, read back only when bytes are needed.

use std::sync::Arc;

use parking_lot::Mutex;

use super::{read_texture_on, GpuError};
use crate::frame::RgbaImage;

/// An `Rgba8Uint` texture holding one frame's bytes (the bicubic upscaler's source format),
/// on the device that made it.
pub struct GpuFrame {
    texture: wgpu::Texture,
    device: wgpu::Device,
    queue: wgpu::Queue,
    /// The bytes once read back: every reader after the first gets them from here.
    read_back: Mutex<Option<Arc<RgbaImage>>>,
}

impl GpuFrame {
    /// Wraps a texture of [`super::SOURCE_FORMAT`] with `TEXTURE_BINDING` (to be drawn) and
    /// `COPY_SRC` (to be read back) usage.
    pub fn new(
        texture: wgpu::Texture,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
    ) -> Result<Self, GpuError> {
        let needed = wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_SRC;
        if texture.format() != super::SOURCE_FORMAT || !texture.usage().contains(needed) {
            return Err(GpuError::BadTarget(format!(
                "a GPU frame must be {:?} with {needed:?} usage, not {:?} with {:?}",
                super::SOURCE_FORMAT,
                texture.format(),
                texture.usage()
            )));
        }
        Ok(Self {
            texture,
            device: device.clone(),
            queue: queue.clone(),
            read_back: Mutex::new(None),
        })
    }

    pub fn texture(&self) -> &wgpu::Texture {
        &self.texture
    }

    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// Width and height in pixels.
    pub fn size(&self) -> (u32, u32) {
        (self.texture.width(), self.texture.height())
    }

    /// The frame's bytes, read back from the GPU on the first call (waiting for it).
    pub fn to_cpu(&self) -> Result<Arc<RgbaImage>, GpuError> {
        let mut read_back = self.read_back.lock();
        if let Some(image) = &*read_back {
            return Ok(image.clone());
        }
        let image = Arc::new(read_texture_on(&self.device, &self.queue, &self.texture)?);
        *read_back = Some(image.clone());
        Ok(image)
    }

    /// Whether [`Self::to_cpu`] has copied the frame to the CPU.
    pub fn was_read_back(&self) -> bool {
        self.read_back.lock().is_some()
    }
}

impl std::fmt::Debug for GpuFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (w, h) = self.size();
        write!(f, "GpuFrame({w}x{h})")
    }
}
