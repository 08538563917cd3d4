//! The bicubic upscaler: two render passes of the Catmull-Rom filter, vertical into an
//! integer intermediate texture, then horizontal into the caller's target.

use super::filter_table::FilterTable;
use super::{check_size, GpuError};
use crate::frame::RgbaImage;

/// The format of output textures that egui can show: not sRGB, so the bytes written are the
/// frame's bytes, and egui reads them as sRGB-encoded colors, which they are.
pub const OUTPUT_FORMAT: wgpu::TextureFormat = wgpu::TextureFormat::Rgba8Unorm;

/// Integer formats for the source and the intermediate: the passes read exact bytes.
const PIXEL_FORMAT: wgpu::TextureFormat = wgpu::TextureFormat::Rgba8Uint;
const TABLE_FORMAT: wgpu::TextureFormat = wgpu::TextureFormat::R32Sint;

/// An output texture for [`BicubicUpscaler::render`] that egui can show
/// (`register_native_texture`) and that can be read back ([`super::read_texture`]).
pub fn create_output_texture(device: &wgpu::Device, width: u32, height: u32) -> wgpu::Texture {
    device.create_texture(&wgpu::TextureDescriptor {
        label: Some("upscaled frame"),
        size: extent(width, height),
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: OUTPUT_FORMAT,
        usage: wgpu::TextureUsages::RENDER_ATTACHMENT
            | wgpu::TextureUsages::TEXTURE_BINDING
            | wgpu::TextureUsages::COPY_SRC,
        view_formats: &[],
    })
}

/// Upscales frames on the GPU with the CPU upscaler's Catmull-Rom filter, byte for byte.
///
/// Holds the source texture, and for the last source and target sizes the weight tables,
/// the intermediate texture and the bind groups; they are rebuilt only when a size changes.
pub struct BicubicUpscaler {
    target_format: wgpu::TextureFormat,
    bind_group_layout: wgpu::BindGroupLayout,
    vertical_pipeline: wgpu::RenderPipeline,
    horizontal_pipeline: wgpu::RenderPipeline,
    source: Option<wgpu::Texture>,
    passes: Option<Passes>,
}

/// Everything that depends on both the source and the target size.
struct Passes {
    source_size: (u32, u32),
    target_size: (u32, u32),
    vertical: wgpu::BindGroup,
    horizontal: wgpu::BindGroup,
    intermediate: wgpu::TextureView,
}

impl BicubicUpscaler {
    /// Builds the pipelines for targets of `target_format`. Use a non-sRGB format
    /// ([`OUTPUT_FORMAT`], or `Bgra8Unorm`) to keep the frame's bytes exactly; with an sRGB
    /// format the shader writes decoded values so the stored bytes match within rounding.
    pub fn new(device: &wgpu::Device, target_format: wgpu::TextureFormat) -> Self {
        let shader = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("bicubic.wgsl"),
            source: wgpu::ShaderSource::Wgsl(include_str!("../../shaders/bicubic.wgsl").into()),
        });
        let texture_entry = |binding, sample_type| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::FRAGMENT,
            ty: wgpu::BindingType::Texture {
                sample_type,
                view_dimension: wgpu::TextureViewDimension::D2,
                multisampled: false,
            },
            count: None,
        };
        let bind_group_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("bicubic pass"),
            entries: &[
                texture_entry(0, wgpu::TextureSampleType::Uint),
                texture_entry(1, wgpu::TextureSampleType::Sint),
            ],
        });
        let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("bicubic pass"),
            bind_group_layouts: &[Some(&bind_group_layout)],
            immediate_size: 0,
        });
        let constants = [(
            "target_is_srgb",
            f64::from(u8::from(target_format.is_srgb())),
        )];
        let pipeline = |label, entry_point, format, constants: &[(&str, f64)]| {
            device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
                label: Some(label),
                layout: Some(&layout),
                vertex: wgpu::VertexState {
                    module: &shader,
                    entry_point: Some("vs_fullscreen"),
                    compilation_options: Default::default(),
                    buffers: &[],
                },
                primitive: wgpu::PrimitiveState::default(),
                depth_stencil: None,
                multisample: wgpu::MultisampleState::default(),
                fragment: Some(wgpu::FragmentState {
                    module: &shader,
                    entry_point: Some(entry_point),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants,
                        ..Default::default()
                    },
                    targets: &[Some(wgpu::ColorTargetState {
                        format,
                        blend: None,
                        write_mask: wgpu::ColorWrites::ALL,
                    })],
                }),
                multiview_mask: None,
                cache: None,
            })
        };
        Self {
            target_format,
            vertical_pipeline: pipeline("bicubic vertical", "fs_vertical", PIXEL_FORMAT, &[]),
            horizontal_pipeline: pipeline(
                "bicubic horizontal",
                "fs_horizontal",
                target_format,
                &constants,
            ),
            bind_group_layout,
            source: None,
            passes: None,
        }
    }

    /// Uploads a frame, (re)creating the source texture when its size changes.
    pub fn upload(
        &mut self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        frame: &RgbaImage,
    ) -> Result<(), GpuError> {
        let size = (frame.width, frame.height);
        if frame.pixels.len() != frame.width as usize * frame.height as usize * 4 {
            return Err(GpuError::BadSize {
                what: "source",
                width: frame.width,
                height: frame.height,
                why: format!("{} bytes of pixels, not 4 per pixel", frame.pixels.len()),
            });
        }
        let source = self.source_texture(device, size.0, size.1)?;
        queue.write_texture(
            source.as_image_copy(),
            &frame.pixels,
            wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(frame.width * 4),
                rows_per_image: Some(frame.height),
            },
            extent(frame.width, frame.height),
        );
        Ok(())
    }

    /// The source texture, (re)created at `width x height` when its size differs: `Rgba8Uint`
    /// with `COPY_DST` usage, for a frame made on the GPU (e.g.
    /// [`super::GpuTaesd::decode_to_texture`]) to be written into instead of [`Self::upload`].
    pub fn source_texture(
        &mut self,
        device: &wgpu::Device,
        width: u32,
        height: u32,
    ) -> Result<&wgpu::Texture, GpuError> {
        if self.source.as_ref().map(|t| (t.width(), t.height())) != Some((width, height)) {
            check_size(device, "source", width, height)?;
            self.passes = None;
            self.source = None;
        }
        Ok(self.source.get_or_insert_with(|| {
            create_texture(
                device,
                "bicubic source",
                (width, height),
                PIXEL_FORMAT,
                wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
            )
        }))
    }

    /// Records the two passes that fill `target` (mip level 0 of a texture of the format
    /// given to [`Self::new`], with `RENDER_ATTACHMENT` usage) with the last uploaded frame
    /// resized to the target's size. Weight tables are rebuilt (and written through
    /// `queue`) only when the source or target size changed.
    pub fn render(
        &mut self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        encoder: &mut wgpu::CommandEncoder,
        target: &wgpu::TextureView,
    ) -> Result<(), GpuError> {
        let Some(source) = &self.source else {
            return Err(GpuError::BadTarget(
                "cannot be drawn: no frame uploaded yet".into(),
            ));
        };
        let texture = target.texture();
        if texture.format() != self.target_format {
            return Err(GpuError::BadTarget(format!(
                "format {:?} differs from the upscaler's {:?}",
                texture.format(),
                self.target_format
            )));
        }
        if !texture
            .usage()
            .contains(wgpu::TextureUsages::RENDER_ATTACHMENT)
        {
            return Err(GpuError::BadTarget("lacks RENDER_ATTACHMENT usage".into()));
        }
        let source_size = (source.width(), source.height());
        let target_size = (texture.width(), texture.height());
        let passes = match self.passes.take() {
            Some(p) if p.source_size == source_size && p.target_size == target_size => p,
            _ => {
                check_size(device, "target", target_size.0, target_size.1)?;
                self.build_passes(device, queue, source, target_size)
            }
        };

        run_pass(
            encoder,
            "bicubic vertical",
            &passes.intermediate,
            &self.vertical_pipeline,
            &passes.vertical,
        );
        run_pass(
            encoder,
            "bicubic horizontal",
            target,
            &self.horizontal_pipeline,
            &passes.horizontal,
        );
        self.passes = Some(passes);
        Ok(())
    }

    fn build_passes(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        source: &wgpu::Texture,
        target_size: (u32, u32),
    ) -> Passes {
        let source_size = (source.width(), source.height());
        let vertical_table = FilterTable::catmull_rom(source_size.1, target_size.1);
        let horizontal_table = FilterTable::catmull_rom(source_size.0, target_size.0);
        let intermediate = create_texture(
            device,
            "bicubic intermediate",
            (source_size.0, target_size.1),
            PIXEL_FORMAT,
            wgpu::TextureUsages::RENDER_ATTACHMENT | wgpu::TextureUsages::TEXTURE_BINDING,
        )
        .create_view(&Default::default());
        let source_view = source.create_view(&Default::default());
        let vertical_table = upload_table(device, queue, &vertical_table);
        let horizontal_table = upload_table(device, queue, &horizontal_table);
        let bind_group = |label, pixels, table| {
            device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(label),
                layout: &self.bind_group_layout,
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: wgpu::BindingResource::TextureView(pixels),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: wgpu::BindingResource::TextureView(table),
                    },
                ],
            })
        };
        Passes {
            source_size,
            target_size,
            vertical: bind_group("bicubic vertical", &source_view, &vertical_table),
            horizontal: bind_group("bicubic horizontal", &intermediate, &horizontal_table),
            intermediate,
        }
    }
}

fn run_pass(
    encoder: &mut wgpu::CommandEncoder,
    label: &str,
    target: &wgpu::TextureView,
    pipeline: &wgpu::RenderPipeline,
    bind_group: &wgpu::BindGroup,
) {
    let mut pass = encoder.begin_render_pass(&wgpu::RenderPassDescriptor {
        label: Some(label),
        color_attachments: &[Some(wgpu::RenderPassColorAttachment {
            view: target,
            depth_slice: None,
            resolve_target: None,
            ops: wgpu::Operations {
                // Every pixel is overwritten; no need to load the old contents.
                load: wgpu::LoadOp::Clear(wgpu::Color::TRANSPARENT),
                store: wgpu::StoreOp::Store,
            },
        })],
        depth_stencil_attachment: None,
        timestamp_writes: None,
        occlusion_query_set: None,
        multiview_mask: None,
    });
    pass.set_pipeline(pipeline);
    pass.set_bind_group(0, bind_group, &[]);
    pass.draw(0..3, 0..1);
}

/// The weights as an R32Sint texture, one row per output pixel (a texture rather than a
/// storage buffer: fragment-stage storage buffers are missing on downlevel backends).
fn upload_table(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    table: &FilterTable,
) -> wgpu::TextureView {
    let size = (table.texture_width(), table.rows.len() as u32);
    let texture = create_texture(
        device,
        "bicubic weights",
        size,
        TABLE_FORMAT,
        wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
    );
    queue.write_texture(
        texture.as_image_copy(),
        bytemuck::cast_slice(&table.texels()),
        wgpu::TexelCopyBufferLayout {
            offset: 0,
            bytes_per_row: Some(size.0 * 4),
            rows_per_image: Some(size.1),
        },
        extent(size.0, size.1),
    );
    texture.create_view(&Default::default())
}

fn create_texture(
    device: &wgpu::Device,
    label: &str,
    (width, height): (u32, u32),
    format: wgpu::TextureFormat,
    usage: wgpu::TextureUsages,
) -> wgpu::Texture {
    device.create_texture(&wgpu::TextureDescriptor {
        label: Some(label),
        size: extent(width, height),
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format,
        usage,
        view_formats: &[],
    })
}

fn extent(width: u32, height: u32) -> wgpu::Extent3d {
    wgpu::Extent3d {
        width,
        height,
        depth_or_array_layers: 1,
    }
}
