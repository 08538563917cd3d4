//! Times the TAESD decoder on the GPU (WGSL compute shaders) on whatever adapter
//! `GpuContext::new_headless` picks: random weights (default config), 72x128 latents
//! (576x1024 image) unless given.
//!
//! `cargo run --release --example gpu_taesd_speed -- [runs] [h] [w] [modes]` (default 5 runs
//! of each mode after a warm-up; `WGPU_BACKEND=vulkan` etc. narrows the backends).
//!
//! Modes, comma-separated (default all): `texture` is the viewer's path, decode into a texture
//! and wait for the GPU, no read-back; `rgba` and `f32` include copying the frame back to the
//! CPU. The warm-up (shader compilation) decodes 1x1 latents, so on a slow software adapter
//! one run of one mode costs one decode.

use std::time::Instant;

use candle_core::{Device, Tensor};
use dreamwalk::gpu::{GpuContext, GpuTaesd};
use dreamwalk::model::taesd::{TaesdConfig, TaesdDecoder};

fn median_and_min(mut times: Vec<f64>) -> (f64, f64) {
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], times[0])
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(5);
    let h: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(72);
    let w: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(128);
    let modes = args.next().unwrap_or_else(|| "texture,rgba,f32".into());

    let ctx = GpuContext::new_headless()?;
    println!(
        "adapter: {} (software: {})",
        ctx.adapter_name(),
        ctx.is_software()
    );
    let cpu = TaesdDecoder::random(&TaesdConfig::default(), 0)?;
    let start = Instant::now();
    let decoder = GpuTaesd::new(&ctx, &cpu)?;
    println!(
        "weights + pipelines: {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    let f = decoder.upscale_factor();
    let (height, width) = ((h * f) as u32, (w * f) as u32);
    let latents = Tensor::randn(0f32, 1f32, (1, 4, h, w), &Device::Cpu)?;
    let target = ctx.device.create_texture(&wgpu::TextureDescriptor {
        label: Some("decoded frame"),
        size: wgpu::Extent3d {
            width,
            height,
            depth_or_array_layers: 1,
        },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::Rgba8Unorm,
        usage: wgpu::TextureUsages::COPY_DST | wgpu::TextureUsages::TEXTURE_BINDING,
        view_formats: &[],
    });
    let start = Instant::now();
    decoder.decode_rgba(&Tensor::zeros(
        (1, 4, 1, 1),
        candle_core::DType::F32,
        &Device::Cpu,
    )?)?;
    println!(
        "warm-up (shader compilation, 1x1 decode): {:.1} ms; {h}x{w} runs in {} band(s)",
        start.elapsed().as_secs_f64() * 1e3,
        decoder.band_count(h, w)?
    );
    let gflop = cpu.flops(h, w) / 1e9;

    let time = |what: &str, once: &dyn Fn() -> anyhow::Result<()>| -> anyhow::Result<()> {
        if !modes.split(',').any(|m| m == what) {
            return Ok(());
        }
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs.max(1) {
            let start = Instant::now();
            once()?;
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        let (median, min) = median_and_min(times);
        println!(
            "{h}x{w} -> {height}x{width} {what:<10} min {min:8.1} ms  median {median:8.1} ms  \
             {:7.1} GFLOP/s ({gflop:.0} GFLOP direct-conv count)",
            gflop / min * 1e3
        );
        Ok(())
    };
    time("texture", &|| {
        decoder.decode_to_texture(&latents, &target)?;
        ctx.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    })?;
    time("rgba", &|| {
        decoder.decode_rgba(&latents)?;
        Ok(())
    })?;
    time("f32", &|| {
        decoder.decode(&latents)?;
        Ok(())
    })?;
    Ok(())
}
