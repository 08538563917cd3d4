//! `4k_path`: the post-decode path (3 in-betweens per decoded frame, CPU bicubic 1024x576
//! -> 3840x2160 on the upscale workers, the ordered ring) through the real pipeline, fed
//! pre-made decoded frames by a [`ScriptedEngine`] so that only the stages after the model
//! are timed; against the original app's numpy + OpenCV pipeline, runs taking turns.

use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;
use dreamwalk::frame::RgbaImage;
use dreamwalk::model::scripted::ScriptedEngine;
use dreamwalk::model::{DecoderKind, EndpointRequest, Engine};
use dreamwalk::pipeline::{Inbetweens, Pipeline, PipelineOptions, RingPolicy, Settings};
use dreamwalk::upscale::{BicubicResizer, UpscaleMode};
use dreamwalk::walk::{Easing, Interp, LoopMode, WalkSettings};

use crate::cases::Case;
use crate::child::{run_child, time_runs, ChildResult};
use crate::probe::peak_rss_mb;
use crate::reference::Reference;
use crate::report::Timing;
use crate::BenchArgs;

/// The source and output sizes of the 4K path.
pub const SOURCE_SIZE: (u32, u32) = (1024, 576);
pub const OUTPUT_SIZE: (u32, u32) = (3840, 2160);

/// `count` smooth-ish frames of `size` (noise at 1/8 size, enlarged: like decoded images,
/// unlike white noise), as the reference script makes its keyframes.
pub fn smooth_frames(size: (u32, u32), count: usize) -> Vec<RgbaImage> {
    let mut resizer = BicubicResizer::new();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let (w, h) = ((size.0 / 8).max(4), (size.1 / 8).max(4));
    (0..count.max(1))
        .map(|_| {
            let pixels = (0..w * h * 4)
                .map(|i| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    if i % 4 == 3 {
                        255
                    } else {
                        (state >> 32) as u8
                    }
                })
                .collect();
            let small = RgbaImage {
                width: w,
                height: h,
                pixels,
            };
            resizer.resize(&small, size.0, size.1)
        })
        .collect()
}

/// One pass of the 4K path: `decoded` frames through the pipeline (in-betweens, upscale
/// workers, ring), every frame popped in order as `render` does. Returns (frames, seconds).
pub fn run_4k_path(
    engine: Arc<ScriptedEngine>,
    decoded: u32,
    workers: usize,
    output_size: (u32, u32),
) -> anyhow::Result<(u64, f64)> {
    let settings = Settings {
        endpoints: EndpointRequest {
            keyframes: vec!["start".into(), "end".into()],
            negative: String::new(),
            seed: 0,
            seed_per_keyframe: false,
            steps: 1,
            guidance: 1.0,
            image_size: engine.defaults().image_size,
            init_latents: None,
        },
        walk: WalkSettings {
            // A once-through walk of two keyframes visits steps_between + 1 positions.
            steps_between: decoded.saturating_sub(1).max(1) as usize,
            interp: Interp::Lerp,
            easing: Easing::Linear,
            loop_mode: LoopMode::Once,
        },
        decoder: DecoderKind::Taesd,
        inbetweens: Inbetweens::Fixed(3),
        target_fps: 30.0,
        upscale: UpscaleMode::Cpu,
        output_size,
        diffuse: 0,
    };
    settings.validate(&*engine)?;
    let options = PipelineOptions {
        policy: RingPolicy::Record,
        stop_at_end: true,
        upscale_workers: workers,
        ..Default::default()
    };
    let started = Instant::now();
    let pipeline = Pipeline::start(engine, settings, options);
    let mut frames = 0u64;
    while let Some(frame) = pipeline.ring().pop() {
        if frame.image.size() != output_size {
            bail!(
                "frame {} is {}x{}, not {}x{}",
                frame.index,
                frame.image.size().0,
                frame.image.size().1,
                output_size.0,
                output_size.1
            );
        }
        frames += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    let stats = pipeline.stats_snapshot();
    pipeline.shutdown();
    if let Some(error) = stats.last_error {
        bail!("the pipeline failed: {error}");
    }
    if frames == 0 {
        bail!("the pipeline produced no frames");
    }
    Ok((frames, seconds))
}

/// Ours, in the child: ms per frame of each pass.
pub fn child_4k_path(args: &BenchArgs, warmup: usize, runs: usize) -> anyhow::Result<ChildResult> {
    let frames = smooth_frames(SOURCE_SIZE, args.keyframes as usize);
    let engine = Arc::new(ScriptedEngine::premade(frames));
    let mut frames_per_run = 0;
    let times = time_runs(Case::FourKPath, warmup, runs, || {
        let (frames, seconds) = run_4k_path(
            engine.clone(),
            args.keyframes,
            args.threads as usize,
            OUTPUT_SIZE,
        )?;
        frames_per_run = frames;
        Ok(seconds * 1e3 / frames as f64)
    })?;
    Ok(ChildResult {
        times_ms: times,
        peak_rss_mb: peak_rss_mb(),
        detail: serde_json::json!({ "frames_per_run": frames_per_run }),
    })
}

/// The 4K path, ours and the reference's runs taking turns (each in a fresh process), so
/// that a change of load on the machine hits both sides alike.
pub fn interleaved_4k_path(
    args: &BenchArgs,
    reference: &Reference,
    warmup: usize,
    runs: usize,
) -> anyhow::Result<(ChildResult, Result<Timing, String>)> {
    let mut ours = ChildResult {
        times_ms: Vec::new(),
        peak_rss_mb: None,
        detail: serde_json::Value::Null,
    };
    let mut theirs: Result<(Vec<f64>, Option<f64>), String> =
        reference.seed.clone().map(|()| (Vec::new(), None));
    for i in 0..warmup {
        if theirs.is_ok() {
            let label = format!(
                "4k_path reference (numpy + OpenCV) warm-up {}/{warmup}",
                i + 1
            );
            if let Err(e) = reference.run_seed_once(args, &label) {
                theirs = Err(e);
            }
        }
    }
    for i in 0..runs {
        let run = run_child(args, Case::FourKPath, (warmup, 1), &[])?;
        ours.times_ms.extend(run.times_ms);
        ours.peak_rss_mb = max_option(ours.peak_rss_mb, run.peak_rss_mb);
        ours.detail = run.detail;
        let label = format!("4k_path reference (numpy + OpenCV) run {}/{runs}", i + 1);
        let outcome = theirs
            .is_ok()
            .then(|| reference.run_seed_once(args, &label));
        match outcome {
            Some(Ok((ms, run_peak))) => {
                if let Ok((all_ms, peak)) = &mut theirs {
                    all_ms.push(ms);
                    *peak = max_option(*peak, run_peak);
                }
            }
            Some(Err(e)) => theirs = Err(e),
            None => {}
        }
    }
    let theirs = theirs
        .and_then(|(all_ms, peak)| Timing::from_runs(all_ms, peak).map_err(|e| e.to_string()));
    Ok((ours, theirs))
}

fn max_option(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}
