//! The viewer's GPU decoding: [`GpuDecodedEngine`] decodes TAESD on a wgpu device like the
//! CPU does, falls back to the CPU when the device fails, and the viewer picks it on a
//! hardware adapter (or when told to) and says which decoder runs.
//!
//! Needs a GPU adapter (on machines without one, Debian's `mesa-vulkan-drivers`); latents
//! are kept small because a software adapter is slow.

use std::sync::Arc;
use std::time::Duration;

use candle_core::{Device, Tensor};
use dreamwalk::app::{GpuTarget, ViewerApp, ViewerOptions};
use dreamwalk::frame::FrameImage;
use dreamwalk::gpu::{DecodedFrames, GpuContext, GpuDecode, GpuDecodedEngine};
use dreamwalk::model::{DecoderKind, Engine, StableDiffusion};

use crate::support::fixtures::max_byte_diff;
use crate::support::gpu::{gpu_context as context, small_latents as latents};
use crate::support::images::{png_files, read_png};
use crate::support::process::dreamwalk;

#[test]
fn gpu_engine_decodes_taesd_like_the_cpu_and_says_where() {
    let ctx = context();
    let cpu: Arc<dyn Engine> = Arc::new(StableDiffusion::demo());
    let gpu = GpuDecodedEngine::new(cpu.clone(), &ctx.device, &ctx.queue, ctx.adapter_name())
        .expect("GPU decoder from the demo model's TAESD");
    let latents = latents(7);
    let expected = cpu
        .decode(&latents, DecoderKind::Taesd)
        .expect("CPU decode");
    let got = gpu
        .decode(&latents, DecoderKind::Taesd)
        .expect("GPU decode");
    assert_eq!((got.width, got.height), (96, 64));
    // Rounding of values on a .5 boundary may differ by one step; a wrong weight or tap
    // changes pixels by far more.
    let diff = max_byte_diff(&got, &expected);
    assert!(diff <= 1, "GPU and CPU TAESD pixels differ by {diff}");
    assert!(
        gpu.decoder_description(DecoderKind::Taesd)
            .starts_with("TAESD on the GPU ("),
        "{}",
        gpu.decoder_description(DecoderKind::Taesd)
    );
    assert_eq!(
        cpu.decoder_description(DecoderKind::Taesd),
        "TAESD on the CPU"
    );
    // Everything else is the inner model's.
    assert_eq!(gpu.name(), cpu.name());
    assert_eq!(gpu.decoders(), cpu.decoders());
    assert_eq!(
        gpu.decoder_description(DecoderKind::Vae),
        "full VAE on the CPU"
    );
    let vae = gpu.decode(&latents, DecoderKind::Vae).expect("VAE decode");
    assert_eq!(
        vae.pixels,
        cpu.decode(&latents, DecoderKind::Vae).unwrap().pixels
    );
    // A latent of the wrong shape is an error, and the GPU stays in use.
    let bad = Tensor::zeros((1, 3, 8, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(gpu.decode(&bad, DecoderKind::Taesd).is_err());
    assert!(gpu.failure().is_none());
}

#[test]
fn a_lost_device_falls_back_to_the_cpu_and_says_so() {
    let ctx = context();
    let cpu: Arc<dyn Engine> = Arc::new(StableDiffusion::demo());
    let gpu = GpuDecodedEngine::new(cpu.clone(), &ctx.device, &ctx.queue, ctx.adapter_name())
        .expect("GPU decoder");
    ctx.device.destroy();
    let latents = latents(8);
    let got = gpu
        .decode(&latents, DecoderKind::Taesd)
        .expect("the CPU decodes when the GPU cannot");
    let expected = cpu.decode(&latents, DecoderKind::Taesd).unwrap();
    assert_eq!(got.pixels, expected.pixels);
    assert!(gpu.failure().is_some());
    let description = gpu.decoder_description(DecoderKind::Taesd);
    assert!(
        description.starts_with("TAESD on the CPU (GPU decode failed"),
        "{description}"
    );
}

#[test]
fn a_lost_device_moves_frames_kept_on_the_gpu_to_the_cpu() {
    let ctx = context();
    let cpu: Arc<dyn Engine> = Arc::new(StableDiffusion::demo());
    let gpu = GpuDecodedEngine::new(cpu.clone(), &ctx.device, &ctx.queue, ctx.adapter_name())
        .expect("GPU decoder")
        .with_frames(DecodedFrames::StayOnGpu);
    let latents = latents(9);
    let kept = gpu.decode_frame(&latents, DecoderKind::Taesd).unwrap();
    assert!(matches!(kept, FrameImage::Gpu(_)), "{kept:?}");
    ctx.device.destroy();
    let moved = gpu
        .decode_frame(&latents, DecoderKind::Taesd)
        .expect("the CPU decodes when the GPU cannot");
    let FrameImage::Cpu(image) = moved else {
        panic!("after the GPU failed the frame must come from the CPU: {moved:?}");
    };
    let expected = cpu.decode(&latents, DecoderKind::Taesd).unwrap();
    assert_eq!(image.pixels, expected.pixels);
    assert!(gpu.failure().is_some());
    // The frame made before is lost with the device: reading it back says so.
    assert!(kept.to_cpu().is_err());
}

#[test]
fn auto_uses_the_gpu_only_on_hardware_adapters() {
    use wgpu::DeviceType::*;
    for hardware in [DiscreteGpu, IntegratedGpu, VirtualGpu, Other] {
        assert!(GpuDecode::Auto.wants(hardware));
        assert!(GpuDecode::On.wants(hardware));
        assert!(!GpuDecode::Off.wants(hardware));
    }
    assert!(!GpuDecode::Auto.wants(Cpu));
    assert!(GpuDecode::On.wants(Cpu));
    assert!(!GpuDecode::Off.wants(Cpu));
}

/// The viewer loading the demo model with a device: which decoder its engine reports.
fn viewer_decoder(ctx: &GpuContext, gpu_decode: GpuDecode) -> String {
    let mut app = ViewerApp::headless(ViewerOptions {
        gpu_decode,
        gpu: Some(GpuTarget {
            device: ctx.device.clone(),
            queue: ctx.queue.clone(),
            adapter: ctx.adapter.get_info(),
        }),
        ..Default::default()
    });
    assert!(app.wait_for_model(Duration::from_secs(300)), "model loads");
    let session = app.session().expect("session");
    session.engine().decoder_description(DecoderKind::Taesd)
}

#[test]
fn the_viewer_picks_the_gpu_decoder_as_told() {
    let ctx = context();
    let on = viewer_decoder(&ctx, GpuDecode::On);
    assert!(on.starts_with("TAESD on the GPU ("), "{on}");
    assert_eq!(viewer_decoder(&ctx, GpuDecode::Off), "TAESD on the CPU");
    let auto = viewer_decoder(&ctx, GpuDecode::Auto);
    if ctx.is_software() {
        assert_eq!(
            auto, "TAESD on the CPU",
            "a software adapter is slower than the CPU"
        );
    } else {
        assert!(auto.starts_with("TAESD on the GPU ("), "{auto}");
    }
}

/// `dreamwalk render --gpu-decode on|off` into `out`; returns stderr and the PNG frames.
fn render_demo(out: &std::path::Path, gpu_decode: &str) -> (String, Vec<Vec<u8>>) {
    let output = dreamwalk()
        .args([
            "render",
            "--prompt",
            "a red fox",
            "--prompt",
            "a lighthouse",
        ])
        .args(["--steps", "2", "--steps-between", "2", "--inbetween", "1"])
        .args([
            "--source",
            "128x64",
            "--upscale",
            "none",
            "--gpu-decode",
            gpu_decode,
        ])
        .arg("--out")
        .arg(out)
        .output()
        .expect("run dreamwalk");
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "render failed: {stderr}");
    let frames = png_files(out)
        .iter()
        .map(|path| read_png(path).pixels)
        .collect();
    (stderr, frames)
}

#[test]
fn headless_render_decodes_on_the_gpu_when_told() {
    let dir = tempfile::tempdir().unwrap();
    let (gpu_log, gpu_frames) = render_demo(&dir.path().join("gpu"), "on");
    let (cpu_log, cpu_frames) = render_demo(&dir.path().join("cpu"), "off");
    assert!(gpu_log.contains("TAESD on the GPU ("), "{gpu_log}");
    assert!(cpu_log.contains("TAESD on the CPU"), "{cpu_log}");
    // Once from A to B: 3 decoded frames and an in-between after each but the first.
    assert_eq!(gpu_frames.len(), 5);
    assert_eq!(gpu_frames.len(), cpu_frames.len());
    for (i, (g, c)) in gpu_frames.iter().zip(&cpu_frames).enumerate() {
        assert_eq!(g.len(), c.len());
        let diff = g.iter().zip(c).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
        // Decoded frames within one rounding step; an in-between halves two of them.
        assert!(diff <= 1, "frame {i}: GPU and CPU renders differ by {diff}");
    }
}
