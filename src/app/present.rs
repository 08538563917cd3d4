//! Putting the current frame on screen: on the GPU, the source-resolution frame is upscaled
//! by the WGSL bicubic shader into a texture egui draws. A frame decoded on this GPU is drawn
//! from its own texture (an in-between from its two, blended by the shader): nothing is
//! copied. A CPU frame is uploaded first. Without a GPU (no wgpu render state, e.g. under
//! test) the frame goes into an ordinary egui texture.

use std::sync::Arc;

use crate::gpu::{create_output_texture, BicubicUpscaler, GpuError, OUTPUT_FORMAT};
use crate::pipeline::Frame;

/// A texture holding the frame on screen, and its size in pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shown {
    pub texture: egui::TextureId,
    pub size: (u32, u32),
}

/// Draws frames into textures egui can show.
pub enum Presenter {
    Gpu(Box<GpuPresenter>),
    Cpu(CpuPresenter),
}

impl Presenter {
    /// The GPU presenter on eframe's wgpu device when there is one, else the CPU one.
    pub fn new(render_state: Option<&egui_wgpu::RenderState>) -> Self {
        match render_state {
            Some(rs) => Presenter::Gpu(Box::new(GpuPresenter::new(rs))),
            None => Presenter::Cpu(CpuPresenter::default()),
        }
    }

    /// Whether frames can be upscaled on the GPU here.
    pub fn has_gpu(&self) -> bool {
        matches!(self, Presenter::Gpu(_))
    }

    /// Who draws, for the heads-up display: "GPU (llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan))",
    /// the adapter named by [`crate::gpu::adapter_label`].
    pub fn describe(&self) -> String {
        match self {
            Presenter::Gpu(p) => format!("GPU ({})", p.adapter),
            Presenter::Cpu(_) => "CPU (no GPU adapter)".into(),
        }
    }
}

/// Runs the bicubic shader on each new frame (drawn from its own texture when it is on this
/// GPU, uploaded otherwise) into an output texture registered with egui's renderer.
pub struct GpuPresenter {
    upscaler: BicubicUpscaler,
    output: Option<(wgpu::Texture, egui::TextureId)>,
    last: Option<(Arc<Frame>, (u32, u32))>,
    adapter: String,
}

impl GpuPresenter {
    pub fn new(rs: &egui_wgpu::RenderState) -> Self {
        Self {
            upscaler: BicubicUpscaler::new(&rs.device, OUTPUT_FORMAT),
            output: None,
            last: None,
            adapter: crate::gpu::adapter_label(&rs.adapter.get_info()),
        }
    }

    /// The texture showing `frame` resized to `size` (the frame's own size when the
    /// pipeline already upscaled it). The GPU work runs only for a new frame or size.
    pub fn show(
        &mut self,
        rs: &egui_wgpu::RenderState,
        frame: &Arc<Frame>,
        size: (u32, u32),
    ) -> Result<Shown, GpuError> {
        let unchanged = self
            .last
            .as_ref()
            .is_some_and(|(f, s)| Arc::ptr_eq(f, frame) && *s == size);
        if let (true, Some((_, texture))) = (unchanged, &self.output) {
            return Ok(Shown {
                texture: *texture,
                size,
            });
        }
        let device = &rs.device;
        // Without a scope wgpu's default handler panics on a validation error.
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let texture_id = match &self.output {
            Some((texture, id)) if (texture.width(), texture.height()) == size => *id,
            _ => {
                let texture = create_output_texture(device, size.0, size.1);
                let view = texture.create_view(&wgpu::TextureViewDescriptor::default());
                let mut renderer = rs.renderer.write();
                let id = match &self.output {
                    Some((_, id)) => {
                        renderer.update_egui_texture_from_wgpu_texture(
                            device,
                            &view,
                            wgpu::FilterMode::Linear,
                            *id,
                        );
                        *id
                    }
                    None => {
                        renderer.register_native_texture(device, &view, wgpu::FilterMode::Linear)
                    }
                };
                self.output = Some((texture, id));
                id
            }
        };
        let Some((texture, _)) = &self.output else {
            unreachable!("the output texture was just made");
        };
        let view = texture.create_view(&wgpu::TextureViewDescriptor::default());
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("present frame"),
        });
        self.upscaler
            .render_frame(device, &rs.queue, &mut encoder, &frame.image, &view)?;
        rs.queue.submit([encoder.finish()]);
        if let Some(error) = pollster::block_on(scope.pop()) {
            return Err(GpuError::Wgpu(error.to_string()));
        }
        self.last = Some((frame.clone(), size));
        Ok(Shown {
            texture: texture_id,
            size,
        })
    }
}

/// An egui texture updated with each new frame, as it is.
#[derive(Default)]
pub struct CpuPresenter {
    texture: Option<egui::TextureHandle>,
    last: Option<Arc<Frame>>,
}

impl CpuPresenter {
    pub fn show(&mut self, ctx: &egui::Context, frame: &Arc<Frame>) -> Result<Shown, GpuError> {
        let size = frame.image.size();
        let is_new = !self.last.as_ref().is_some_and(|f| Arc::ptr_eq(f, frame));
        if is_new || self.texture.is_none() {
            let image = frame.image.to_cpu()?;
            let pixels = egui::ColorImage::from_rgba_unmultiplied(
                [image.width as usize, image.height as usize],
                &image.pixels,
            );
            match &mut self.texture {
                Some(texture) => texture.set(pixels, egui::TextureOptions::LINEAR),
                None => {
                    self.texture =
                        Some(ctx.load_texture("frame", pixels, egui::TextureOptions::LINEAR))
                }
            }
            self.last = Some(frame.clone());
        }
        let texture = self.texture.as_ref().map(|t| t.id()).unwrap_or_default();
        Ok(Shown { texture, size })
    }
}
