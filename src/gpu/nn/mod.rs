//! Neural-network kernels as WGSL compute shaders, for the UNet and the CLIP text encoder on
//! any GPU: [`Nn`] holds the device, the compiled pipelines and the command encoder that ops
//! record into; [`GpuTensor`] is an f32 buffer with a shape. Ops return new tensors and only
//! record work: [`Nn::flush`] submits it, [`Nn::download`] submits, waits and reads back.
//!
//! Errors never panic: wgpu's uncaptured errors and a device loss are recorded (the first one
//! wins) and every later op, `download` and `check` return them.
//!
//! One file per kernel family, each with its shader beside it: `gemm` (strided batched
//! matrix product, [`LinearWeights`]), `conv` (3x3 convolution as an implicit GEMM), `norm`
//! (group and layer norm), `attention` (flash-style, online softmax), `elementwise` (the rest);
//! `precision` (f16 weights, [`Precision`]) and `products` (the gemm and conv pipelines by
//! their operands' precision, and why they may run without bounds checks).

mod attention;
mod conv;
mod elementwise;
mod gemm;
mod norm;
mod precision;
mod products;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::GpuError;

pub use attention::AttnShape;
pub use conv::{Conv3x3Opts, Conv3x3Weights};
pub use elementwise::Unary;
pub use gemm::{Bias, GemmDims, LinearWeights, MatView, OutSpec};
pub use precision::Precision;

/// Dispatches recorded before the pending commands are submitted anyway, so that the memory
/// of pending work (per-dispatch parameters, bind groups) stays bounded.
const SUBMIT_EVERY: usize = 256;

/// Invocations per workgroup of the one-dimensional kernels (`WG` in the shaders).
const WG_1D: u32 = 256;

/// How an [`Nn`] stores weights and compiles its products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NnOptions {
    /// What [`LinearWeights`] and [`Conv3x3Weights`] are stored in (activations are always
    /// f32). F16 needs the device feature `SHADER_F16`.
    pub precision: Precision,
    /// gemm and conv compiled without runtime bounds checks, whose every index is proven in
    /// range (see `products.rs`); the other kernels are always checked.
    pub trusted_products: bool,
}

impl Default for NnOptions {
    /// f32 weights; trusted products (the kernel tests pass both ways, and the checks cost
    /// time: README, "GPU sampling").
    fn default() -> Self {
        Self {
            precision: Precision::F32,
            trusted_products: true,
        }
    }
}

/// A tensor on the GPU: contiguous, row-major, in a `STORAGE | COPY_SRC | COPY_DST` buffer,
/// f32 (activations, everything ops make) or f16 (weights, for gemm and conv only). Cloning
/// shares the buffer; dropping the last clone frees it.
#[derive(Clone)]
pub struct GpuTensor {
    buffer: Arc<wgpu::Buffer>,
    shape: Vec<usize>,
    precision: Precision,
}

impl GpuTensor {
    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The number of elements (the product of the shape).
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether it holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The buffer (at least 16 bytes, also for an empty tensor).
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// The element type of the buffer.
    pub fn precision(&self) -> Precision {
        self.precision
    }
}

impl std::fmt::Debug for GpuTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.precision {
            Precision::F32 => write!(f, "GpuTensor{:?}", self.shape),
            Precision::F16 => write!(f, "GpuTensor{:?} f16", self.shape),
        }
    }
}

/// Work recorded and not yet submitted.
struct Pending {
    encoder: Option<wgpu::CommandEncoder>,
    dispatches: usize,
}

/// What went wrong on the device, recorded by wgpu's callbacks.
#[derive(Default)]
struct Failure {
    error: Option<String>,
    lost: Option<String>,
}

/// One compute pipeline and its bind group layout: binding 0 the parameters (uniform), then
/// one read-only storage buffer per entry of `inputs` (the element type the shader reads it
/// as), then one read-write f32 output.
struct Kernel {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    inputs: Vec<Precision>,
    /// The entry point, for messages.
    name: &'static str,
}

/// The pipelines compiled by [`Nn::with_options`] (gemm's and conv's on first use, by their
/// operands' precision: `products.rs`).
struct Kernels {
    group_norm: Kernel,
    layer_norm: Kernel,
    unary: Kernel,
    add: Kernel,
    scale: Kernel,
    geglu: Kernel,
    concat: Kernel,
    repeat: Kernel,
    step: Kernel,
    timestep: Kernel,
}

/// The GPU context of the network kernels: device, queue, pipelines, the pending command
/// encoder, what failed and the flop counter.
pub struct Nn {
    device: wgpu::Device,
    queue: wgpu::Queue,
    limits: wgpu::Limits,
    options: NnOptions,
    kernels: Kernels,
    /// gemm and conv pipelines by their operands' precision, compiled on first use.
    products: Mutex<HashMap<products::Product, Arc<Kernel>>>,
    attention_shader: wgpu::ShaderModule,
    /// Attention pipelines by head dimension (its tile sizes are compile-time constants).
    attention: Mutex<HashMap<usize, Arc<attention::AttnKernel>>>,
    pending: Mutex<Pending>,
    failure: Arc<Mutex<Failure>>,
    flops: AtomicU64,
    /// Bound where an op has no such input (no bias, no residual).
    dummy: GpuTensor,
    /// The timestep embedding's frequencies by (dim, freq_shift bits), computed on the CPU.
    timestep_freqs: Mutex<HashMap<(usize, u32), GpuTensor>>,
}

impl Nn {
    /// [`Nn::with_options`] with the default options (f32 weights).
    pub fn new(device: wgpu::Device, queue: wgpu::Queue) -> Result<Self, GpuError> {
        Self::with_options(device, queue, NnOptions::default())
    }

    /// Compiles the pipelines. Installs an uncaptured-error handler that records the first
    /// error (wgpu's default handler panics) and a device-lost callback that records the loss.
    /// F16 weights on a device without `SHADER_F16` are refused here, before any work.
    pub fn with_options(
        device: wgpu::Device,
        queue: wgpu::Queue,
        options: NnOptions,
    ) -> Result<Self, GpuError> {
        if options.precision == Precision::F16 {
            precision::require_f16(&device)?;
        }
        let failure = Arc::new(Mutex::new(Failure::default()));
        let on_error = failure.clone();
        device.on_uncaptured_error(Arc::new(move |error: wgpu::Error| {
            let mut failure = on_error.lock();
            if failure.error.is_none() {
                failure.error = Some(error.to_string());
            }
        }));
        let on_lost = failure.clone();
        device.set_device_lost_callback(move |reason, message| {
            let mut failure = on_lost.lock();
            if failure.lost.is_none() {
                failure.lost = Some(format!("{reason:?}: {message}"));
            }
        });
        let limits = device.limits();
        let module = |label: &str, source: &'static str| {
            device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            })
        };
        let norm_shader = module("nn norm.wgsl", include_str!("norm.wgsl"));
        let ew_shader = module("nn elementwise.wgsl", include_str!("elementwise.wgsl"));
        let attention_shader = module("nn attention.wgsl", include_str!("attention.wgsl"));
        let kernel = |shader, entry, inputs: usize| {
            Kernel::new(&device, shader, entry, &vec![Precision::F32; inputs], &[])
        };
        let kernels = Kernels {
            group_norm: kernel(&norm_shader, "group_norm", 3),
            layer_norm: kernel(&norm_shader, "layer_norm", 3),
            unary: kernel(&ew_shader, "unary", 2),
            add: kernel(&ew_shader, "add", 2),
            scale: kernel(&ew_shader, "scale", 2),
            geglu: kernel(&ew_shader, "geglu", 2),
            concat: kernel(&ew_shader, "concat_channels", 2),
            repeat: kernel(&ew_shader, "repeat_batch", 2),
            step: kernel(&ew_shader, "sampler_step", 2),
            timestep: kernel(&ew_shader, "timestep_embedding", 2),
        };
        let dummy = GpuTensor {
            buffer: Arc::new(buffer_with(
                &device,
                "nn dummy",
                &[0f32; 4],
                wgpu::BufferUsages::STORAGE,
            )?),
            shape: vec![4],
            precision: Precision::F32,
        };
        let nn = Self {
            device,
            queue,
            limits,
            options,
            kernels,
            products: Mutex::new(HashMap::new()),
            attention_shader,
            attention: Mutex::new(HashMap::new()),
            pending: Mutex::new(Pending {
                encoder: None,
                dispatches: 0,
            }),
            failure,
            flops: AtomicU64::new(0),
            dummy,
            timestep_freqs: Mutex::new(HashMap::new()),
        };
        nn.check()?;
        Ok(nn)
    }

    /// The device the tensors live on.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The device's queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// What it was made with.
    pub fn options(&self) -> NnOptions {
        self.options
    }

    /// A tensor of `shape` holding `data` (whose length must be the shape's product).
    pub fn upload(&self, data: &[f32], shape: &[usize]) -> Result<GpuTensor, GpuError> {
        self.upload_as(data, shape, Precision::F32)
    }

    /// A weight matrix for gemm or conv, in the precision of [`NnOptions::precision`].
    pub fn upload_weights(&self, data: &[f32], shape: &[usize]) -> Result<GpuTensor, GpuError> {
        self.upload_as(data, shape, self.options.precision)
    }

    /// A tensor of `shape` holding `data` stored as `precision`: f16 rounds each value to
    /// the nearest f16 and refuses one beyond its range. Only gemm and conv read f16 (as
    /// weights); every other op refuses it.
    pub fn upload_as(
        &self,
        data: &[f32],
        shape: &[usize],
        precision: Precision,
    ) -> Result<GpuTensor, GpuError> {
        let len: usize = shape.iter().product();
        if data.len() != len {
            return Err(GpuError::BadInput(format!(
                "upload of {} values into a tensor of shape {shape:?} ({len} values)",
                data.len()
            )));
        }
        self.check()?;
        self.check_size(len, precision, "uploaded tensor")?;
        let buffer = match precision {
            Precision::F32 => buffer_with(&self.device, "nn tensor", data, tensor_usage())?,
            Precision::F16 => {
                let words = precision::f16_words(data, &format!("tensor of shape {shape:?}"))?;
                buffer_with(&self.device, "nn f16 tensor", &words, tensor_usage())?
            }
        };
        Ok(GpuTensor {
            buffer: Arc::new(buffer),
            shape: shape.to_vec(),
            precision,
        })
    }

    /// Submits the recorded work, waits for it and reads `x` back (an f16 tensor as the f32
    /// values of its f16s). Err (never a panic or a hang) when the device was lost or an
    /// error was recorded.
    pub fn download(&self, x: &GpuTensor) -> Result<Vec<f32>, GpuError> {
        self.check()?;
        // Whole 4-byte words: a copy's size must be a multiple of 4 (the buffer is).
        let bytes = ((x.len() * x.precision.bytes()) as u64).next_multiple_of(4);
        if bytes == 0 {
            self.flush()?;
            return Ok(Vec::new());
        }
        let readback = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("nn readback"),
            size: bytes,
            usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ,
            mapped_at_creation: false,
        });
        {
            let mut pending = self.pending.lock();
            let encoder = self.encoder(&mut pending);
            encoder.copy_buffer_to_buffer(&x.buffer, 0, &readback, 0, bytes);
            self.submit(&mut pending);
        }
        let (sender, receiver) = crossbeam_channel::bounded(1);
        readback.map_async(wgpu::MapMode::Read, .., move |result| {
            // The receiver waits below; a failed send only means it gave up.
            let _ = sender.send(result);
        });
        let polled = self.device.poll(wgpu::PollType::wait_indefinitely());
        self.check()?;
        polled.map_err(|e| GpuError::Readback(e.to_string()))?;
        receiver
            .try_recv()
            .map_err(|_| GpuError::Readback("the buffer mapping never completed".into()))?
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        let values = {
            let mapped = readback
                .get_mapped_range(..)
                .map_err(|e| GpuError::Readback(e.to_string()))?;
            match x.precision {
                Precision::F32 => bytemuck::cast_slice::<u8, f32>(&mapped).to_vec(),
                Precision::F16 => {
                    let words = bytemuck::cast_slice::<u8, u16>(&mapped);
                    precision::f32_from_f16_words(&words[..x.len()])
                }
            }
        };
        readback.unmap();
        Ok(values)
    }

    /// Submits the work recorded so far (no wait).
    pub fn flush(&self) -> Result<(), GpuError> {
        self.check()?;
        let mut pending = self.pending.lock();
        self.submit(&mut pending);
        drop(pending);
        self.check()
    }

    /// Err if an error or a device loss has been recorded.
    pub fn check(&self) -> Result<(), GpuError> {
        let failure = self.failure.lock();
        if let Some(lost) = &failure.lost {
            return Err(GpuError::DeviceLost(lost.clone()));
        }
        if let Some(error) = &failure.error {
            return Err(GpuError::Wgpu(error.clone()));
        }
        Ok(())
    }

    /// 2 x the multiply-adds done by conv3x3, gemm/linear and attention since `new`.
    pub fn flops(&self) -> u64 {
        self.flops.load(Ordering::Relaxed)
    }

    /// Destroys the device, as a lost device is: for tests of the fallback.
    pub fn lose_device(&self) {
        // The lost callback may run later (at the next poll); the loss is known now.
        {
            let mut failure = self.failure.lock();
            if failure.lost.is_none() {
                failure.lost = Some("destroyed by lose_device".into());
            }
        }
        self.pending.lock().encoder = None;
        self.device.destroy();
    }

    fn add_flops(&self, flops: u64) {
        self.flops.fetch_add(flops, Ordering::Relaxed);
    }

    /// Refuses tensors beyond what one storage binding can hold.
    fn check_size(&self, len: usize, precision: Precision, what: &str) -> Result<(), GpuError> {
        let bytes = len as u64 * precision.bytes() as u64;
        let max = self
            .limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size);
        if bytes > max {
            return Err(GpuError::Unsupported(format!(
                "{what} of {len} values ({bytes} bytes) exceeds the device's storage binding \
                 limit of {max} bytes"
            )));
        }
        if len > u32::MAX as usize / 2 {
            return Err(GpuError::Unsupported(format!(
                "{what} of {len} values is beyond 32-bit indexing"
            )));
        }
        Ok(())
    }

    /// A new uninitialised tensor for an op's output.
    fn output(&self, shape: &[usize], what: &str) -> Result<GpuTensor, GpuError> {
        let len: usize = shape.iter().product();
        self.check_size(len, Precision::F32, what)?;
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("nn tensor"),
            size: (len as u64 * 4).max(16),
            usage: tensor_usage(),
            mapped_at_creation: false,
        });
        Ok(GpuTensor {
            buffer: Arc::new(buffer),
            shape: shape.to_vec(),
            precision: Precision::F32,
        })
    }

    fn encoder<'a>(&self, pending: &'a mut Pending) -> &'a mut wgpu::CommandEncoder {
        pending.encoder.get_or_insert_with(|| {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("nn") })
        })
    }

    fn submit(&self, pending: &mut Pending) {
        if let Some(encoder) = pending.encoder.take() {
            self.queue.submit([encoder.finish()]);
        }
        pending.dispatches = 0;
    }

    /// Records one dispatch of `kernel`: `params` (u32 words, f32 as bits) in a uniform
    /// buffer, `inputs` bound read-only, `output` read-write, `groups` workgroups folded into
    /// x and y when beyond the device's per-dimension limit (the shaders linearise them).
    /// Refuses an input whose precision is not the one the kernel reads it as (an f16 tensor
    /// given to an f32-only op), so a buffer is never read as the wrong type or length.
    fn dispatch(
        &self,
        kernel: &Kernel,
        params: &[u32],
        inputs: &[&GpuTensor],
        output: &GpuTensor,
        groups: u64,
    ) -> Result<(), GpuError> {
        self.check()?;
        debug_assert_eq!(inputs.len(), kernel.inputs.len());
        for (i, (input, &want)) in inputs.iter().zip(&kernel.inputs).enumerate() {
            if input.precision != want {
                return Err(GpuError::BadInput(format!(
                    "input {i} of the {} kernel must be {want:?}, got {input:?}",
                    kernel.name
                )));
            }
        }
        if output.precision != Precision::F32 {
            return Err(GpuError::BadInput(format!(
                "the {} kernel writes f32, got output {output:?}",
                kernel.name
            )));
        }
        if groups == 0 {
            return Ok(());
        }
        let (x, y) = self.fold(groups)?;
        let mut words = params.to_vec();
        words.resize(params.len().next_multiple_of(4).max(4), 0);
        let uniform = buffer_with(
            &self.device,
            "nn params",
            &words,
            wgpu::BufferUsages::UNIFORM,
        )?;
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        }];
        for (i, input) in inputs.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: input.buffer.as_entire_binding(),
            });
        }
        entries.push(wgpu::BindGroupEntry {
            binding: inputs.len() as u32 + 1,
            resource: output.buffer.as_entire_binding(),
        });
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &kernel.layout,
            entries: &entries,
        });
        let mut pending = self.pending.lock();
        {
            let encoder = self.encoder(&mut pending);
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: None,
            });
            pass.set_pipeline(&kernel.pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(x, y, 1);
        }
        pending.dispatches += 1;
        if pending.dispatches >= SUBMIT_EVERY {
            self.submit(&mut pending);
        }
        Ok(())
    }

    /// `groups` workgroups as (x, y) within the per-dimension limit (x * y >= groups).
    fn fold(&self, groups: u64) -> Result<(u32, u32), GpuError> {
        let max = u64::from(self.limits.max_compute_workgroups_per_dimension);
        let y = groups.div_ceil(max);
        if y > max {
            return Err(GpuError::Unsupported(format!(
                "{groups} workgroups exceed the device's dispatch limit"
            )));
        }
        let x = groups.div_ceil(y);
        Ok((x as u32, y as u32))
    }

    /// One-dimensional elementwise dispatch over `count` outputs.
    fn dispatch_1d(
        &self,
        kernel: &Kernel,
        params: &[u32],
        inputs: &[&GpuTensor],
        output: &GpuTensor,
        count: usize,
    ) -> Result<(), GpuError> {
        let groups = (count as u64).div_ceil(u64::from(WG_1D));
        self.dispatch(kernel, params, inputs, output, groups)
    }

    /// `tensor` or the dummy (an f32 tensor of 4 zeros).
    fn or_dummy<'a>(&'a self, tensor: Option<&'a GpuTensor>) -> &'a GpuTensor {
        tensor.unwrap_or(&self.dummy)
    }
}

impl Kernel {
    fn new(
        device: &wgpu::Device,
        shader: &wgpu::ShaderModule,
        entry_point: &'static str,
        inputs: &[Precision],
        constants: &[(&str, f64)],
    ) -> Self {
        let input_count = inputs.len();
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
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        }];
        entries.extend((0..input_count).map(|i| storage(i as u32 + 1, true)));
        entries.push(storage(input_count as u32 + 1, false));
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(entry_point),
            entries: &entries,
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(entry_point),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry_point),
            layout: Some(&pipeline_layout),
            module: shader,
            entry_point: Some(entry_point),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants,
                ..Default::default()
            },
            cache: None,
        });
        Self {
            pipeline,
            layout,
            inputs: inputs.to_vec(),
            name: entry_point,
        }
    }
}

/// A buffer holding `data` (at least 16 bytes: bindings of zero bytes are invalid). Unlike
/// wgpu's `create_buffer_init`, an Err rather than a panic when the device is gone.
fn buffer_with<T: bytemuck::Pod>(
    device: &wgpu::Device,
    label: &str,
    data: &[T],
    usage: wgpu::BufferUsages,
) -> Result<wgpu::Buffer, GpuError> {
    let bytes: &[u8] = bytemuck::cast_slice(data);
    let size = (bytes.len() as u64)
        .next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT)
        .max(16);
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size,
        usage,
        mapped_at_creation: true,
    });
    {
        let mut mapped = buffer
            .get_mapped_range_mut(..)
            .map_err(|e| GpuError::Wgpu(format!("could not fill a new buffer: {e}")))?;
        mapped.slice(..bytes.len()).copy_from_slice(bytes);
    }
    buffer.unmap();
    Ok(buffer)
}

fn tensor_usage() -> wgpu::BufferUsages {
    wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST
}

/// `value` as a u32 parameter word, refused when it does not fit.
fn word(value: usize, what: &str) -> Result<u32, GpuError> {
    u32::try_from(value)
        .map_err(|_| GpuError::Unsupported(format!("{what} {value} is beyond 32 bits")))
}

/// Errors unless `x` has `shape`.
fn expect_shape(x: &GpuTensor, shape: &[usize], what: &str) -> Result<(), GpuError> {
    if x.shape != shape {
        return Err(GpuError::BadInput(format!(
            "{what} must have shape {shape:?}, got {:?}",
            x.shape
        )));
    }
    Ok(())
}
