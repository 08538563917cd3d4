//! WebM through ffmpeg: VP9 by libvpx-vp9 in constant-quality mode, yuv420p with the BT.709
//! matrix (tagged, as the MP4), in Matroska clusters of at most a second, flushed as they are
//! written. Finishing
//! remuxes the file (stream copy), which writes its index (cues, duration) even when ffmpeg
//! was cut off mid-way.
//!
//! The options are the MP4's, translated: [`RecordOptions::crf`] (x264's 0..=51) is scaled to
//! libvpx's 0..=63, and [`RecordOptions::preset`] picks libvpx's speed (`-deadline`,
//! `-cpu-used`): the x264 presets that keep up with a live walk map to the real-time mode.

use std::ffi::OsString;

use super::{RecordOptions, X264_PRESETS};

/// libvpx-vp9's settings for a recording.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vp9 {
    /// Constant quality, 0 (best) ..= 63.
    pub crf: u8,
    /// `-deadline`: `realtime` or `good`.
    pub deadline: &'static str,
    /// `-cpu-used`: 0 (slowest, best) ..= 8 (fastest).
    pub cpu_used: u8,
}

impl Vp9 {
    /// The VP9 settings closest to `opts`' x264 ones.
    pub fn from_options(opts: &RecordOptions) -> Self {
        // Same place on the scale: x264 18 (visually lossless) gives 22.
        let crf = (u32::from(opts.crf.min(51)) * 63 + 25) / 51;
        let index = X264_PRESETS
            .iter()
            .position(|p| *p == opts.preset)
            .unwrap_or(3);
        // ultrafast..=fast: real time, cpu-used 8..=5; medium and slower: good, 4..=0.
        let cpu_used = [8, 8, 7, 6, 5, 4, 3, 2, 1, 0][index.min(9)];
        Self {
            crf: crf as u8,
            deadline: if cpu_used >= 5 { "realtime" } else { "good" },
            cpu_used,
        }
    }

    /// How fast, in words, for the summary ("realtime, cpu-used 6").
    pub fn speed(&self) -> String {
        format!("{}, cpu-used {}", self.deadline, self.cpu_used)
    }

    /// The encoding arguments.
    pub(super) fn encode_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = [
            "-vf",
            "scale=out_color_matrix=bt709:out_range=tv",
            "-c:v",
            "libvpx-vp9",
            "-pix_fmt",
            "yuv420p",
            // Constant quality: no bitrate target.
            "-b:v",
            "0",
            "-crf",
        ]
        .map(OsString::from)
        .to_vec();
        args.push(self.crf.to_string().into());
        args.extend(["-deadline", self.deadline, "-cpu-used"].map(OsString::from));
        args.push(self.cpu_used.to_string().into());
        args.extend(
            [
                "-row-mt",
                "1",
                "-colorspace",
                "bt709",
                "-color_primaries",
                "bt709",
                "-color_trc",
                "bt709",
                "-color_range",
                "tv",
                // A cluster (written whole when closed) at least every second, as the MP4's
                // fragments: a killed ffmpeg loses at most the last second.
                "-cluster_time_limit",
                "1000",
                "-f",
                "webm",
            ]
            .map(OsString::from),
        );
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x264_options_translate_to_vp9() {
        let vp9 = |crf: u8, preset: &str| {
            Vp9::from_options(&RecordOptions {
                crf,
                preset: preset.to_string(),
                ..RecordOptions::default()
            })
        };
        assert_eq!(
            vp9(18, "faster"),
            Vp9 {
                crf: 22,
                deadline: "realtime",
                cpu_used: 6
            }
        );
        assert_eq!(vp9(0, "ultrafast").crf, 0);
        assert_eq!(
            vp9(51, "placebo"),
            Vp9 {
                crf: 63,
                deadline: "good",
                cpu_used: 0
            }
        );
        assert_eq!(vp9(23, "medium").deadline, "good");
    }
}
