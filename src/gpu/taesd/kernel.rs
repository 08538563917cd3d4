//! One layer's compute pipeline (how its workgroups tile the output) and a convolution's
//! weights in GPU buffers.

use wgpu::util::DeviceExt;

use crate::gpu::GpuError;
use crate::model::decoders::ConvWeights;

/// Output pixels per workgroup along a row (`TILE_W` in the shader).
pub(super) const TILE_W: u32 = 32;
/// Pixels along a row per invocation, times invocations along a row.
pub(super) const X_GROUPS: u32 = 4;
/// Bytes of one `Params` slot in the shader.
pub(super) const PARAMS_BYTES: usize = 64;

/// `FLAG_*` in the shader.
pub(super) const FLAG_RELU: u32 = 1;
pub(super) const FLAG_SKIP: u32 = 2;
pub(super) const FLAG_IMAGE_F32: u32 = 4;
pub(super) const FLAG_IMAGE_RGBA: u32 = 8;

/// One compute pipeline of the shader and how its workgroups tile the output.
pub(super) struct Kernel {
    pub(super) pipeline: wgpu::ComputePipeline,
    pub(super) layout: wgpu::BindGroupLayout,
    /// Output rows per workgroup.
    pub(super) tile_h: u32,
    /// Workgroups along z, each 8 * cout_groups output channels.
    pub(super) z_blocks: u32,
    /// Output channels padded to a whole number of workgroups, over 4.
    pub(super) out_quads: u32,
}

/// A convolution's weights on the GPU.
pub(super) struct GpuConv {
    /// One mat4x4 per (input quad, tap, output quad), columns = input channels.
    pub(super) weights: wgpu::Buffer,
    /// One vec4 per output quad (zeros for the bias-free convolutions).
    pub(super) bias: wgpu::Buffer,
    pub(super) in_quads: u32,
}

pub(super) struct GpuStage {
    pub(super) blocks: Vec<[GpuConv; 3]>,
    pub(super) conv: GpuConv,
}

impl Kernel {
    pub(super) fn new(
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
    pub(super) fn new(
        device: &wgpu::Device,
        conv: &ConvWeights,
        in_quads: u32,
        out_quads: u32,
    ) -> Self {
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
