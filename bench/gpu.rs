//! The GPU cases (`gpu_taesd`, `gpu_4k`, `gpu_walk`): the viewer's WGSL decoder and present
//! on whatever adapter there is, as rates against absolute targets (no reference runs on
//! the GPU). A software adapter's figure is printed but judged by nobody.

use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;
use candle_core::{Device, Tensor};
use dreamwalk::frame::FrameImage;
use dreamwalk::gpu::{BicubicUpscaler, GpuContext, GpuTaesd, OUTPUT_FORMAT};
use dreamwalk::model::{TaesdConfig, TaesdDecoder};

use crate::cases::Case;
use crate::child::{run_child, time_runs, ChildResult};
use crate::four_k::{smooth_frames, OUTPUT_SIZE, SOURCE_SIZE};
use crate::probe::peak_rss_mb;
use crate::report::{CaseReport, Timing};
use crate::BenchArgs;

/// A GPU case in a child process: a rate against an absolute target (no reference runs on
/// the GPU). A software adapter's figure is printed but judged by nobody.
pub fn bench_gpu(args: &BenchArgs, case: Case) -> anyhow::Result<CaseReport> {
    let (warmup, runs) = args.runs_for(case);
    let ours = run_child(args, case, (warmup, runs), &[])?;
    let timing = Timing::from_runs(ours.times_ms.clone(), ours.peak_rss_mb)?;
    let software = ours.detail["software"].as_bool().unwrap_or(true);
    let adapter = ours.detail["adapter"].as_str().unwrap_or("?").to_string();
    // (what was timed, frames per timed run, target rate, target text)
    let (work, frames_per_run, target_rate, target) = match case {
        Case::GpuTaesd => {
            let (h, w) = args.gpu_latent;
            (
                format!("GPU TAESD {h}x{w} -> {}x{} on {adapter}", h * 8, w * 8),
                1.0,
                30.0,
                "≥ 30 decodes/s",
            )
        }
        Case::GpuWalk => {
            let (h, w) = args.gpu_latent;
            (
                format!(
                    "GPU TAESD {h}x{w} -> {}x{} kept on the GPU + {WALK_INBETWEENS} in-betweens, \
                     each of the {} frames drawn to 3840x2160, on {adapter}",
                    h * 8,
                    w * 8,
                    WALK_INBETWEENS + 1
                ),
                (WALK_INBETWEENS + 1) as f64,
                60.0,
                "≥ 60 shown fps",
            )
        }
        _ => (
            format!("GPU upload 1024x576 + bicubic -> 3840x2160 on {adapter}"),
            1.0,
            60.0,
            "≥ 60 fps",
        ),
    };
    let rate = frames_per_run * 1e3 / timing.median_ms;
    Ok(CaseReport {
        case,
        work,
        unit: "ms".to_string(),
        ours: Some(timing),
        reference: None,
        reference_skipped: Some(if software {
            format!("software adapter ({adapter}): not a GPU figure")
        } else {
            "no reference: the target is a rate".to_string()
        }),
        ratio: Some(rate / target_rate),
        target: target.to_string(),
        pass: (!software).then_some(rate >= target_rate),
        peak_rss_ratio: None,
        detail: ours.detail,
    })
}

fn gpu_detail(ctx: &GpuContext) -> serde_json::Value {
    serde_json::json!({ "adapter": ctx.adapter_name(), "software": ctx.is_software() })
}

fn wait_for_gpu(ctx: &GpuContext) -> anyhow::Result<()> {
    ctx.device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| anyhow::anyhow!("waiting for the GPU: {e}"))?;
    Ok(())
}

/// Decodes into the upscaler's source texture, as the viewer's GPU path does, and waits.
pub fn child_gpu_taesd(
    args: &BenchArgs,
    warmup: usize,
    runs: usize,
) -> anyhow::Result<ChildResult> {
    let ctx = GpuContext::new_headless()?;
    let decoder = TaesdDecoder::random(&TaesdConfig::default(), 0)?;
    let gpu = GpuTaesd::new(&ctx, &decoder)?;
    let (h, w) = args.gpu_latent;
    let f = gpu.upscale_factor() as u32;
    let mut upscaler = BicubicUpscaler::new(&ctx.device, OUTPUT_FORMAT);
    let target = upscaler
        .source_texture(&ctx.device, w as u32 * f, h as u32 * f)?
        .clone();
    // Two latents taking turns, as a walk sends a new one each time.
    let latents = [
        Tensor::randn(0f32, 1f32, (1, 4, h, w), &Device::Cpu)?,
        Tensor::randn(0f32, 1f32, (1, 4, h, w), &Device::Cpu)?,
    ];
    let mut i = 0;
    let times = time_runs(Case::GpuTaesd, warmup, runs, || {
        let started = Instant::now();
        gpu.decode_to_texture(&latents[i % 2], &target)?;
        wait_for_gpu(&ctx)?;
        i += 1;
        Ok(started.elapsed().as_secs_f64() * 1e3)
    })?;
    let mut detail = gpu_detail(&ctx);
    detail["bands"] = gpu.band_count(h, w)?.into();
    Ok(ChildResult {
        times_ms: times,
        peak_rss_mb: peak_rss_mb(),
        detail,
    })
}

/// Uploads a source frame and upscales it to 4K into an output texture, and waits.
pub fn child_gpu_4k(warmup: usize, runs: usize) -> anyhow::Result<ChildResult> {
    let ctx = GpuContext::new_headless()?;
    let frames = smooth_frames(SOURCE_SIZE, 2);
    let mut upscaler = BicubicUpscaler::new(&ctx.device, OUTPUT_FORMAT);
    let output = dreamwalk::gpu::create_output_texture(&ctx.device, OUTPUT_SIZE.0, OUTPUT_SIZE.1);
    let view = output.create_view(&wgpu::TextureViewDescriptor::default());
    let mut i = 0;
    let times = time_runs(Case::Gpu4k, warmup, runs, || {
        let started = Instant::now();
        upscaler.upload(&ctx.device, &ctx.queue, &frames[i % 2])?;
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("bench gpu_4k"),
            });
        upscaler.render(&ctx.device, &ctx.queue, &mut encoder, &view)?;
        ctx.queue.submit([encoder.finish()]);
        wait_for_gpu(&ctx)?;
        i += 1;
        Ok(started.elapsed().as_secs_f64() * 1e3)
    })?;
    Ok(ChildResult {
        times_ms: times,
        peak_rss_mb: peak_rss_mb(),
        detail: gpu_detail(&ctx),
    })
}

/// In-betweens per decoded frame in the `gpu_walk` case (the viewer's default).
const WALK_INBETWEENS: usize = 3;

/// The viewer's GPU path for one decoded frame: decode into a [`dreamwalk::gpu::GpuFrame`],
/// draw the in-betweens from the previous frame and the frame itself to 4K, and wait.
pub fn child_gpu_walk(args: &BenchArgs, warmup: usize, runs: usize) -> anyhow::Result<ChildResult> {
    let ctx = GpuContext::new_headless()?;
    let decoder = TaesdDecoder::random(&TaesdConfig::default(), 0)?;
    let gpu = GpuTaesd::new(&ctx, &decoder)?;
    let (h, w) = args.gpu_latent;
    let latents = [
        Tensor::randn(0f32, 1f32, (1, 4, h, w), &Device::Cpu)?,
        Tensor::randn(0f32, 1f32, (1, 4, h, w), &Device::Cpu)?,
    ];
    let mut upscaler = BicubicUpscaler::new(&ctx.device, OUTPUT_FORMAT);
    let output = dreamwalk::gpu::create_output_texture(&ctx.device, OUTPUT_SIZE.0, OUTPUT_SIZE.1);
    let view = output.create_view(&wgpu::TextureViewDescriptor::default());
    let mut previous = Arc::new(gpu.decode_frame(&latents[1])?);
    let mut i = 0;
    let times = time_runs(Case::GpuWalk, warmup, runs, || {
        let started = Instant::now();
        let next = Arc::new(gpu.decode_frame(&latents[i % 2])?);
        let k = WALK_INBETWEENS;
        let shown = (0..k)
            .map(|j| FrameImage::GpuInbetween {
                prev: previous.clone(),
                next: next.clone(),
                j,
                k,
            })
            .chain([FrameImage::Gpu(next.clone())]);
        for image in shown {
            let mut encoder = ctx
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("bench gpu_walk"),
                });
            upscaler.render_frame(&ctx.device, &ctx.queue, &mut encoder, &image, &view)?;
            ctx.queue.submit([encoder.finish()]);
        }
        wait_for_gpu(&ctx)?;
        if previous.was_read_back() || next.was_read_back() {
            bail!("a frame was copied to the CPU");
        }
        previous = next;
        i += 1;
        Ok(started.elapsed().as_secs_f64() * 1e3)
    })?;
    Ok(ChildResult {
        times_ms: times,
        peak_rss_mb: peak_rss_mb(),
        detail: gpu_detail(&ctx),
    })
}
