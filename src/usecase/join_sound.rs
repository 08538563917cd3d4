//! The sound of a join, seam-exact. Each segment's AAC or Opus track starts with the
//! encoder's priming samples (1024 for AAC), which its own file's edit list hides, but a
//! stream copy through the concat demuxer plays them at every seam: the sound would fall
//! ~23 ms further behind the pictures at each one (a 100-task render: over 2 s). So each
//! segment's sound is decoded (priming dropped), cut to exactly its share of the walk's
//! samples, joined as PCM and encoded once; the video is still copied.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The segments' sound decoded into a temporary folder beside the output (removed when
/// dropped), with the concat list that plays it as one track.
pub(super) struct DecodedSound {
    _dir: tempfile::TempDir,
    pub(super) list: PathBuf,
}

/// Decodes `segments`' first sound streams at `rate` Hz. `lengths` are their videos'
/// exact lengths in seconds: segment `i` gets the samples from the walk's time at its start
/// to the time at its end, each rounded from the whole walk's time, so the rounding never
/// adds up over the seams.
pub(super) fn decode_segments(
    ffmpeg: &Path,
    segments: &[PathBuf],
    lengths: &[f64],
    rate: u32,
    beside: &Path,
) -> Result<DecodedSound, String> {
    let folder = beside
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = tempfile::Builder::new()
        .prefix(".dreamwalk-join-sound")
        .tempdir_in(folder)
        .map_err(|e| format!("a temporary folder in {}: {e}", folder.display()))?;
    let bounds = sample_bounds(lengths, rate);
    let mut list = String::from("ffconcat version 1.0\n");
    for (i, (segment, samples)) in segments.iter().zip(bounds).enumerate() {
        let wav = dir.path().join(format!("{i}.wav"));
        let out = Command::new(ffmpeg)
            .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i"])
            .arg(segment)
            .args(["-map", "0:a:0", "-vn", "-af"])
            // Padded with silence first: a segment's track may end a few samples short.
            .arg(format!("apad,atrim=end_sample={samples}"))
            .args(["-ar", &rate.to_string(), "-c:a", "pcm_f32le", "-f", "wav"])
            .arg(&wav)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running {}: {e}", ffmpeg.display()))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(format!(
                "decoding the sound of {}: {}",
                segment.display(),
                stderr.trim()
            ));
        }
        let quoted = wav.to_string_lossy().replace('\'', "'\\''");
        list.push_str(&format!("file '{quoted}'\n"));
    }
    let list_path = dir.path().join("sound.txt");
    std::fs::write(&list_path, list).map_err(|e| format!("{}: {e}", list_path.display()))?;
    Ok(DecodedSound {
        _dir: dir,
        list: list_path,
    })
}

/// Samples per segment: segment `i` spans the walk's time from the sum of the lengths
/// before it to the sum with it, each end rounded to a sample.
fn sample_bounds(lengths: &[f64], rate: u32) -> Vec<u64> {
    let mut elapsed = 0.0;
    let mut start = 0u64;
    lengths
        .iter()
        .map(|seconds| {
            elapsed += seconds;
            let end = (elapsed * f64::from(rate)).round() as u64;
            let samples = end.saturating_sub(start);
            start = end;
            samples
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_samples_round_the_walk_time_not_each_segment() {
        // 24 fps at 44100 Hz: 1837.5 samples a frame. Three 1-frame segments round each
        // end of the whole walk's time: 1838 (1837.5), then 3675 - 1838, 5513 - 3675.
        assert_eq!(
            sample_bounds(&[1.0 / 24.0; 3], 44100),
            vec![1838, 1837, 1838]
        );
        assert_eq!(
            sample_bounds(&[20.0 / 30.0, 20.0 / 30.0], 48000),
            vec![32000, 32000]
        );
    }
}
