//! GPU side of the display path: a wgpu context for headless use (tests, recording), the
//! TAESD decoder as compute shaders ([`GpuTaesd`], latents -> frame on any Vulkan, Metal or
//! DX12 GPU) and the bicubic upscaler that turns a source-resolution frame into an
//! output-resolution texture without making the big image on the CPU.
//!
//! The upscaler reproduces the CPU upscaler (fast_image_resize, Catmull-Rom) byte for byte;
//! [`filter_table`] says how.
//!
//! For the viewer (eframe + egui_wgpu): make the output with [`create_output_texture`],
//! register its view once with `egui_wgpu::Renderer::register_native_texture` (egui wants
//! `Rgba8Unorm` and treats the bytes as sRGB-encoded, which frames are), then per frame call
//! [`BicubicUpscaler::upload`] and [`BicubicUpscaler::render`] into it and submit. With the
//! decoder on the GPU too, [`GpuTaesd::decode_frame`] makes a [`GpuFrame`] that
//! [`BicubicUpscaler::render_frame`] draws from its texture (and in-betweens of two, blended
//! in the pass): the frame never leaves the GPU unless read back ([`GpuFrame::to_cpu`]).

mod bicubic;
pub mod engine;
mod filter_table;
pub mod nn;
pub mod sample;
pub mod taesd;

pub use crate::frame::GpuFrame;
pub use bicubic::{
    create_output_texture, BicubicSource, BicubicUpscaler, OUTPUT_FORMAT, SOURCE_FORMAT,
};
pub use engine::{with_gpu_decoder, DecodedFrames, GpuDecode, GpuDecodedEngine};
pub use taesd::GpuTaesd;

use crate::frame::{read_texture_on, FrameError, RgbaImage};

/// `tracing_subscriber::EnvFilter` directives that keep wgpu and naga below WARN (they log
/// per frame and per resource at INFO and DEBUG). Append to the binary's filter.
pub const QUIET_WGPU_LOG_DIRECTIVES: &str = "wgpu=warn,wgpu_core=warn,wgpu_hal=warn,naga=warn";

/// Keeps the system's Vulkan layers from writing to stderr where there is no desktop
/// session. Mesa's device-select layer (loaded into every Vulkan instance) connects to
/// Wayland to find the default GPU, and without `XDG_RUNTIME_DIR` (CI, ssh, containers)
/// libwayland prints `error: XDG_RUNTIME_DIR is invalid or not set in the environment.`
/// for each instance. dreamwalk ranks adapters itself, so the layer is switched off
/// (`NODEVICE_SELECT=1`, its documented switch) for this process in that case, unless the
/// user set it. Call it first thing in `main`, before any thread starts.
pub fn quiet_vulkan_layers() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none()
        && std::env::var_os("NODEVICE_SELECT").is_none()
    {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
}

/// What can go wrong on the GPU side.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No adapter on any backend; on a machine without a GPU a software one must be installed.
    #[error(
        "no GPU adapter found ({0}); without a GPU install a software one: \
         Debian packages `mesa-vulkan-drivers` and `libvulkan1` (lavapipe, Vulkan)"
    )]
    NoAdapter(String),
    /// The adapter refused to create a device.
    #[error("could not create a device on adapter {adapter}: {error}")]
    RequestDevice {
        /// Adapter name.
        adapter: String,
        /// The wgpu error (in the message, not a `source()`, so that it is printed once).
        error: wgpu::RequestDeviceError,
    },
    /// An image size the upscaler cannot handle (zero, or beyond the device's texture limit).
    #[error("{what} size {width}x{height} not supported: {why}")]
    BadSize {
        /// Which image ("source", "target").
        what: &'static str,
        /// Requested width in pixels.
        width: u32,
        /// Requested height in pixels.
        height: u32,
        /// The limit broken.
        why: String,
    },
    /// The target texture cannot be rendered into by this upscaler.
    #[error("target texture {0}")]
    BadTarget(String),
    /// wgpu reported an error while running GPU work.
    #[error("GPU work failed: {0}")]
    Wgpu(String),
    /// Input the GPU work cannot take (a tensor of the wrong shape, an unsupported model).
    #[error("{0}")]
    BadInput(String),
    /// The device's limits are too small for this work.
    #[error("the GPU cannot run this: {0}")]
    Unsupported(String),
    /// Reading a texture back to the CPU failed.
    #[error("reading back from the GPU failed: {0}")]
    Readback(String),
    /// The device was lost (driver reset, removed GPU, `destroy`): nothing more runs on it.
    #[error("the GPU device was lost: {0}")]
    DeviceLost(String),
}

impl From<FrameError> for GpuError {
    fn from(error: FrameError) -> Self {
        match error {
            FrameError::BadTarget(why) => GpuError::BadTarget(why),
            FrameError::BadInput(why) => GpuError::BadInput(why),
            FrameError::Wgpu(why) => GpuError::Wgpu(why),
            FrameError::Readback(why) => GpuError::Readback(why),
        }
    }
}

/// A wgpu instance, adapter, device and queue not tied to any window.
pub struct GpuContext {
    /// The wgpu instance the adapter came from.
    pub instance: wgpu::Instance,
    /// The chosen adapter.
    pub adapter: wgpu::Adapter,
    /// The device created on it.
    pub device: wgpu::Device,
    /// The device's queue.
    pub queue: wgpu::Queue,
}

impl GpuContext {
    /// Picks the best adapter on any backend (hardware before software, native APIs before
    /// OpenGL; `WGPU_BACKEND` narrows the backends) and creates a device with the adapter's
    /// full limits, so output sizes up to its texture limit work, and with the optional
    /// features dreamwalk can use ([`optional_features`]) where the adapter has them.
    pub fn new_headless() -> Result<Self, GpuError> {
        let (instance, adapters) = match wgpu::Backends::from_env() {
            Some(backends) => adapters_on(backends),
            // OpenGL only when no native API has an adapter: probing it opens display
            // connections (Wayland, X11) whose libraries print to stderr when there is none.
            None => match adapters_on(wgpu::Backends::PRIMARY) {
                (_, adapters) if adapters.is_empty() => adapters_on(wgpu::Backends::SECONDARY),
                found => found,
            },
        };
        let adapter = adapters
            .into_iter()
            .min_by_key(|a| adapter_rank(&a.get_info()))
            .ok_or_else(|| {
                let searched = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all())
                    & wgpu::Instance::enabled_backend_features();
                GpuError::NoAdapter(format!("searched backends: {searched:?}"))
            })?;
        let info = adapter.get_info();
        tracing::debug!(
            "GPU adapter: {} ({:?}, {:?})",
            info.name,
            info.backend,
            info.device_type
        );
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("dreamwalk headless"),
            required_features: optional_features(&adapter),
            required_limits: adapter.limits(),
            ..Default::default()
        }))
        .map_err(|error| GpuError::RequestDevice {
            adapter: info.name.clone(),
            error,
        })?;
        Ok(Self {
            instance,
            adapter,
            device,
            queue,
        })
    }

    /// The adapter's name with its backend, e.g. "llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan)":
    /// see [`adapter_label`].
    pub fn adapter_name(&self) -> String {
        adapter_label(&self.adapter.get_info())
    }

    /// Whether the adapter runs on the CPU (lavapipe, llvmpipe, WARP).
    pub fn is_software(&self) -> bool {
        self.adapter.get_info().device_type == wgpu::DeviceType::Cpu
    }
}

/// The features dreamwalk asks a device for, of those `adapter` offers: `SHADER_F16`, for
/// f16 weights in the sampler (`gpu::nn::Precision`). Asking for one the adapter lacks would
/// fail the device, so only what it has.
pub fn optional_features(adapter: &wgpu::Adapter) -> wgpu::Features {
    adapter.features() & wgpu::Features::SHADER_F16
}

/// How dreamwalk names an adapter everywhere (logs, the heads-up display, decoder
/// descriptions): its name, then its backend in brackets, "NVIDIA GeForce RTX 4090 (Vulkan)".
/// The backend matters as much as the name: the same GPU is slower through OpenGL.
pub fn adapter_label(info: &wgpu::AdapterInfo) -> String {
    format!("{} ({:?})", info.name, info.backend)
}

/// An instance on `backends` and the adapters it finds.
fn adapters_on(backends: wgpu::Backends) -> (wgpu::Instance, Vec<wgpu::Adapter>) {
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    descriptor.backends = backends;
    let instance = wgpu::Instance::new(descriptor);
    let adapters = pollster::block_on(instance.enumerate_adapters(backends));
    (instance, adapters)
}

/// Lower is better: device type first, then backend (OpenGL support in wgpu is downlevel).
fn adapter_rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let device = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    let backend = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        wgpu::Backend::Gl => 1,
        _ => 2,
    };
    (device, backend)
}

/// Upscales (or resizes) `src` to `width x height` on the GPU and reads the result back:
/// the same bytes as the CPU Catmull-Rom resize.
pub fn upscale_to_image(
    ctx: &GpuContext,
    src: &RgbaImage,
    width: u32,
    height: u32,
) -> Result<RgbaImage, GpuError> {
    let device = &ctx.device;
    // Without a scope wgpu's default handler panics on a validation error.
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let mut upscaler = BicubicUpscaler::new(device, OUTPUT_FORMAT);
    upscaler.upload(device, &ctx.queue, src)?;
    check_size(device, "target", width, height)?;
    let target = create_output_texture(device, width, height);
    let view = target.create_view(&wgpu::TextureViewDescriptor::default());
    let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
        label: Some("upscale_to_image"),
    });
    upscaler.render(device, &ctx.queue, &mut encoder, &view)?;
    ctx.queue.submit([encoder.finish()]);
    if let Some(error) = pollster::block_on(scope.pop()) {
        return Err(GpuError::Wgpu(error.to_string()));
    }
    read_texture(ctx, &target)
}

/// Copies an `Rgba8Unorm` (or `Rgba8UnormSrgb`, `Rgba8Uint`) texture back into an image,
/// waiting for the GPU. The texture needs `COPY_SRC` usage.
pub fn read_texture(ctx: &GpuContext, texture: &wgpu::Texture) -> Result<RgbaImage, GpuError> {
    Ok(read_texture_on(&ctx.device, &ctx.queue, texture)?)
}

/// Rejects sizes a texture on `device` cannot have.
fn check_size(
    device: &wgpu::Device,
    what: &'static str,
    width: u32,
    height: u32,
) -> Result<(), GpuError> {
    let max = device.limits().max_texture_dimension_2d;
    let why = if width == 0 || height == 0 {
        "empty".to_string()
    } else if width > max || height > max {
        format!("the device allows at most {max} pixels per side")
    } else {
        return Ok(());
    };
    Err(GpuError::BadSize {
        what,
        width,
        height,
        why,
    })
}
