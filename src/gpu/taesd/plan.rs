//! The decode plan for one latent size: which rows of which buffer every dispatch reads and
//! writes, the full-resolution stage split into row bands with their halos, and the buffers
//! and bind groups that carry it out.

use super::kernel::{
    GpuConv, FLAG_IMAGE_F32, FLAG_IMAGE_RGBA, FLAG_RELU, FLAG_SKIP, PARAMS_BYTES, TILE_W,
};
use super::GpuTaesd;
use crate::gpu::GpuError;

/// Everything that depends on the latent size.
pub(super) struct Plan {
    pub(super) latent_hw: (usize, usize),
    pub(super) latents: wgpu::Buffer,
    /// NCHW f32 image of one batch row, diffusers' convention.
    pub(super) image: wgpu::Buffer,
    /// RGBA8 rows padded to `COPY_BYTES_PER_ROW_ALIGNMENT`.
    pub(super) rgba: wgpu::Buffer,
    pub(super) rgba_row_bytes: u32,
    pub(super) image_hw: (u32, u32),
    pub(super) dispatches: Vec<Dispatch>,
    /// Kept alive for the bind groups.
    pub(super) _params: wgpu::Buffer,
    pub(super) _activations: Vec<wgpu::Buffer>,
}

pub(super) struct Dispatch {
    pub(super) image: bool,
    pub(super) bind_group: wgpu::BindGroup,
    pub(super) params_offset: u32,
    pub(super) workgroups: [u32; 3],
}

impl GpuTaesd {
    /// Full-resolution band rows and band count for `h x w` latents.
    pub(super) fn band_rows(&self, h: usize, w: usize) -> Result<(u32, usize), GpuError> {
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
    pub(super) fn plan_for<'a>(
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

/// The image size of a plan, with the RGBA buffer's row pitch.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sizes {
    pub(super) height: u32,
    pub(super) width: u32,
    pub(super) rgba_row_bytes: u32,
}

/// Which buffer an op reads or writes (resolved when the plan is built).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Buf {
    Latents,
    /// One of the four activation buffers.
    Act(usize),
    Image,
    NoSkip,
}

/// The rows of an activation a buffer holds: global rows `row0 .. row0 + rows`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rows {
    pub(super) buf: Buf,
    pub(super) row0: u32,
    pub(super) rows: u32,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum ConvId {
    First,
    Block(usize, usize, usize),
    StageConv(usize),
    /// The convolution up to full resolution (the next-to-last stage's), run in bands.
    StageUp,
    Final,
}

/// One dispatch: a convolution, where its input and output rows live, what is fused.
#[derive(Debug, Clone, Copy)]
pub(super) struct Op {
    pub(super) conv: ConvId,
    pub(super) image: bool,
    pub(super) input: Rows,
    pub(super) output: Rows,
    pub(super) skip: Option<Rows>,
    pub(super) up: u32,
    pub(super) relu: bool,
    pub(super) out_h: u32,
    pub(super) out_w: u32,
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
