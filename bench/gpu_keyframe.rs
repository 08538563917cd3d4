//! The GPU sampling cases (`gpu_unet_turbo_64x64`, `gpu_unet_sd15_64x64_cfg`, `gpu_clip`,
//! `gpu_keyframe_turbo`): the WGSL UNet and text encoder (`gpu::sample`) at the real
//! architectures' sizes on seeded weights, in ms per call and as a fraction of the
//! adapter's f32 peak, which the case measures itself (`gpu_peak.wgsl`: chains of fused
//! multiply-adds). On a software adapter (lavapipe) the cases still run, on 8x8 latents,
//! and nobody judges the figures.

use std::time::Instant;

use candle_core::{Device, Tensor};
use dreamwalk::gpu::nn::{NnOptions, Precision};
use dreamwalk::gpu::sample::GpuSampler;
use dreamwalk::gpu::{GpuContext, GpuTaesd};
use dreamwalk::model::device::{DeviceJob, DeviceWeights, SamplingDevice};
use dreamwalk::model::schedulers::{Sampler, SamplerKind, Scheduler, SchedulerConfig};
use dreamwalk::model::single_file::builtin;
use dreamwalk::model::{seeded_var_builder, TaesdConfig, TaesdDecoder};
use rand::{Rng, SeedableRng};
use wgpu::util::DeviceExt;

use crate::cases::Case;
use crate::child::{run_child, time_runs, ChildResult};
use crate::probe::peak_rss_mb;
use crate::report::{CaseReport, Timing};
use crate::BenchArgs;

/// Latent side on a software adapter (the real sizes take minutes per call there).
const SOFTWARE_LATENT: usize = 8;

/// A GPU sampling case in a child process: ms per call against the target, and the
/// fraction of the adapter's measured f32 peak the call reaches.
pub fn bench_gpu_keyframe(args: &BenchArgs, case: Case) -> anyhow::Result<CaseReport> {
    let (warmup, runs) = args.runs_for(case);
    let ours = run_child(args, case, (warmup, runs), &[])?;
    let timing = Timing::from_runs(ours.times_ms.clone(), ours.peak_rss_mb)?;
    let d = &ours.detail;
    let software = d["software"].as_bool().unwrap_or(true);
    let adapter = d["adapter"].as_str().unwrap_or("?");
    let side = d["latent"].as_u64().unwrap_or(0);
    let (work, target_ms, target) = match case {
        Case::GpuUnetTurbo64x64 => (
            format!("GPU SD-Turbo UNet call, {side}x{side} latents, on {adapter}"),
            None,
            "ms and % of peak",
        ),
        Case::GpuUnetSd1564x64Cfg => (
            format!("GPU SD 1.5 UNet call with guidance (batch 2), {side}x{side}, on {adapter}"),
            Some(40.0),
            "≤ 40 ms",
        ),
        Case::GpuClip => (
            format!("GPU CLIP ViT-L/14 text encoder, 77 tokens, on {adapter}"),
            None,
            "ms and % of peak",
        ),
        _ => (
            format!(
                "GPU SD-Turbo keyframe: text + 1 step + TAESD, {side}x{side} latents, on {adapter}"
            ),
            Some(60.0),
            "≤ 60 ms",
        ),
    };
    let peak = d["peak_gflops"].as_f64().unwrap_or(f64::NAN);
    let gflop = d["gflop_per_call"].as_f64().unwrap_or(f64::NAN);
    let achieved = gflop / (timing.min_ms / 1e3);
    let mut detail = ours.detail.clone();
    detail["achieved_gflops"] = achieved.into();
    detail["fraction_of_peak"] = (achieved / peak).into();
    eprintln!(
        "{}: {gflop:.1} GFLOP per call, {achieved:.0} GFLOP/s = {:.0}% of the adapter's \
         measured {peak:.0} GFLOP/s",
        case.name(),
        100.0 * achieved / peak
    );
    Ok(CaseReport {
        case,
        work,
        unit: "ms".to_string(),
        ours: Some(timing.clone()),
        reference: None,
        reference_skipped: Some(if software {
            format!("software adapter ({adapter}), {side}x{side} latents: not a GPU figure")
        } else {
            "no reference: the target is a time".to_string()
        }),
        ratio: Some(achieved / peak),
        target: target.to_string(),
        pass: match (software, target_ms) {
            (false, Some(ms)) => Some(timing.min_ms <= ms),
            _ => None,
        },
        peak_rss_ratio: None,
        detail,
    })
}

/// The adapter's f32 rate in GFLOP/s, from `gpu_peak.wgsl` run for at least 0.2 s.
fn measure_peak(ctx: &GpuContext) -> anyhow::Result<f64> {
    let device = &ctx.device;
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("gpu_peak.wgsl"),
        source: wgpu::ShaderSource::Wgsl(include_str!("gpu_peak.wgsl").into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("gpu_peak"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let groups: u32 = 1024;
    let threads = u64::from(groups) * 256;
    let sink = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("gpu_peak sink"),
        contents: &vec![0u8; threads as usize * 16],
        usage: wgpu::BufferUsages::STORAGE,
    });
    let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[wgpu::BindGroupEntry {
            binding: 0,
            resource: sink.as_entire_binding(),
        }],
    });
    let run = |dispatches: u32| -> anyhow::Result<f64> {
        let started = Instant::now();
        let mut encoder = device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind, &[]);
            for _ in 0..dispatches {
                pass.dispatch_workgroups(groups, 1, 1);
            }
        }
        ctx.queue.submit([encoder.finish()]);
        device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| anyhow::anyhow!("waiting for the GPU: {e}"))?;
        Ok(started.elapsed().as_secs_f64())
    };
    run(1)?;
    let mut dispatches = 1;
    loop {
        let seconds = run(dispatches)?;
        if seconds >= 0.2 || dispatches >= 1 << 16 {
            // 512 iterations x 8 vec4 FMAs x 4 lanes x 2 FLOP.
            let flop = threads as f64 * 512.0 * 64.0 * f64::from(dispatches);
            return Ok(flop / seconds / 1e9);
        }
        dispatches *= 2;
    }
}

/// One call per run; figures in the detail: the adapter, the latent side, the kernels'
/// GFLOP per call and the measured peak (`--gpu-f16`, `--gpu-bounds-checks` set the
/// kernels' options; the adapter's name then says "f16").
pub fn child_gpu_keyframe(
    args: &BenchArgs,
    case: Case,
    warmup: usize,
    runs: usize,
) -> anyhow::Result<ChildResult> {
    let ctx = GpuContext::new_headless()?;
    let software = ctx.is_software();
    let side = if software { SOFTWARE_LATENT } else { 64 };
    let peak_gflops = measure_peak(&ctx)?;
    // SD-Turbo is SD 2.1's architecture (linear projections, 1024-wide context).
    let sd2 = !matches!(case, Case::GpuUnetSd1564x64Cfg | Case::GpuClip);
    let guided = case == Case::GpuUnetSd1564x64Cfg;
    let unet_config = builtin::unet(sd2, sd2);
    let text_config = builtin::text_encoder(sd2);
    let vb = seeded_var_builder(0, &Device::Cpu);
    let options = NnOptions {
        precision: match args.gpu_f16 {
            true => Precision::F16,
            false => Precision::F32,
        },
        trusted_products: !args.gpu_bounds_checks,
    };
    let sampler = GpuSampler::with_options(
        ctx.device.clone(),
        ctx.queue.clone(),
        ctx.adapter_name(),
        DeviceWeights {
            unet: vb.pp("unet"),
            unet_config: &unet_config,
            text: vb.pp("text"),
            text_config: &text_config,
        },
        options,
    )?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut normal = |shape: &[usize]| -> anyhow::Result<Tensor> {
        let count = shape.iter().product();
        let values: Vec<f32> = (0..count)
            .map(|_| rng.sample::<f32, _>(rand_distr::StandardNormal))
            .collect();
        Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
    };
    let batch = if guided { 2 } else { 1 };
    let latents = normal(&[1, 4, side, side])?;
    let context = normal(&[batch, 77, text_config.hidden_size])?;
    let ids: Vec<u32> = (0..77).map(|i| (i * 641 % 49407) as u32).collect();
    let nn = sampler.nn();
    let flops_before = nn.flops();
    let times = match case {
        Case::GpuClip => time_runs(case, warmup, runs, || {
            let started = Instant::now();
            sampler.encode_text(&ids).map_err(anyhow::Error::from)?;
            Ok(started.elapsed().as_secs_f64() * 1e3)
        })?,
        Case::GpuKeyframeTurbo => {
            let taesd = GpuTaesd::new(&ctx, &TaesdDecoder::random(&TaesdConfig::default(), 0)?)?;
            let mut scheduler = SchedulerConfig::stable_diffusion(
                dreamwalk::model::schedulers::PredictionType::Epsilon,
            );
            scheduler.class_name = Some("EulerDiscreteScheduler".into());
            scheduler.timestep_spacing =
                Some(dreamwalk::model::schedulers::TimestepSpacing::Trailing);
            let euler = Sampler::new(&scheduler, SamplerKind::Euler, 1)?;
            let start = latents.affine(euler.init_noise_sigma(), 0.0)?;
            let steps = vec![(euler.timesteps()[0], euler.linear_step(0)?)];
            time_runs(case, warmup, runs, || {
                let started = Instant::now();
                let context = sampler.encode_text(&ids).map_err(anyhow::Error::from)?;
                let job = DeviceJob {
                    latents: &start,
                    context: &context,
                    steps: steps.clone(),
                    first_step: 0,
                    num_steps: 1,
                    guidance: None,
                };
                let out = sampler
                    .denoise(&job, &mut |_, _| true)
                    .map_err(anyhow::Error::from)?;
                let frame = taesd.decode_frame(&out)?;
                drop(frame);
                ctx.device
                    .poll(wgpu::PollType::wait_indefinitely())
                    .map_err(|e| anyhow::anyhow!("waiting for the GPU: {e}"))?;
                Ok(started.elapsed().as_secs_f64() * 1e3)
            })?
        }
        _ => {
            let sample = sampler.upload(&normal(&[batch, 4, side, side])?)?;
            let context = sampler.upload(&context)?;
            time_runs(case, warmup, runs, || {
                let started = Instant::now();
                let out = sampler.unet().forward(nn, &sample, 999.0, &context)?;
                // Reading one value back waits for the call.
                nn.download(&out)?;
                Ok(started.elapsed().as_secs_f64() * 1e3)
            })?
        }
    };
    let calls = (warmup + runs).max(1) as f64;
    let gflop_per_call = (nn.flops() - flops_before) as f64 / calls / 1e9;
    Ok(ChildResult {
        times_ms: times,
        peak_rss_mb: peak_rss_mb(),
        detail: serde_json::json!({
            "adapter": sampler.label(),
            "bounds_checks": args.gpu_bounds_checks,
            "software": software,
            "latent": side,
            "peak_gflops": peak_gflops,
            "gflop_per_call": gflop_per_call,
        }),
    })
}
