//! `render_rss`: peak RSS of a headless render ([`dreamwalk::usecase::render`], what
//! `dreamwalk render` runs) of 4K frames on the demo model, one child process per length:
//! memory must not grow with the length of the walk.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context};
use dreamwalk::gpu::GpuDecode;
use dreamwalk::model::{DecoderKind, EndpointRequest};
use dreamwalk::pipeline::{Inbetweens, Settings};
use dreamwalk::record::RecordOptions;
use dreamwalk::upscale::UpscaleMode;
use dreamwalk::usecase::{headless_engine, ModelSource, RenderJob};
use dreamwalk::walk::{Easing, Interp, LoopMode, WalkSettings};

use crate::cases::Case;
use crate::child::{run_child, ChildResult};
use crate::probe::{peak_rss_mb, RssSampler};
use crate::report::CaseReport;
use crate::BenchArgs;

/// Peak RSS of renders of each length, each in its own process.
pub fn bench_render_rss(args: &BenchArgs) -> anyhow::Result<CaseReport> {
    let mut lengths = args.rss_frames.clone();
    lengths.sort_unstable();
    lengths.dedup();
    if lengths.is_empty() || lengths[0] == 0 {
        bail!("--rss-frames needs frame counts above 0");
    }
    let mut peaks = Vec::new();
    let mut details = Vec::new();
    for &frames in &lengths {
        let result = run_child(
            args,
            Case::RenderRss,
            (0, 1),
            &["--rss-frames", &frames.to_string()],
        )?;
        let peak = result
            .peak_rss_mb
            .context("the render's peak RSS could not be read (/proc/self/status)")?;
        peaks.push(peak);
        details.push(serde_json::json!({
            "frames_asked": frames,
            "detail": result.detail,
            "peak_rss_mb": peak,
            "seconds": result.times_ms.first().map(|ms| ms / 1e3),
        }));
    }
    // Flat: the longest render's second half peaks no higher than its first half (which also
    // holds the model load and the first decodes), give or take the 4K frames in flight.
    // Peaks move in steps of one 4K frame (31.6 MiB): how many frames sit in the ring, the
    // upscale workers and the recorder's queue at one moment (at most 8 + 2 + 8) depends on
    // scheduling, so renders of different lengths, or halves, differ by a frame or two by
    // chance. Two frames over 500 are 130 KB per frame: a per-frame leak shows above that.
    let longest = &details[details.len() - 1]["detail"];
    let (first, second) = (
        longest["first_half_peak_mb"].as_f64().unwrap_or(f64::NAN),
        longest["second_half_peak_mb"].as_f64().unwrap_or(f64::NAN),
    );
    let frame_mb = (3840.0 * 2160.0 * 4.0) / (1024.0 * 1024.0);
    let ratio = second / first;
    let flat = second <= first + 2.0 * frame_mb;
    Ok(CaseReport {
        case: Case::RenderRss,
        work: format!(
            "peak RSS of `dreamwalk render` (demo model, 4K frames, y4m) for {:?} frames",
            lengths
        ),
        unit: "MiB".to_string(),
        ours: None,
        reference: None,
        reference_skipped: Some("no reference: the target is flat memory".to_string()),
        ratio: ratio.is_finite().then_some(ratio),
        target: "2nd half ≤ 1st + 2 4K frames".to_string(),
        pass: ratio.is_finite().then_some(flat),
        peak_rss_ratio: None,
        detail: serde_json::json!({ "renders": details }),
    })
}

/// What `dreamwalk render --prompt="a red fox in the snow" --prompt="a lighthouse at night"
/// --steps=2 --steps-between=N --inbetween=3 --size=3840x2160 --record-size=64x36
/// --out=OUT` renders (the demo model's defaults for the rest), as a [`RenderJob`].
fn render_job(
    engine: &dyn dreamwalk::model::Engine,
    steps_between: u64,
    out: &Path,
) -> anyhow::Result<RenderJob> {
    let defaults = engine.defaults();
    let fps = 30;
    let settings = Settings {
        endpoints: EndpointRequest {
            keyframes: vec![
                "a red fox in the snow".into(),
                "a lighthouse at night".into(),
            ],
            negative: String::new(),
            seed: 42,
            seed_per_keyframe: false,
            steps: 2,
            guidance: defaults.guidance,
            image_size: defaults.image_size,
            init_latents: None,
        },
        walk: WalkSettings {
            steps_between: usize::try_from(steps_between).context("--rss-frames is too large")?,
            interp: Interp::Slerp,
            easing: Easing::Linear,
            loop_mode: LoopMode::Once,
        },
        decoder: DecoderKind::Taesd,
        inbetweens: Inbetweens::Fixed(3),
        target_fps: f64::from(fps),
        upscale: UpscaleMode::Cpu,
        output_size: (3840, 2160),
        diffuse: 0,
    };
    settings.validate(engine)?;
    Ok(RenderJob {
        settings,
        laps: 1,
        out: out.to_path_buf(),
        record: RecordOptions {
            fps,
            size: Some((64, 36)),
            crf: 18,
            ..Default::default()
        },
        save_latents: None,
        audio: None,
        frames: None,
    })
}

/// A render of about `--rss-frames` 4K frames on the demo model, in this process. The
/// frames go through the whole render path at 3840x2160 (pipeline, ring, recorder queue);
/// the y4m is recorded at 64x36 so that 1000 frames do not write 25 GB to the disk.
pub fn child_render_rss(args: &BenchArgs) -> anyhow::Result<ChildResult> {
    let &[frames] = &args.rss_frames[..] else {
        bail!("--child render_rss takes one --rss-frames count");
    };
    // Once through two keyframes with 3 in-betweens: 4 * steps_between + 1 frames.
    let steps_between = frames.saturating_sub(1).div_ceil(4).max(1);
    let dir = std::env::temp_dir().join(format!("dreamwalk-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = dir.join("render.y4m");
    let sampler = RssSampler::start();
    let started = Instant::now();
    // As `dreamwalk render` does: load the model (TAESD on a hardware GPU when there is
    // one), then render; the load counts in the first half's peak.
    let rendered = (|| -> anyhow::Result<()> {
        let (engine, note) = headless_engine(
            &ModelSource::default(),
            GpuDecode::Auto,
            Default::default(),
            GpuDecode::Auto,
        )?;
        if let Some(note) = note {
            eprintln!("dreamwalk: {note}");
        }
        let job = render_job(&*engine, steps_between, &out)?;
        let mut progress = dreamwalk::cli::RenderBar::new();
        let summary = dreamwalk::usecase::render(engine, &job, &mut progress)?;
        progress.finish();
        eprintln!("{summary}");
        Ok(())
    })();
    let seconds = started.elapsed().as_secs_f64();
    let samples = sampler.finish();
    let written = y4m_frames(&out);
    let _ = std::fs::remove_dir_all(&dir);
    rendered?;
    // The peak of each half of the render: a length-dependent leak makes the second higher;
    // equal halves see the same chance of the bounded stages all being full at once.
    let half = seconds / 2.0;
    let peak_of = |keep: &dyn Fn(f64) -> bool| {
        samples
            .iter()
            .filter(|(t, _)| keep(*t))
            .map(|(_, mb)| *mb)
            .fold(f64::NAN, f64::max)
    };
    Ok(ChildResult {
        times_ms: vec![seconds * 1e3],
        peak_rss_mb: peak_rss_mb(),
        detail: serde_json::json!({
            "frames": written,
            "steps_between": steps_between,
            "rss_samples": samples.len(),
            "first_half_peak_mb": peak_of(&|t| t < half),
            "second_half_peak_mb": peak_of(&|t| t >= half),
        }),
    })
}

/// Frames in a y4m file (counts `FRAME` markers; the tiny test frames hold no such bytes
/// by chance often enough to matter for a count shown to a person).
fn y4m_frames(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    Some(bytes.windows(6).filter(|w| w == b"FRAME\n").count() as u64)
}
