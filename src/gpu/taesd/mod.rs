//! The TAESD decoder as WGSL compute shaders: latents -> image on any Vulkan, Metal or DX12
//! GPU, the frame staying on the GPU for the bicubic upscaler.
//!
//! It runs the CPU decoder's weights ([`TaesdDecoder::conv_weights`]) through the same graph
//! (see [`crate::model::decoders::taesd`]); every layer is one dispatch of `conv.wgsl` (beside this file), a
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

mod kernel;
mod plan;

use super::{GpuContext, GpuError, GpuFrame};
use crate::frame::RgbaImage;
use crate::model::TaesdDecoder;
use kernel::{GpuConv, GpuStage, Kernel};
use plan::{Plan, Sizes};

/// Default cap on one full-resolution band buffer. For 72x128 latents the 576 image rows run
/// as 4 bands of 144 (each with 8 halo rows, ~4% more work) and all activations take ~160 MB.
pub const DEFAULT_BAND_LIMIT_BYTES: u64 = 48 << 20;

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
            source: wgpu::ShaderSource::Wgsl(include_str!("conv.wgsl").into()),
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
        Ok(GpuFrame::new(texture, &self.device, &self.queue)?)
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
        let bytes = crate::frame::map_read(&self.device, &readback, scope, <[u8]>::to_vec)?;
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
}

/// What a read-back decode copies out.
#[derive(Debug, Clone, Copy)]
enum Output {
    Image,
    Rgba,
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
