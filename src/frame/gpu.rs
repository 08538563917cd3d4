//! A decoded frame that stays on the GPU: the texture the GPU decoder wrote, drawn by the
//! bicubic present shader as it is, read back only when bytes are needed; and the readback
//! itself. Here, on the ground floor, because [`super::FrameImage`] carries such frames
//! through every stage; the GPU stages above (`gpu`) make and draw them.

use std::sync::Arc;

use parking_lot::Mutex;

use super::RgbaImage;

/// The texture format of a frame on the GPU: its RGBA bytes as unsigned integers, so the
/// present shader reads exactly the bytes the CPU would (no sRGB or unorm conversion).
pub const GPU_FRAME_FORMAT: wgpu::TextureFormat = wgpu::TextureFormat::Rgba8Uint;

/// What can go wrong with a frame's pixels on the GPU.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A texture that cannot hold or give back a frame (format, usage).
    #[error("target texture {0}")]
    BadTarget(String),
    /// Frames that cannot be combined (sizes differ, an in-between out of range).
    #[error("{0}")]
    BadInput(String),
    /// wgpu reported an error while copying.
    #[error("GPU work failed: {0}")]
    Wgpu(String),
    /// Reading a texture back to the CPU failed.
    #[error("reading back from the GPU failed: {0}")]
    Readback(String),
}

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
    /// Wraps a texture of [`GPU_FRAME_FORMAT`] with `TEXTURE_BINDING` (to be drawn) and
    /// `COPY_SRC` (to be read back) usage.
    pub fn new(
        texture: wgpu::Texture,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
    ) -> Result<Self, FrameError> {
        let needed = wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_SRC;
        if texture.format() != GPU_FRAME_FORMAT || !texture.usage().contains(needed) {
            return Err(FrameError::BadTarget(format!(
                "a GPU frame must be {:?} with {needed:?} usage, not {:?} with {:?}",
                GPU_FRAME_FORMAT,
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
    pub fn to_cpu(&self) -> Result<Arc<RgbaImage>, FrameError> {
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

/// Copies an `Rgba8Unorm` (or `Rgba8UnormSrgb`, `Rgba8Uint`) texture of `device` back into an
/// image through `queue`, waiting for the GPU. The texture needs `COPY_SRC` usage.
pub fn read_texture_on(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    texture: &wgpu::Texture,
) -> Result<RgbaImage, FrameError> {
    use wgpu::TextureFormat as F;
    if !matches!(
        texture.format(),
        F::Rgba8Unorm | F::Rgba8UnormSrgb | F::Rgba8Uint
    ) {
        return Err(FrameError::BadTarget(format!(
            "format {:?} cannot be read back as RGBA8",
            texture.format()
        )));
    }
    let (width, height) = (texture.width(), texture.height());
    let row_bytes = width * 4;
    // Buffer rows of a texture copy must start on 256-byte boundaries.
    let padded_row_bytes = row_bytes.next_multiple_of(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT);
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback"),
        size: u64::from(padded_row_bytes) * u64::from(height),
        usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ,
        mapped_at_creation: false,
    });
    let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
        label: Some("readback"),
    });
    encoder.copy_texture_to_buffer(
        texture.as_image_copy(),
        wgpu::TexelCopyBufferInfo {
            buffer: &buffer,
            layout: wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(padded_row_bytes),
                rows_per_image: Some(height),
            },
        },
        texture.size(),
    );
    queue.submit([encoder.finish()]);
    let pixels = map_read(device, &buffer, scope, |mapped| {
        let mut pixels = Vec::with_capacity(row_bytes as usize * height as usize);
        for row in mapped.chunks_exact(padded_row_bytes as usize) {
            pixels.extend_from_slice(&row[..row_bytes as usize]);
        }
        pixels
    })?;
    RgbaImage::from_pixels(width, height, pixels)
        .ok_or_else(|| FrameError::Readback("read back fewer bytes than the texture holds".into()))
}

/// Waits for the GPU work copying into `buffer` (`MAP_READ`, the copies submitted), checks
/// the validation `scope` opened before that work, and hands the buffer's bytes to `read`.
pub fn map_read<T>(
    device: &wgpu::Device,
    buffer: &wgpu::Buffer,
    scope: wgpu::ErrorScopeGuard,
    read: impl FnOnce(&[u8]) -> T,
) -> Result<T, FrameError> {
    let (sender, receiver) = std::sync::mpsc::channel();
    buffer.map_async(wgpu::MapMode::Read, .., move |result| {
        // The receiver outlives the poll below; a failed send only means it gave up.
        let _ = sender.send(result);
    });
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| FrameError::Readback(e.to_string()))?;
    if let Some(error) = pollster::block_on(scope.pop()) {
        return Err(FrameError::Wgpu(error.to_string()));
    }
    receiver
        .recv()
        .map_err(|_| FrameError::Readback("buffer mapping never completed".into()))?
        .map_err(|e| FrameError::Readback(e.to_string()))?;
    let value = read(
        &buffer
            .get_mapped_range(..)
            .map_err(|e| FrameError::Readback(e.to_string()))?,
    );
    buffer.unmap();
    Ok(value)
}
