//! The GPU side: one headless wgpu context shared by every test of the binary (or a fresh
//! one for tests that break theirs), textures, seeded latents small enough for a software
//! adapter, and the original TAESD checkpoint's key names.

use std::collections::HashMap;

use candle_core::{Device, Tensor};

/// One headless wgpu context for every test of the test binary (a software adapter compiles
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

/// A headless wgpu context of its own; panics with what to install when there is no
/// adapter.
pub fn gpu_context() -> dreamwalk::gpu::GpuContext {
    dreamwalk::gpu::GpuContext::new_headless()
        .unwrap_or_else(|e| panic!("these tests need a GPU adapter: {e}"))
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

/// Seeded normal latents of `shape` with standard deviation `std`.
pub fn randn_latents(shape: (usize, usize, usize, usize), std: f32, seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let count = shape.0 * shape.1 * shape.2 * shape.3;
    let values: Vec<f32> = (0..count)
        .map(|_| std * rng.sample::<f32, _>(rand_distr::StandardNormal))
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).expect("latents")
}

/// Seeded standard-normal latents (1, 4, 8, 12): a 96x64 frame, small enough for a software
/// adapter.
pub fn small_latents(seed: u64) -> Tensor {
    randn_latents((1, 4, 8, 12), 1.0, seed)
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
