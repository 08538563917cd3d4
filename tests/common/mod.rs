//! Shared helpers for tests that compare against `../shared/fixtures`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};

/// The fixture folder: `$DREAMWALK_FIXTURES`, or `../shared/fixtures` beside the project.
pub fn fixtures_dir() -> PathBuf {
    match std::env::var_os("DREAMWALK_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"),
    }
}

/// A file inside the fixture folder, e.g. `fixture("taesd/case.safetensors")`.
pub fn fixture(relative: &str) -> PathBuf {
    let path = fixtures_dir().join(relative);
    assert!(
        path.exists(),
        "fixture {} not found: set DREAMWALK_FIXTURES to the fixtures folder",
        path.display()
    );
    path
}

/// All tensors of a fixture safetensors file, on the CPU.
pub fn load_tensors(relative: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(relative), &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot read fixture {relative}: {e}"))
}

/// Largest absolute element-wise difference; panics when the shapes differ.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a
        .flatten_all()
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap();
    let b = b
        .flatten_all()
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Largest per-channel difference of two images of the same size.
pub fn max_byte_diff(a: &dreamwalk::frame::RgbaImage, b: &dreamwalk::frame::RgbaImage) -> u8 {
    assert_eq!((a.width, a.height), (b.width, b.height), "image sizes");
    a.pixels
        .iter()
        .zip(&b.pixels)
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0)
}

/// One headless wgpu context for every test of a test binary (a software adapter compiles
/// shaders per device, which takes seconds); names the adapter once.
pub fn shared_gpu_context() -> &'static dreamwalk::gpu::GpuContext {
    static CONTEXT: std::sync::OnceLock<dreamwalk::gpu::GpuContext> = std::sync::OnceLock::new();
    CONTEXT.get_or_init(|| {
        let ctx = gpu_context();
        eprintln!(
            "GPU adapter: {} (software: {})",
            ctx.adapter_name(),
            ctx.is_software()
        );
        ctx
    })
}

/// `decoder.layers.N.rest` -> `(N+1).rest`, the madebyollin/taesd checkpoint layout.
pub fn original_names(tensors: &HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    tensors
        .iter()
        .filter_map(|(name, t)| {
            let rest = name.strip_prefix("decoder.layers.")?;
            let (index, rest) = rest.split_once('.')?;
            let index: usize = index.parse().ok()?;
            Some((format!("{}.{rest}", index + 1), t.clone()))
        })
        .collect()
}

/// A plain 2D texture of `device` (one mip level, one sample).
pub fn texture(
    device: &wgpu::Device,
    (width, height): (u32, u32),
    format: wgpu::TextureFormat,
    usage: wgpu::TextureUsages,
) -> wgpu::Texture {
    device.create_texture(&wgpu::TextureDescriptor {
        label: None,
        size: wgpu::Extent3d {
            width,
            height,
            depth_or_array_layers: 1,
        },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format,
        usage,
        view_formats: &[],
    })
}

/// A headless wgpu context; panics with what to install when there is no adapter.
pub fn gpu_context() -> dreamwalk::gpu::GpuContext {
    dreamwalk::gpu::GpuContext::new_headless()
        .unwrap_or_else(|e| panic!("these tests need a GPU adapter: {e}"))
}

/// Seeded standard-normal latents (1, 4, 8, 12): a 96x64 frame, small enough for a software
/// adapter.
pub fn small_latents(seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let values: Vec<f32> = (0..4 * 8 * 12)
        .map(|_| rng.sample::<f32, _>(rand_distr::StandardNormal))
        .collect();
    Tensor::from_vec(values, (1, 4, 8, 12), &Device::Cpu).expect("latents")
}
