//! The TAESD decoder as WGSL compute shaders: latents -> image on any Vulkan, Metal or DX12
//! GPU, the frame staying on the GPU for the bicubic upscaler.
//!
//! It runs the CPU decoder's weights ([`TaesdDecoder::conv_weights`]) through the same graph
//! (see [`crate::model::decoders::taesd`]); every layer is one dispatch of `shaders/taesd_conv.wgsl`, a
//! direct 3x3 convolution with the nearest upsampling, bias, residual add, ReLU and the output
//! mapping fused in. The soft clamp `tanh(x / 3) * 3` is applied on the CPU while the latents
//! are rearranged for upload (a few thousand values).
//!
//! Storage bindings are limited (128 MiB by default, less than one 576x1024x64 f32
//! activation), so the last stage, the one at full resolution, runs in row bands: each band
//! computes its rows plus a halo of one row per remaining convolution, in buffers sized to fit
//! [`GpuTaesd::set_band_limit`] and the device's limits. Earlier stages run whole.

use candle_core::{DType, Device, Tensor};
use parking_lot::Mutex;
use wgpu::util::DeviceExt;

use super::{GpuContext, GpuError, GpuFrame};
use crate::frame::RgbaImage;
use crate::model::decoders::{ConvWeights, TaesdDecoder};

/// Default cap on one full-resolution band buffer. For 72x128 latents the 576 image rows run
/// as 4 bands of 144 (each with 8 halo rows, ~4% more work) and all activations take ~160 MB.
pub const DEFAULT_BAND_LIMIT_BYTES: u64 = 48 << 20;

/// Output pixels per workgroup along a row (`TILE_W` in the shader).
const TILE_W: u32 = 32;
/// Pixels along a row per invocation, times invocations along a row.
const X_GROUPS: u32 = 4;
/// Bytes of one `Params` slot in the shader.
const PARAMS_BYTES: usize = 64;

/// `FLAG_*` in the shader.
const FLAG_RELU: u32 = 1;
const FLAG_SKIP: u32 = 2;
const FLAG_IMAGE_F32: u32 = 4;
const FLAG_IMAGE_RGBA: u32 = 8;

/// The TAESD decoder on a wgpu device.
///
/// Holds the weights in GPU buffers and, for the last latent size, the activation buffers,
/// the per-dispatch parameters and bind groups; they are rebuilt only when the size changes.
/// Methods take `&self` (the per-size state sits behind a mutex), so one decoder can be
/// shared between threads.
pub struct GpuTaesd {
    device: wgpu::Device,
    queue: wgpu::Queue,
    latent_channels: usize,
    out_channels: usize,
    scale: u32,
    first: GpuConv,
    stages: Vec<GpuStage>,
    act: Kernel,
    image: Kernel,
    /// A zero vec4 bound where a dispatch has no residual input.
    no_skip: wgpu::Buffer,
    band_limit_bytes: u64,
    plan: Mutex<Option<Plan>>,
}

/// One compute pipeline of the shader and how its workgroups tile the output.
struct Kernel {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    /// Output rows per workgroup.
    tile_h: u32,
    /// Workgroups along z, each 8 * cout_groups output channels.
    z_blocks: u32,
    /// Output channels padded to a whole number of workgroups, over 4.
    out_quads: u32,
}

/// A convolution's weights on the GPU.
struct GpuConv {
    /// One mat4x4 per (input quad, tap, output quad), columns = input channels.
    weights: wgpu::Buffer,
    /// One vec4 per output quad (zeros for the bias-free convolutions).
    bias: wgpu::Buffer,
    in_quads: u32,
}

struct GpuStage {
    blocks: Vec<[GpuConv; 3]>,
    conv: GpuConv,
}

/// Everything that depends on the latent size.
struct Plan {
    latent_hw: (usize, usize),
    latents: wgpu::Buffer,
    /// NCHW f32 image of one batch row, diffusers' convention.
    image: wgpu::Buffer,
    /// RGBA8 rows padded to `COPY_BYTES_PER_ROW_ALIGNMENT`.
    rgba: wgpu::Buffer,
    rgba_row_bytes: u32,
    image_hw: (u32, u32),
    dispatches: Vec<Dispatch>,
    /// Kept alive for the bind groups.
    _params: wgpu::Buffer,
    _activations: Vec<wgpu::Buffer>,
}

struct Dispatch {
    image: bool,
    bind_group: wgpu::BindGroup,
    params_offset: u32,
    workgroups: [u32; 3],
}

impl GpuTaesd {
    /// Uploads `decoder`'s weights to the context's device.
    pub fn new(ctx: &GpuContext, decoder: &TaesdDecoder) -> Result<Self, GpuError> {
        Self::with_device(&ctx.device, &ctx.queue, decoder)
    }

    /// Uploads `decoder`'s weights to `device` (e.g. the viewer's egui device). Needs only
    /// wgpu's default limits: 256 invocations and 15 KiB of workgroup memory per workgroup,
    /// 5 storage buffers per dispatch.
    pub fn with_device(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        decoder: &TaesdDecoder,
    ) -> Result<Self, GpuError> {
        let config = decoder.config();
        let convs = decoder.conv_weights();
        let width = config.decoder_block_out_channels[0];
        let expected = 1 + config
            .num_decoder_blocks
            .iter()
            .map(|blocks| 3 * blocks + 1)
            .sum::<usize>();
        if convs.len() != expected {
            return Err(GpuError::BadInput(format!(
                "TAESD decoder has {} convolutions, its config describes {expected}",
                convs.len()
            )));
        }
        let scale = u32::try_from(config.upsampling_scaling_factor)
            .map_err(|_| GpuError::BadInput("upsampling factor too large".into()))?;

        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let shader = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("taesd_conv.wgsl"),
            source: wgpu::ShaderSource::Wgsl(include_str!("../../shaders/taesd_conv.wgsl").into()),
        });
        let act = Kernel::new(device, &shader, "conv_act", width)?;
        let image = Kernel::new(device, &shader, "conv_image", config.out_channels)?;

        let mut convs = convs.iter();
        let mut next = |in_quads: u32, out_quads: u32| -> Result<GpuConv, GpuError> {
            let conv = convs
                .next()
                .ok_or_else(|| GpuError::BadInput("TAESD decoder lacks a convolution".into()))?;
            Ok(GpuConv::new(device, conv, in_quads, out_quads))
        };
        let latent_quads = config.latent_channels.div_ceil(4) as u32;
        let first = next(latent_quads, act.out_quads)?;
        let stage_count = config.num_decoder_blocks.len();
        let mut stages = Vec::with_capacity(stage_count);
        for (index, &blocks) in config.num_decoder_blocks.iter().enumerate() {
            let blocks = (0..blocks)
                .map(|_| {
                    Ok([
                        next(act.out_quads, act.out_quads)?,
                        next(act.out_quads, act.out_quads)?,
                        next(act.out_quads, act.out_quads)?,
                    ])
                })
                .collect::<Result<Vec<_>, GpuError>>()?;
            let last = index + 1 == stage_count;
            let out_quads = if last { image.out_quads } else { act.out_quads };
            let conv = next(act.out_quads, out_quads)?;
            stages.push(GpuStage { blocks, conv });
        }
        let no_skip = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("taesd no skip"),
            contents: &[0; 16],
            usage: wgpu::BufferUsages::STORAGE,
        });
        if let Some(error) = pollster::block_on(scope.pop()) {
            return Err(GpuError::Wgpu(error.to_string()));
        }
        Ok(Self {
            device: device.clone(),
            queue: queue.clone(),
            latent_channels: config.latent_channels,
            out_channels: config.out_channels,
            scale,
            first,
            stages,
            act,
            image,
            no_skip,
            band_limit_bytes: DEFAULT_BAND_LIMIT_BYTES,
            plan: Mutex::new(None),
        })
    }

    /// Caps each full-resolution band buffer at `bytes` (default
    /// [`DEFAULT_BAND_LIMIT_BYTES`]; the device's storage-binding limit always applies too).
    /// Smaller bands use less GPU memory and add more halo rows; the result is the same.
    pub fn set_band_limit(&mut self, bytes: u64) {
        self.band_limit_bytes = bytes;
        *self.plan.get_mut() = None;
    }

    /// Image pixels per latent pixel along each side (8 for the default config).
    pub fn upscale_factor(&self) -> usize {
        (self.scale as usize).pow(self.stages.len() as u32 - 1)
    }

    /// Row bands the full-resolution stage runs in for `h x w` latents on this device.
    pub fn band_count(&self, h: usize, w: usize) -> Result<usize, GpuError> {
        Ok(self.band_rows(h, w)?.1)
    }

    /// Decodes `(B, latent_channels, h, w)` latents to a `(B, out_channels, h*f, w*f)` f32
    /// tensor on the CPU, the same values as [`TaesdDecoder::decode`] (diffusers' convention:
    /// `x * 2 - 1` of TAESD's [0, 1] image, not clamped). Waits for the GPU.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor, GpuError> {
        let (n, h, w) = self.check_latents(latents)?;
        let values = self.decode_f32(latents)?;
        let f = self.upscale_factor();
        Tensor::from_vec(values, (n, self.out_channels, h * f, w * f), &Device::Cpu)
            .map_err(|e| GpuError::Readback(e.to_string()))
    }

    /// [`Self::decode`] as a flat NCHW vector.
    pub fn decode_f32(&self, latents: &Tensor) -> Result<Vec<f32>, GpuError> {
        let (bytes, _) = self.run_batch(latents, Output::Image)?;
        // Copied out rather than cast in place: the bytes need not be 4-aligned.
        Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// Decodes to one RGBA8 image per batch row, the same bytes (within 1, where a value
    /// lands on a rounding boundary) as [`TaesdDecoder::decode_rgba`]: TAESD's [0, 1] image
    /// clamped, times 255, rounded; alpha 255. Waits for the GPU.
    pub fn decode_rgba(&self, latents: &Tensor) -> Result<Vec<RgbaImage>, GpuError> {
        self.check_rgb()?;
        let (bytes, sizes) = self.run_batch(latents, Output::Rgba)?;
        let (height, width, padded_row) = (sizes.height, sizes.width, sizes.rgba_row_bytes);
        let row_bytes = width as usize * 4;
        let per_image = padded_row as usize * height as usize;
        bytes
            .chunks_exact(per_image)
            .map(|image| {
                let mut pixels = Vec::with_capacity(row_bytes * height as usize);
                for row in image.chunks_exact(padded_row as usize) {
                    pixels.extend_from_slice(&row[..row_bytes]);
                }
                RgbaImage::from_pixels(width, height, pixels)
                    .ok_or_else(|| GpuError::Readback("RGBA image size".into()))
            })
            .collect()
    }

    /// Decodes `(1, latent_channels, h, w)` latents straight into `target`, which must be
    /// `w*f x h*f`, `Rgba8Unorm`, `Rgba8UnormSrgb` or `Rgba8Uint` (the bicubic upscaler's
    /// source, [`super::BicubicUpscaler::source_texture`]) and have `COPY_DST` usage. The
    /// bytes are those of [`Self::decode_rgba`]. Submits the work and returns without
    /// waiting: later submissions on the same queue (the upscaler's passes) see the frame.
    /// Returns the submission, for a caller that wants to wait for it.
    pub fn decode_to_texture(
        &self,
        latents: &Tensor,
        target: &wgpu::Texture,
    ) -> Result<wgpu::SubmissionIndex, GpuError> {
        use wgpu::TextureFormat as F;
        self.check_rgb()?;
        let (n, h, w) = self.check_latents(latents)?;
        if n != 1 {
            return Err(GpuError::BadInput(format!(
                "decode_to_texture takes one latent, got a batch of {n}"
            )));
        }
        if !matches!(
            target.format(),
            F::Rgba8Unorm | F::Rgba8UnormSrgb | F::Rgba8Uint
        ) {
            return Err(GpuError::BadTarget(format!(
                "format {:?} cannot take RGBA8 bytes",
                target.format()
            )));
        }
        if !target.usage().contains(wgpu::TextureUsages::COPY_DST) {
            return Err(GpuError::BadTarget("lacks COPY_DST usage".into()));
        }
        let f = self.upscale_factor() as u32;
        let (height, width) = (h as u32 * f, w as u32 * f);
        if (target.width(), target.height()) != (width, height) {
            return Err(GpuError::BadTarget(format!(
                "is {}x{}, the decoded frame {width}x{height}",
                target.width(),
                target.height()
            )));
        }
        let values = latent_values(latents)?;
        let mut guard = self.plan.lock();
        let plan = self.plan_for(&mut guard, h, w)?;
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        self.queue.write_buffer(
            &plan.latents,
            0,
            bytemuck::cast_slice(&self.latent_quads(&values, h, w)),
        );
        let mut encoder = self.encoder();
        self.record(plan, &mut encoder);
        encoder.copy_buffer_to_texture(
            wgpu::TexelCopyBufferInfo {
                buffer: &plan.rgba,
                layout: wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(plan.rgba_row_bytes),
                    rows_per_image: Some(height),
                },
            },
            target.as_image_copy(),
            wgpu::Extent3d {
                width,
                height,
                depth_or_array_layers: 1,
            },
        );
        let submission = self.queue.submit([encoder.finish()]);
        match pollster::block_on(scope.pop()) {
            Some(error) => Err(GpuError::Wgpu(error.to_string())),
            None => Ok(submission),
        }
    }

    /// Decodes `(1, latent_channels, h, w)` latents into a new [`GpuFrame`], which stays on
    /// the GPU until someone reads it back. Waits for the GPU to finish (so the time this
    /// takes is the decode's time), but copies nothing to the CPU.
    pub fn decode_frame(&self, latents: &Tensor) -> Result<GpuFrame, GpuError> {
        let (_, h, w) = self.check_latents(latents)?;
        let f = self.upscale_factor() as u32;
        let (width, height) = (w as u32 * f, h as u32 * f);
        super::check_size(&self.device, "decoded frame", width, height)?;
        let texture = super::bicubic::create_texture(
            &self.device,
            "decoded frame",
            (width, height),
            super::SOURCE_FORMAT,
            wgpu::TextureUsages::TEXTURE_BINDING
                | wgpu::TextureUsages::COPY_DST
                | wgpu::TextureUsages::COPY_SRC,
        );
        let submission = self.decode_to_texture(latents, &texture)?;
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(submission),
                timeout: None,
            })
            .map_err(|e| GpuError::Wgpu(e.to_string()))?;
        GpuFrame::new(texture, &self.device, &self.queue)
    }

    /// Decodes every batch row, copying each row's `output` into one read-back buffer;
    /// returns its bytes.
    fn run_batch(&self, latents: &Tensor, output: Output) -> Result<(Vec<u8>, Sizes), GpuError> {
        let (n, h, w) = self.check_latents(latents)?;
        let values = latent_values(latents)?;
        let mut guard = self.plan.lock();
        let plan = self.plan_for(&mut guard, h, w)?;
        let (height, width) = plan.image_hw;
        let (source, size) = match output {
            Output::Image => (
                &plan.image,
                self.out_channels as u64 * u64::from(height * width) * 4,
            ),
            Output::Rgba => (&plan.rgba, u64::from(plan.rgba_row_bytes * height)),
        };
        let sizes = Sizes {
            height,
            width,
            rgba_row_bytes: plan.rgba_row_bytes,
        };
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let readback = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("taesd readback"),
            size: size * n as u64,
            usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ,
            mapped_at_creation: false,
        });
        let per_row = self.latent_channels * h * w;
        for (row, values) in values.chunks_exact(per_row).enumerate() {
            // Written before this submission runs and after the previous one: the rows
            // can share one latent buffer.
            self.queue.write_buffer(
                &plan.latents,
                0,
                bytemuck::cast_slice(&self.latent_quads(values, h, w)),
            );
            let mut encoder = self.encoder();
            self.record(plan, &mut encoder);
            encoder.copy_buffer_to_buffer(source, 0, &readback, row as u64 * size, size);
            self.queue.submit([encoder.finish()]);
        }
        let bytes = super::map_read(&self.device, &readback, scope, <[u8]>::to_vec)?;
        Ok((bytes, sizes))
    }

    fn encoder(&self) -> wgpu::CommandEncoder {
        self.device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("taesd decode"),
            })
    }

    /// Records every convolution of one decode (the latents already written).
    fn record(&self, plan: &Plan, encoder: &mut wgpu::CommandEncoder) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("taesd decode"),
            timestamp_writes: None,
        });
        for dispatch in &plan.dispatches {
            let kernel = if dispatch.image {
                &self.image
            } else {
                &self.act
            };
            pass.set_pipeline(&kernel.pipeline);
            pass.set_bind_group(0, &dispatch.bind_group, &[dispatch.params_offset]);
            let [x, y, z] = dispatch.workgroups;
            pass.dispatch_workgroups(x, y, z);
        }
    }

    fn check_latents(&self, latents: &Tensor) -> Result<(usize, usize, usize), GpuError> {
        match *latents.dims() {
            [n, c, h, w] if c == self.latent_channels && n * h * w > 0 => Ok((n, h, w)),
            _ => Err(GpuError::BadInput(format!(
                "TAESD latents must be (batch, {}, height, width), got {:?}",
                self.latent_channels,
                latents.dims()
            ))),
        }
    }

    fn check_rgb(&self) -> Result<(), GpuError> {
        if self.out_channels != 3 {
            return Err(GpuError::BadInput(format!(
                "RGBA output needs a 3-channel decoder, this one has {}",
                self.out_channels
            )));
        }
        Ok(())
    }

    /// One batch row's NCHW latents, soft-clamped, as quad-planar vec4s.
    fn latent_quads(&self, nchw: &[f32], h: usize, w: usize) -> Vec<f32> {
        let quads = self.latent_channels.div_ceil(4);
        let mut out = vec![0f32; quads * h * w * 4];
        for (c, plane) in nchw.chunks_exact(h * w).enumerate() {
            let (quad, lane) = (c / 4, c % 4);
            for (i, &value) in plane.iter().enumerate() {
                out[(quad * h * w + i) * 4 + lane] = (value / 3.0).tanh() * 3.0;
            }
        }
        out
    }

    /// Full-resolution band rows and band count for `h x w` latents.
    fn band_rows(&self, h: usize, w: usize) -> Result<(u32, usize), GpuError> {
        let f = self.upscale_factor();
        let (height, width) = (h * f, w * f);
        let last = self.stages.last().map_or(0, |s| s.blocks.len());
        // Convolutions of the band phase that write band buffers, each widening the rows
        // the next one reads by one on each side.
        let halo = 3 * last + usize::from(self.stages.len() > 1);
        let row_bytes = width as u64 * u64::from(self.act.out_quads) * 16;
        let limits = self.device.limits();
        let cap = self
            .band_limit_bytes
            .min(limits.max_storage_buffer_binding_size)
            .min(limits.max_buffer_size);
        let rows_fit = (cap / row_bytes) as usize;
        if rows_fit <= 2 * halo {
            return Err(self.too_large(
                h,
                w,
                format!(
                    "a band of the {width}-pixel-wide activations needs more than {} rows \
                     within {cap} bytes",
                    2 * halo
                ),
            ));
        }
        let bands = height.div_ceil(rows_fit - 2 * halo);
        Ok((height.div_ceil(bands) as u32, bands))
    }

    fn too_large(&self, h: usize, w: usize, why: String) -> GpuError {
        GpuError::BadSize {
            what: "latents",
            width: w as u32,
            height: h as u32,
            why,
        }
    }

    /// The plan for `h x w` latents, built when the size changed.
    fn plan_for<'a>(
        &self,
        slot: &'a mut Option<Plan>,
        h: usize,
        w: usize,
    ) -> Result<&'a Plan, GpuError> {
        if slot.as_ref().map(|p| p.latent_hw) != Some((h, w)) {
            *slot = None;
            *slot = Some(self.build_plan(h, w)?);
        }
        slot.as_ref()
            .ok_or_else(|| GpuError::Wgpu("decode plan missing".into()))
    }

    fn build_plan(&self, h: usize, w: usize) -> Result<Plan, GpuError> {
        let device = &self.device;
        let limits = device.limits();
        let f = self.upscale_factor();
        let (height, width) = (h * f, w * f);
        let max_side = limits.max_texture_dimension_2d as usize;
        if height > max_side || width > max_side {
            return Err(self.too_large(
                h,
                w,
                format!(
                    "the {width}x{height} image exceeds the device's {max_side} pixels per side"
                ),
            ));
        }
        let (band_rows, _) = self.band_rows(h, w)?;
        let binding_limit = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);

        let ops = self.ops(h, w, band_rows);
        // Each activation buffer as large as the most rows any op writes into it.
        let act_pixel_bytes = u64::from(self.act.out_quads) * 16;
        let mut act_bytes = [0u64; 4];
        for op in &ops {
            if let Buf::Act(i) = op.output.buf {
                let bytes = u64::from(op.output.rows * op.out_w) * act_pixel_bytes;
                act_bytes[i] = act_bytes[i].max(bytes);
            }
        }
        let image_bytes = (self.out_channels * height * width * 4) as u64;
        let rgba_row_bytes =
            (width as u32 * 4).next_multiple_of(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT);
        let rgba_bytes = u64::from(rgba_row_bytes) * height as u64;
        let largest_act = act_bytes.iter().copied().max().unwrap_or(0);
        for (what, bytes) in [
            ("activation", largest_act),
            ("f32 image", image_bytes),
            ("RGBA image", rgba_bytes),
        ] {
            if bytes > binding_limit {
                return Err(self.too_large(
                    h,
                    w,
                    format!(
                        "its {what} buffer of {bytes} bytes exceeds the device's \
                         {binding_limit}-byte storage binding limit"
                    ),
                ));
            }
        }
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let storage = |label: &str, size: u64, extra: wgpu::BufferUsages| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: size.max(16),
                usage: wgpu::BufferUsages::STORAGE | extra,
                mapped_at_creation: false,
            })
        };
        let latents = storage(
            "taesd latents",
            (self.latent_channels.div_ceil(4) * h * w * 16) as u64,
            wgpu::BufferUsages::COPY_DST,
        );
        let image = storage("taesd image", image_bytes, wgpu::BufferUsages::COPY_SRC);
        let rgba = storage("taesd rgba", rgba_bytes, wgpu::BufferUsages::COPY_SRC);
        let activations: Vec<wgpu::Buffer> = act_bytes
            .iter()
            .map(|&bytes| storage("taesd activation", bytes, wgpu::BufferUsages::empty()))
            .collect();

        let align = limits
            .min_uniform_buffer_offset_alignment
            .max(PARAMS_BYTES as u32) as usize;
        let mut params = vec![0u8; ops.len() * align];
        let params_buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("taesd params"),
            size: params.len().max(align) as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let resolve = |buf: Buf| -> &wgpu::Buffer {
            match buf {
                Buf::Latents => &latents,
                Buf::Image => &image,
                Buf::NoSkip => &self.no_skip,
                Buf::Act(i) => &activations[i],
            }
        };
        let mut dispatches = Vec::with_capacity(ops.len());
        for (index, op) in ops.iter().enumerate() {
            let kernel = if op.image { &self.image } else { &self.act };
            let mut flags = 0;
            if op.relu {
                flags |= FLAG_RELU;
            }
            if op.skip.is_some() {
                flags |= FLAG_SKIP;
            }
            if op.image {
                flags |= FLAG_IMAGE_F32;
                if self.out_channels == 3 {
                    flags |= FLAG_IMAGE_RGBA;
                }
            }
            let skip = op.skip.unwrap_or(Rows {
                buf: Buf::NoSkip,
                row0: 0,
                rows: 0,
            });
            let conv = op.conv(self);
            let values: [u32; PARAMS_BYTES / 4] = [
                op.out_w / op.up,
                op.input.row0,
                op.input.rows,
                conv.in_quads,
                op.out_w,
                op.out_h,
                op.output.row0,
                op.output.rows,
                op.up,
                flags,
                skip.row0,
                skip.rows,
                kernel.out_quads,
                self.out_channels as u32,
                rgba_row_bytes / 4,
                0,
            ];
            let offset = index * align;
            params[offset..offset + PARAMS_BYTES].copy_from_slice(bytemuck::cast_slice(&values));
            fn storage_entry(binding: u32, buffer: &wgpu::Buffer) -> wgpu::BindGroupEntry<'_> {
                wgpu::BindGroupEntry {
                    binding,
                    resource: buffer.as_entire_binding(),
                }
            }
            let mut entries = vec![
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &params_buffer,
                        offset: 0,
                        size: wgpu::BufferSize::new(PARAMS_BYTES as u64),
                    }),
                },
                storage_entry(1, resolve(op.input.buf)),
                storage_entry(2, &conv.weights),
                storage_entry(3, &conv.bias),
            ];
            if op.image {
                entries.push(storage_entry(6, &image));
                entries.push(storage_entry(7, &rgba));
            } else {
                entries.push(storage_entry(4, resolve(skip.buf)));
                entries.push(storage_entry(5, resolve(op.output.buf)));
            }
            let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("taesd conv"),
                layout: &kernel.layout,
                entries: &entries,
            });
            dispatches.push(Dispatch {
                image: op.image,
                bind_group,
                params_offset: offset as u32,
                workgroups: [
                    op.out_w.div_ceil(TILE_W),
                    op.output.rows.div_ceil(kernel.tile_h),
                    kernel.z_blocks,
                ],
            });
        }
        self.queue.write_buffer(&params_buffer, 0, &params);
        if let Some(error) = pollster::block_on(oom.pop()) {
            return Err(GpuError::Wgpu(format!(
                "out of GPU memory for {h}x{w} latents: {error}"
            )));
        }
        if let Some(error) = pollster::block_on(scope.pop()) {
            return Err(GpuError::Wgpu(error.to_string()));
        }
        tracing::debug!(
            "TAESD GPU plan for {h}x{w} latents: {} dispatches, bands of {band_rows} rows",
            dispatches.len()
        );
        Ok(Plan {
            latent_hw: (h, w),
            latents,
            image,
            rgba,
            rgba_row_bytes,
            image_hw: (height as u32, width as u32),
            dispatches,
            _params: params_buffer,
            _activations: activations,
        })
    }

    /// Every convolution of one decode in order, with the rows each one reads and writes.
    ///
    /// Activations live in four buffers: three rotate through the stages before the last;
    /// then the one holding the last stage's input stays, and the other two with a fourth
    /// hold the bands.
    fn ops(&self, h: usize, w: usize, band_rows: u32) -> Vec<Op> {
        let whole = |index, rows| Rows {
            buf: Buf::Act(index),
            row0: 0,
            rows,
        };
        let op = |conv, input, output, up, (out_h, out_w): (u32, u32)| Op {
            conv,
            image: false,
            input,
            output,
            skip: None,
            up,
            relu: true,
            out_h,
            out_w,
        };
        let (mut hh, mut ww) = (h as u32, w as u32);
        let latents = Rows {
            buf: Buf::Latents,
            row0: 0,
            rows: hh,
        };
        let mut ops = vec![op(ConvId::First, latents, whole(0, hh), 1, (hh, ww))];
        let (mut x, mut spare) = (0, [1, 2]);
        let last = self.stages.len() - 1;
        for s in 0..last {
            for b in 0..self.stages[s].blocks.len() {
                let [t1, t2] = spare;
                let block =
                    |k, input, output| op(ConvId::Block(s, b, k), input, output, 1, (hh, ww));
                ops.push(block(0, whole(x, hh), whole(t1, hh)));
                ops.push(block(1, whole(t1, hh), whole(t2, hh)));
                ops.push(Op {
                    skip: Some(whole(x, hh)),
                    ..block(2, whole(t2, hh), whole(t1, hh))
                });
                (x, spare) = (t1, [x, t2]);
            }
            // The convolution up to full resolution runs in the bands below.
            if s + 1 < last {
                let [y, other] = spare;
                let (sh, sw) = (hh * self.scale, ww * self.scale);
                let conv = op(
                    ConvId::StageConv(s),
                    whole(x, hh),
                    whole(y, sh),
                    self.scale,
                    (sh, sw),
                );
                ops.push(Op {
                    relu: false,
                    ..conv
                });
                (x, spare, hh, ww) = (y, [x, other], sh, sw);
            }
        }

        // The last stage, in row bands of the full-resolution image. An op followed by
        // `after` more convolutions in the band computes `after` extra rows on each side.
        let stage = &self.stages[last];
        let up = if last > 0 { self.scale } else { 1 };
        let (height, width) = (hh * up, ww * up);
        let (stage_input, input) = (x, whole(x, hh));
        let band = [spare[0], spare[1], 3];
        for y0 in (0..height).step_by(band_rows.max(1) as usize) {
            let y1 = (y0 + band_rows).min(height);
            let rows = |buf, after: u32| {
                let row0 = y0.saturating_sub(after);
                Rows {
                    buf,
                    row0,
                    rows: (y1 + after).min(height) - row0,
                }
            };
            let mut after = 3 * stage.blocks.len() as u32 + 1;
            let (mut x, mut spare) = (input, [band[0], band[1]]);
            if last > 0 {
                let output = rows(Buf::Act(band[0]), after);
                let conv = op(ConvId::StageUp, input, output, up, (height, width));
                ops.push(Op {
                    relu: false,
                    ..conv
                });
                (x, spare) = (output, [band[1], band[2]]);
            }
            for b in 0..stage.blocks.len() {
                let [t1, t2] = spare;
                let block = |k, input, output| {
                    op(ConvId::Block(last, b, k), input, output, 1, (height, width))
                };
                let (r1, r2, out) = (
                    rows(Buf::Act(t1), after - 1),
                    rows(Buf::Act(t2), after - 2),
                    rows(Buf::Act(t1), after - 3),
                );
                ops.push(block(0, x, r1));
                ops.push(block(1, r1, r2));
                ops.push(Op {
                    skip: Some(x),
                    ..block(2, r2, out)
                });
                // The stage's input stays for the next band; a band buffer is free again.
                let freed = match x.buf {
                    Buf::Act(i) if i != stage_input => i,
                    _ => band[2],
                };
                (x, spare, after) = (out, [t2, freed], after - 3);
            }
            ops.push(Op {
                image: true,
                relu: false,
                ..op(ConvId::Final, x, rows(Buf::Image, 0), 1, (height, width))
            });
        }
        ops
    }
}

/// What a read-back decode copies out.
#[derive(Debug, Clone, Copy)]
enum Output {
    Image,
    Rgba,
}

/// The image size of a plan, with the RGBA buffer's row pitch.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    height: u32,
    width: u32,
    rgba_row_bytes: u32,
}

/// Which buffer an op reads or writes (resolved when the plan is built).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Buf {
    Latents,
    /// One of the four activation buffers.
    Act(usize),
    Image,
    NoSkip,
}

/// The rows of an activation a buffer holds: global rows `row0 .. row0 + rows`.
#[derive(Debug, Clone, Copy)]
struct Rows {
    buf: Buf,
    row0: u32,
    rows: u32,
}

#[derive(Debug, Clone, Copy)]
enum ConvId {
    First,
    Block(usize, usize, usize),
    StageConv(usize),
    /// The convolution up to full resolution (the next-to-last stage's), run in bands.
    StageUp,
    Final,
}

/// One dispatch: a convolution, where its input and output rows live, what is fused.
#[derive(Debug, Clone, Copy)]
struct Op {
    conv: ConvId,
    image: bool,
    input: Rows,
    output: Rows,
    skip: Option<Rows>,
    up: u32,
    relu: bool,
    out_h: u32,
    out_w: u32,
}

impl Op {
    fn conv<'a>(&self, taesd: &'a GpuTaesd) -> &'a GpuConv {
        let stages = &taesd.stages;
        match self.conv {
            ConvId::First => &taesd.first,
            ConvId::Block(s, b, k) => &stages[s].blocks[b][k],
            ConvId::StageConv(s) => &stages[s].conv,
            ConvId::StageUp => &stages[stages.len() - 2].conv,
            ConvId::Final => &stages[stages.len() - 1].conv,
        }
    }
}

impl Kernel {
    fn new(
        device: &wgpu::Device,
        shader: &wgpu::ShaderModule,
        entry_point: &str,
        out_channels: usize,
    ) -> Result<Self, GpuError> {
        let limits = device.limits();
        // Groups of 8 output channels per workgroup: all of them up to 64 (one input tile
        // serves every output channel), rows filling 256 invocations, at most 16.
        let groups = out_channels.div_ceil(8).clamp(1, 8) as u32;
        let tile_h = (256 / (groups * X_GROUPS)).min(16);
        let threads = groups * X_GROUPS * tile_h;
        let workgroup_bytes = (TILE_W + 2) * (tile_h + 2) * 16 + 9 * 2 * groups * 64;
        if threads > limits.max_compute_invocations_per_workgroup
            || workgroup_bytes > limits.max_compute_workgroup_storage_size
        {
            return Err(GpuError::Unsupported(format!(
                "the TAESD shader needs {threads} invocations and {workgroup_bytes} bytes of \
                 workgroup memory; the device allows {} and {}",
                limits.max_compute_invocations_per_workgroup,
                limits.max_compute_workgroup_storage_size
            )));
        }
        let z_blocks = (out_channels as u32).div_ceil(8 * groups);
        let storage = |binding, read_only| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let mut entries = vec![
            wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: true,
                    min_binding_size: wgpu::BufferSize::new(PARAMS_BYTES as u64),
                },
                count: None,
            },
            storage(1, true),
            storage(2, true),
            storage(3, true),
        ];
        if entry_point == "conv_image" {
            entries.extend([storage(6, false), storage(7, false)]);
        } else {
            entries.extend([storage(4, true), storage(5, false)]);
        }
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(entry_point),
            entries: &entries,
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(entry_point),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let constants = [
            ("COUT_GROUPS", f64::from(groups)),
            ("TILE_H", f64::from(tile_h)),
        ];
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry_point),
            layout: Some(&pipeline_layout),
            module: shader,
            entry_point: Some(entry_point),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &constants,
                ..Default::default()
            },
            cache: None,
        });
        Ok(Self {
            pipeline,
            layout,
            tile_h,
            z_blocks,
            out_quads: z_blocks * groups * 2,
        })
    }
}

impl GpuConv {
    /// Packs PyTorch-layout weights for a convolution reading `in_quads` channel quads and
    /// writing `out_quads` (zeros in the padding).
    fn new(device: &wgpu::Device, conv: &ConvWeights, in_quads: u32, out_quads: u32) -> Self {
        let (cin, cout) = (conv.in_channels, conv.out_channels);
        let (in_quads_n, out_quads_n) = (in_quads as usize, out_quads as usize);
        let mut weights = vec![0f32; in_quads_n * 9 * out_quads_n * 16];
        for co in 0..cout {
            for ci in 0..cin {
                for tap in 0..9 {
                    let mat = (ci / 4 * 9 + tap) * out_quads_n + co / 4;
                    // Column = input channel, row = output channel (column-major mat4x4).
                    weights[mat * 16 + (ci % 4) * 4 + co % 4] =
                        conv.weight[(co * cin + ci) * 9 + tap];
                }
            }
        }
        let mut bias = vec![0f32; out_quads_n * 4];
        if let Some(b) = &conv.bias {
            bias[..cout].copy_from_slice(&b[..cout]);
        }
        let buffer = |label, data: &[f32]| {
            device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::cast_slice(data),
                usage: wgpu::BufferUsages::STORAGE,
            })
        };
        Self {
            weights: buffer("taesd weights", &weights),
            bias: buffer("taesd bias", &bias),
            in_quads,
        }
    }
}

/// The latents' values as f32 on the CPU, NCHW.
fn latent_values(latents: &Tensor) -> Result<Vec<f32>, GpuError> {
    latents
        .to_device(&Device::Cpu)
        .and_then(|t| t.to_dtype(DType::F32))
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| GpuError::BadInput(format!("latents: {e}")))
}
