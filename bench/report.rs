//! The figures: one side of a case ([`Timing`]), a case's row ([`CaseReport`]), the whole
//! run ([`BenchReport`], what `--json` writes), and the table and lines printed.

use anyhow::bail;
use serde::{Deserialize, Serialize};

use crate::cases::Case;
use crate::probe::MachineInfo;

/// Figures of one side of one case.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Timing {
    /// Fastest run (per frame for the 4K path).
    pub min_ms: f64,
    pub median_ms: f64,
    /// Every timed run, in order.
    pub all_ms: Vec<f64>,
    /// Peak resident memory of the process that ran the case (VmHWM), MiB.
    pub peak_rss_mb: Option<f64>,
}

impl Timing {
    pub fn from_runs(all_ms: Vec<f64>, peak_rss_mb: Option<f64>) -> anyhow::Result<Self> {
        if all_ms.is_empty() || all_ms.iter().any(|t| !t.is_finite() || *t < 0.0) {
            bail!("no usable timings: {all_ms:?}");
        }
        let mut sorted = all_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let mid = sorted.len() / 2;
        let median_ms = if sorted.len() % 2 == 1 {
            sorted[mid]
        } else {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        };
        Ok(Self {
            min_ms: sorted[0],
            median_ms,
            all_ms,
            peak_rss_mb,
        })
    }
}

/// One row of the report.
#[derive(Clone, Debug, Serialize)]
pub struct CaseReport {
    pub case: Case,
    /// What is measured, in words.
    pub work: String,
    /// `ms` per call, or `ms/frame` for the 4K path.
    pub unit: String,
    pub ours: Option<Timing>,
    pub reference: Option<Timing>,
    /// Why the reference did not run, when it did not.
    pub reference_skipped: Option<String>,
    /// ours/reference for times, reference/ours (= our fps over theirs) for the 4K path,
    /// longest/shortest render for peak RSS.
    pub ratio: Option<f64>,
    pub target: String,
    /// `None` when there is nothing to compare.
    pub pass: Option<bool>,
    /// Peak RSS, ours over the reference's (the VAE's memory target).
    pub peak_rss_ratio: Option<f64>,
    /// Case-specific figures (render lengths, frames per run).
    pub detail: serde_json::Value,
}

/// The whole run, as written by `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub machine: MachineInfo,
    pub threads: u16,
    pub reference_info: serde_json::Value,
    pub cases: Vec<CaseReport>,
}

/// The line printed once a case is done.
pub fn summary_line(report: &CaseReport) -> String {
    if report.case == Case::RenderRss {
        return format!("{}: {}", report.case, render_peaks(report).join(", "));
    }
    let ours = report.ours.as_ref().map_or(String::new(), |t| {
        let rss = t
            .peak_rss_mb
            .map_or(String::new(), |mb| format!(", peak RSS {mb:.0} MiB"));
        format!("ours min {:.2} {}{rss}", t.min_ms, report.unit)
    });
    let theirs = match (&report.reference, &report.reference_skipped) {
        (Some(t), _) => format!(", reference min {:.2} {}", t.min_ms, report.unit),
        (None, Some(why)) => format!(", reference skipped ({why})"),
        _ => String::new(),
    };
    format!("{}: {ours}{theirs}", report.case)
}

fn ms_pair(t: &Timing, unit: &str) -> String {
    let fps = |ms: f64| 1e3 / ms;
    if unit == "ms/frame" {
        format!(
            "{:.2} / {:.2} ms ({:.0} fps)",
            t.min_ms,
            t.median_ms,
            fps(t.min_ms)
        )
    } else {
        format!("{:.0} / {:.0} ms", t.min_ms, t.median_ms)
    }
}

/// "273 MiB @ 101 frames" for each render of a `render_rss` report.
fn render_peaks(report: &CaseReport) -> Vec<String> {
    let renders = report.detail["renders"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    renders
        .iter()
        .map(|r| {
            format!(
                "{:.0} MiB @ {} frames (halves {:.0}, {:.0})",
                r["peak_rss_mb"].as_f64().unwrap_or(f64::NAN),
                r["detail"]["frames"]
                    .as_u64()
                    .or(r["frames_asked"].as_u64())
                    .unwrap_or(0),
                r["detail"]["first_half_peak_mb"]
                    .as_f64()
                    .unwrap_or(f64::NAN),
                r["detail"]["second_half_peak_mb"]
                    .as_f64()
                    .unwrap_or(f64::NAN),
            )
        })
        .collect()
}

/// The table printed at the end.
pub fn table(report: &BenchReport) -> String {
    let mut rows: Vec<[String; 6]> = vec![[
        "case".into(),
        "ours min / median".into(),
        "reference min / median".into(),
        "ratio".into(),
        "target".into(),
        "".into(),
    ]];
    let mark = |pass: Option<bool>| match pass {
        Some(true) => "pass".to_string(),
        Some(false) => "FAIL".to_string(),
        None => "-".to_string(),
    };
    for case in &report.cases {
        if case.case == Case::RenderRss {
            let peaks = render_peaks(case);
            rows.push([
                format!("{} (peak RSS)", case.case),
                peaks.join(", "),
                "-".into(),
                case.ratio.map_or("-".into(), |r| format!("{r:.2}x")),
                case.target.clone(),
                mark(case.pass),
            ]);
            continue;
        }
        let ours = case
            .ours
            .as_ref()
            .map_or("-".into(), |t| ms_pair(t, &case.unit));
        let theirs = match (&case.reference, &case.reference_skipped) {
            (Some(t), _) => ms_pair(t, &case.unit),
            (None, Some(_)) => "skipped".into(),
            _ => "-".into(),
        };
        let ratio = case.ratio.map_or("-".into(), |r| match case.unit.as_str() {
            _ if case.case.is_gpu() => format!("{r:.2}x target rate"),
            "ms/frame" => format!("{r:.2}x fps"),
            _ => format!("{r:.2}x time"),
        });
        rows.push([
            case.case.name(),
            ours,
            theirs,
            ratio,
            case.target.clone(),
            mark(case.pass),
        ]);
        let rss = case.ours.as_ref().and_then(|t| t.peak_rss_mb);
        if let Some(working) = case.detail["working_mb"].as_f64() {
            let estimated = case.detail["estimated_mb"].as_f64().unwrap_or(f64::NAN);
            // The figure the article gives for its SD VAE decoder at 512x512.
            let article = match case.case {
                Case::Sdvae64x64 => "article: 133 MB",
                _ => "-",
            };
            rows.push([
                format!("{} (working buffer)", case.case),
                format!("{working:.0} MiB (estimated {estimated:.0})"),
                article.into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
        }
        if case.case.is_sdvae() {
            let theirs_rss = case.reference.as_ref().and_then(|t| t.peak_rss_mb);
            rows.push([
                format!("{} (peak RSS)", case.case),
                rss.map_or("-".into(), |mb| format!("{mb:.0} MiB")),
                theirs_rss.map_or("-".into(), |mb| format!("{mb:.0} MiB")),
                case.peak_rss_ratio
                    .map_or("-".into(), |r| format!("{r:.2}x")),
                match case.case.is_tiled_vae() {
                    true => "≤ 3 GiB".into(),
                    false => "≤ 1.0x".into(),
                },
                match case.case.is_tiled_vae() {
                    true => mark(case.pass),
                    false => mark(case.peak_rss_ratio.map(|r| r <= 1.0)),
                },
            ]);
        }
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, &w)| format!("{cell}{}", " ".repeat(w - cell.chars().count())))
            .collect();
        out.push_str(cells.join(" | ").trim_end());
        out.push('\n');
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
            out.push_str(&rule.join("-|-"));
            out.push('\n');
        }
    }
    let skipped: Vec<String> = report
        .cases
        .iter()
        .filter(|c| c.reference.is_none() && c.case != Case::RenderRss)
        .filter_map(|c| Some(format!("{}: {}", c.case, c.reference_skipped.as_ref()?)))
        .collect();
    if !skipped.is_empty() {
        out.push_str(&format!("reference skipped: {}\n", skipped.join("; ")));
    }
    out.push_str(&format!(
        "{}, {} cores, {} threads; load {:.1} before, {:.1} after; ratios from the fastest runs\n",
        report.machine.cpu,
        report.machine.cores,
        report.threads,
        report.machine.load_before.unwrap_or(f64::NAN),
        report.machine.load_after.unwrap_or(f64::NAN),
    ));
    out
}
