//! The bicubic upscaler: two render passes of the Catmull-Rom filter, vertical into an
//! integer intermediate texture, then horizontal into the caller's target. The vertical pass
//! can blend two frames first (an in-between), so in-betweens of frames on the GPU are never
//! made as images of their own.

use wgpu::util::DeviceExt;

use super::filter_table::FilterTable;
use super::{check_size, GpuError};
use crate::frame::blend::MAX_INBETWEENS;
use crate::frame::{FrameImage, RgbaImage};

/// The format of output textures that egui can show: not sRGB, so the bytes written are the
/// frame's bytes, and egui reads them as sRGB-encoded colors, which they are.
pub const OUTPUT_FORMAT: wgpu::TextureFormat = wgpu::TextureFormat::Rgba8Unorm;

/// The format of source frames (and of the intermediate): integer, so the passes read exact
/// bytes. Frames decoded on the GPU ([`super::GpuFrame`]) are made in it.
pub const SOURCE_FORMAT: wgpu::TextureFormat = crate::frame::GPU_FRAME_FORMAT;
const PIXEL_FORMAT: wgpu::TextureFormat = SOURCE_FORMAT;
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

/// What [`BicubicUpscaler::render_from`] resizes.
#[derive(Clone, Copy, Debug)]
pub enum BicubicSource<'a> {
    /// The frame last given to [`BicubicUpscaler::upload`] (or written into
    /// [`BicubicUpscaler::source_texture`]).
    Uploaded,
    /// A texture of [`SOURCE_FORMAT`] with `TEXTURE_BINDING` usage on the upscaler's device,
    /// such as a [`super::GpuFrame`]'s.
    Texture(&'a wgpu::Texture),
    /// In-between `j` of `k` from `prev` toward `next` (two such textures of one size),
    /// blended exactly as [`crate::frame::blend::blend`] does, then resized.
    Inbetween {
        prev: &'a wgpu::Texture,
        next: &'a wgpu::Texture,
        j: usize,
        k: usize,
    },
}

/// Upscales frames on the GPU with the CPU upscaler's Catmull-Rom filter, byte for byte.
///
/// Holds the upload texture, and for the last source and target sizes the weight tables,
/// the intermediate texture and the horizontal pass's bind group; they are rebuilt only when
/// a size changes.
pub struct BicubicUpscaler {
    target_format: wgpu::TextureFormat,
    vertical_layout: wgpu::BindGroupLayout,
    horizontal_layout: wgpu::BindGroupLayout,
    vertical_pipeline: wgpu::RenderPipeline,
    horizontal_pipeline: wgpu::RenderPipeline,
    source: Option<wgpu::Texture>,
    passes: Option<Passes>,
}

/// Everything that depends on both the source and the target size.
struct Passes {
    source_size: (u32, u32),
    target_size: (u32, u32),
    vertical_table: wgpu::TextureView,
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
            source: wgpu::ShaderSource::Wgsl(include_str!("bicubic.wgsl").into()),
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
        let horizontal_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("bicubic horizontal"),
            entries: &[
                texture_entry(0, wgpu::TextureSampleType::Uint),
                texture_entry(1, wgpu::TextureSampleType::Sint),
            ],
        });
        // The vertical pass also reads the frame blended toward and the blend's weights.
        let vertical_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("bicubic vertical"),
            entries: &[
                texture_entry(0, wgpu::TextureSampleType::Uint),
                texture_entry(1, wgpu::TextureSampleType::Sint),
                texture_entry(2, wgpu::TextureSampleType::Uint),
                wgpu::BindGroupLayoutEntry {
                    binding: 3,
                    visibility: wgpu::ShaderStages::FRAGMENT,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: wgpu::BufferSize::new(16),
                    },
                    count: None,
                },
            ],
        });
        let constants = [(
            "target_is_srgb",
            f64::from(u8::from(target_format.is_srgb())),
        )];
        let pipeline = |label,
                        bind_group_layout: &wgpu::BindGroupLayout,
                        entry_point,
                        format,
                        constants: &[(&str, f64)]| {
            let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(label),
                bind_group_layouts: &[Some(bind_group_layout)],
                immediate_size: 0,
            });
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
            vertical_pipeline: pipeline(
                "bicubic vertical",
                &vertical_layout,
                "fs_vertical",
                PIXEL_FORMAT,
                &[],
            ),
            horizontal_pipeline: pipeline(
                "bicubic horizontal",
                &horizontal_layout,
                "fs_horizontal",
                target_format,
                &constants,
            ),
            vertical_layout,
            horizontal_layout,
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
        self.render_from(device, queue, encoder, BicubicSource::Uploaded, target)
    }

    /// [`Self::render_from`] for a pipeline frame: one on this device is drawn from its own
    /// texture (an in-between from its two frames', blended in the pass), with no copy; any
    /// other is uploaded first (read back from the GPU that holds it, if need be).
    ///
    /// wgpu tells devices apart by an id unique within one `wgpu::Instance`: GPU frames must
    /// come from this device's instance (the viewer has one), else read them back first.
    pub fn render_frame(
        &mut self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        encoder: &mut wgpu::CommandEncoder,
        image: &FrameImage,
        target: &wgpu::TextureView,
    ) -> Result<(), GpuError> {
        let source = match image {
            FrameImage::Gpu(frame) if frame.device() == device => {
                BicubicSource::Texture(frame.texture())
            }
            FrameImage::GpuInbetween { prev, next, j, k } if prev.device() == device => {
                BicubicSource::Inbetween {
                    prev: prev.texture(),
                    next: next.texture(),
                    j: *j,
                    k: *k,
                }
            }
            image => {
                self.upload(device, queue, &*image.to_cpu()?)?;
                BicubicSource::Uploaded
            }
        };
        self.render_from(device, queue, encoder, source, target)
    }

    /// [`Self::render`] from `source`: the uploaded frame, a frame already on the GPU, or an
    /// in-between of two, blended as the pass reads them.
    pub fn render_from(
        &mut self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        encoder: &mut wgpu::CommandEncoder,
        source: BicubicSource<'_>,
        target: &wgpu::TextureView,
    ) -> Result<(), GpuError> {
        // (frame, frame blended toward, weights (prev, next, k + 1)); (1, 0, 1) is no blend.
        let (prev, next, weights) = match source {
            BicubicSource::Uploaded => {
                let Some(uploaded) = &self.source else {
                    return Err(GpuError::BadTarget(
                        "cannot be drawn: no frame uploaded yet".into(),
                    ));
                };
                (uploaded, uploaded, [1, 0, 1])
            }
            BicubicSource::Texture(texture) => {
                check_source(texture)?;
                (texture, texture, [1, 0, 1])
            }
            BicubicSource::Inbetween { prev, next, j, k } => {
                check_source(prev)?;
                check_source(next)?;
                if prev.size() != next.size() {
                    return Err(GpuError::BadInput(format!(
                        "in-between of a {}x{} and a {}x{} frame",
                        prev.width(),
                        prev.height(),
                        next.width(),
                        next.height()
                    )));
                }
                if j >= k || k > MAX_INBETWEENS {
                    return Err(GpuError::BadInput(format!("in-between {j} of {k}")));
                }
                (prev, next, [(k - j) as u32, (j + 1) as u32, (k + 1) as u32])
            }
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
        let source_size = (prev.width(), prev.height());
        let target_size = (texture.width(), texture.height());
        let passes = match self.passes.take() {
            Some(p) if p.source_size == source_size && p.target_size == target_size => p,
            _ => {
                check_size(device, "target", target_size.0, target_size.1)?;
                self.build_passes(device, queue, source_size, target_size)
            }
        };
        // Made per frame (a few hundred bytes): the sources change with every frame, and
        // several renders recorded into one encoder each keep their own weights.
        let weights = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("bicubic in-between weights"),
            contents: bytemuck::cast_slice(&[weights[0], weights[1], weights[2], 0u32]),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let vertical = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("bicubic vertical"),
            layout: &self.vertical_layout,
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::TextureView(
                        &prev.create_view(&Default::default()),
                    ),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: wgpu::BindingResource::TextureView(&passes.vertical_table),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: wgpu::BindingResource::TextureView(
                        &next.create_view(&Default::default()),
                    ),
                },
                wgpu::BindGroupEntry {
                    binding: 3,
                    resource: weights.as_entire_binding(),
                },
            ],
        });

        run_pass(
            encoder,
            "bicubic vertical",
            &passes.intermediate,
            &self.vertical_pipeline,
            &vertical,
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
        source_size: (u32, u32),
        target_size: (u32, u32),
    ) -> Passes {
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
        let vertical_table = upload_table(device, queue, &vertical_table);
        let horizontal_table = upload_table(device, queue, &horizontal_table);
        let horizontal = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("bicubic horizontal"),
            layout: &self.horizontal_layout,
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::TextureView(&intermediate),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: wgpu::BindingResource::TextureView(&horizontal_table),
                },
            ],
        });
        Passes {
            source_size,
            target_size,
            vertical_table,
            horizontal,
            intermediate,
        }
    }
}

/// A frame texture the vertical pass can read.
fn check_source(texture: &wgpu::Texture) -> Result<(), GpuError> {
    if texture.format() != SOURCE_FORMAT
        || !texture
            .usage()
            .contains(wgpu::TextureUsages::TEXTURE_BINDING)
    {
        return Err(GpuError::BadInput(format!(
            "a source frame must be {SOURCE_FORMAT:?} with TEXTURE_BINDING usage, not {:?} with {:?}",
            texture.format(),
            texture.usage()
        )));
    }
    Ok(())
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

pub(super) fn create_texture(
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
