//! The cases timed side by side with a reference (the decoders, the 4K path): ours in a
//! child process, then the reference, and the ratio of the fastest runs, judged against
//! the case's target.

use crate::cases::{Case, KeyframeWork};
use crate::child::run_child;
use crate::four_k::interleaved_4k_path;
use crate::reference::Reference;
use crate::report::{CaseReport, Timing};
use crate::BenchArgs;

/// Ours in a child process, then the reference, for a timed case.
pub fn bench_timed(
    args: &BenchArgs,
    case: Case,
    reference: &Reference,
) -> anyhow::Result<CaseReport> {
    let (warmup, runs) = args.runs_for(case);
    let (ours, theirs) = match case {
        Case::FourKPath => interleaved_4k_path(args, reference, warmup, runs)?,
        _ => {
            let ours = run_child(args, case, (warmup, runs), &[])?;
            (ours, reference.run(args, case, warmup, runs))
        }
    };
    let ours_timing = Timing::from_runs(ours.times_ms.clone(), ours.peak_rss_mb)?;
    let (reference_timing, skipped) = match theirs {
        Ok(timing) => (Some(timing), None),
        Err(reason) => (None, Some(reason)),
    };
    let (work, unit, target) = match case {
        Case::FourKPath => (
            format!(
                "{} decoded + 3 in-betweens each, bicubic 1024x576 -> 3840x2160, {} workers",
                args.keyframes, args.threads
            ),
            "ms/frame",
            "≥ 1.5x fps",
        ),
        Case::Taesd72x128 | Case::Taesd64x64 => {
            let (h, w) = case.latent_hw().unwrap_or_default();
            (
                format!("TAESD {h}x{w} -> {}x{}, f32", h * 8, w * 8),
                "ms",
                "≤ 0.5x time",
            )
        }
        _ if case.x4_hw().is_some() => {
            let (h, w) = case.x4_hw().unwrap_or_default();
            (
                format!(
                    "x4 upscaler {h}x{w} -> {}x{}: 1 guided step on tiles of 128, tiled decode, f32",
                    h * 4,
                    w * 4
                ),
                "ms",
                "peak RSS ≤ 6 GiB",
            )
        }
        _ => match case.keyframe_work() {
            Some(work) => (
                keyframe_work_text(work),
                "ms",
                "≤ 0.5x time, ≤ 1.0x peak RSS",
            ),
            None if case.is_tiled_vae() => {
                let (h, w) = case.latent_hw().unwrap_or_default();
                (
                    format!(
                        "SD 1.5 VAE {h}x{w} -> {}x{}, f32, {:?}",
                        h * 8,
                        w * 8,
                        case.vae_tiling()
                    ),
                    "ms",
                    "peak RSS ≤ 3 GiB",
                )
            }
            None => {
                let (h, w) = case.latent_hw().unwrap_or_default();
                (
                    format!("SD 1.5 VAE {h}x{w} -> {}x{}, f32", h * 8, w * 8),
                    "ms",
                    "≤ 1.0x time, ≤ 1.0x peak RSS",
                )
            }
        },
    };
    let mut report = CaseReport {
        case,
        work,
        unit: unit.to_string(),
        ours: Some(ours_timing.clone()),
        reference: reference_timing.clone(),
        reference_skipped: skipped,
        ratio: None,
        target: target.to_string(),
        pass: None,
        peak_rss_ratio: None,
        detail: ours.detail,
    };
    if case.x4_hw().is_some() {
        report.pass = ours_timing.peak_rss_mb.map(|mb| mb <= 6144.0);
        return Ok(report);
    }
    if case.is_tiled_vae() {
        // Judged on our memory alone: the untiled reference may not run at all.
        report.pass = ours_timing.peak_rss_mb.map(|mb| mb <= 3072.0);
        if let Some(theirs) = &reference_timing {
            report.ratio = Some(ours_timing.min_ms / theirs.min_ms);
            report.peak_rss_ratio = ours_timing
                .peak_rss_mb
                .zip(theirs.peak_rss_mb)
                .map(|(o, t)| o / t);
        }
        return Ok(report);
    }
    if let Some(theirs) = &reference_timing {
        match case {
            Case::FourKPath => {
                let speedup = theirs.min_ms / ours_timing.min_ms;
                report.ratio = Some(speedup);
                report.pass = Some(speedup >= 1.5);
            }
            Case::Taesd72x128 | Case::Taesd64x64 => {
                let ratio = ours_timing.min_ms / theirs.min_ms;
                report.ratio = Some(ratio);
                report.pass = Some(ratio <= 0.5);
            }
            _ => {
                let ratio = ours_timing.min_ms / theirs.min_ms;
                let rss = ours_timing.peak_rss_mb.zip(theirs.peak_rss_mb);
                report.ratio = Some(ratio);
                report.peak_rss_ratio = rss.map(|(o, t)| o / t);
                let time_target = if case.keyframe_work().is_some() {
                    0.5
                } else {
                    1.0
                };
                report.pass =
                    Some(ratio <= time_target && report.peak_rss_ratio.is_none_or(|r| r <= 1.0));
            }
        }
    }
    Ok(report)
}

/// What a keyframe case runs, in words.
fn keyframe_work_text(work: KeyframeWork) -> String {
    let family = if work.sd2 { "SD-Turbo / 2.1" } else { "SD 1.5" };
    if work.unet {
        let (h, w) = work.latent_hw;
        format!(
            "{family} UNet, batch {}, {h}x{w} latents ({}x{}), f32",
            work.batch,
            h * 8,
            w * 8
        )
    } else {
        format!("{family} text encoder, 77 tokens, f32")
    }
}
