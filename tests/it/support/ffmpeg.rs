//! ffmpeg and ffprobe, found the way the recorder finds ffmpeg, to read back what it wrote:
//! stream properties, every frame decoded to RGB, the container's comment.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The ffmpeg the recorder will find: `$DREAMWALK_FFMPEG` or `PATH`.
pub fn ffmpeg() -> PathBuf {
    if let Some(program) = std::env::var_os("DREAMWALK_FFMPEG").filter(|p| !p.is_empty()) {
        return PathBuf::from(program);
    }
    which("ffmpeg").expect("this test needs ffmpeg (Debian package `ffmpeg`) on PATH")
}

/// ffprobe beside the ffmpeg on `PATH`, else the first on `PATH`.
pub fn ffprobe() -> Option<PathBuf> {
    let beside_ffmpeg = which("ffmpeg")
        .and_then(|f| f.parent().map(|d| d.join("ffprobe")))
        .filter(|p| p.is_file());
    beside_ffmpeg.or_else(|| which("ffprobe"))
}

/// ffprobe, for tests that fail without it.
pub fn require_ffprobe() -> PathBuf {
    ffprobe().expect("this test needs ffprobe (Debian package `ffmpeg`) on PATH")
}

/// The first `name` on `PATH`.
fn which(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// What ffprobe says about the first video stream, decoding every frame to count them.
#[derive(Debug)]
pub struct Probe {
    pub codec_name: String,
    pub pix_fmt: String,
    pub width: u32,
    pub height: u32,
    pub r_frame_rate: String,
    pub nb_read_frames: u64,
}

/// What `ffprobe` says about `file`.
pub fn probe_with(ffprobe: &Path, file: &Path) -> Probe {
    let out = Command::new(ffprobe)
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-count_frames",
            "-show_entries",
        ])
        .arg("stream=codec_name,pix_fmt,width,height,r_frame_rate,nb_read_frames")
        .args(["-of", "json"])
        .arg(file)
        .output()
        .expect("ffprobe runs");
    assert!(
        out.status.success(),
        "ffprobe {} failed: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ffprobe json");
    let stream = &json["streams"][0];
    let text = |key: &str| stream[key].as_str().unwrap_or_default().to_string();
    Probe {
        codec_name: text("codec_name"),
        pix_fmt: text("pix_fmt"),
        width: stream["width"].as_u64().unwrap_or(0) as u32,
        height: stream["height"].as_u64().unwrap_or(0) as u32,
        r_frame_rate: text("r_frame_rate"),
        nb_read_frames: text("nb_read_frames").parse().unwrap_or(0),
    }
}

/// What ffprobe says about `file` (ffprobe required).
pub fn probe_stream(file: &Path) -> Probe {
    probe_with(&require_ffprobe(), file)
}

/// Every frame of `file` decoded by ffmpeg to packed RGB (with the colour matrix the stream
/// is tagged with, as a player does).
pub fn decode_rgb(file: &Path, width: u32, height: u32) -> Vec<Vec<u8>> {
    let out = Command::new(ffmpeg())
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(file)
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .expect("ffmpeg runs");
    assert!(
        out.status.success(),
        "decoding {} failed: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let frame_len = width as usize * height as usize * 3;
    assert_eq!(out.stdout.len() % frame_len, 0, "whole frames decoded");
    out.stdout
        .chunks_exact(frame_len)
        .map(<[u8]>::to_vec)
        .collect()
}

/// ffprobe's value of one entry (`args` select it) of `file`, as text.
fn probe_entry(file: &Path, args: &[&str]) -> String {
    let out = Command::new(require_ffprobe())
        .args(["-v", "error"])
        .args(args)
        .args(["-of", "default=noprint_wrappers=1:nokey=1"])
        .arg(file)
        .output()
        .expect("ffprobe runs");
    assert!(out.status.success(), "ffprobe {} failed", file.display());
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// ffprobe's `comment` tag of a file's container.
pub fn probe_comment(file: &Path) -> String {
    probe_entry(file, &["-show_entries", "format_tags=comment"])
}

/// ffprobe's duration of a file's container, in seconds.
pub fn probe_duration(file: &Path) -> f64 {
    let text = probe_entry(file, &["-show_entries", "format=duration"]);
    text.parse()
        .unwrap_or_else(|_| panic!("{}: duration {text:?}", file.display()))
}

/// The first sound stream of `file` decoded by ffmpeg (edit lists applied, as a player
/// plays it), mixed to mono f32 at `rate` Hz.
pub fn decode_sound(file: &Path, rate: u32) -> Vec<f32> {
    let out = Command::new(ffmpeg())
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(file)
        .args(["-map", "0:a:0", "-ac", "1", "-ar", &rate.to_string()])
        .args(["-f", "f32le", "-"])
        .output()
        .expect("ffmpeg runs");
    assert!(
        out.status.success(),
        "decoding the sound of {} failed: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// ffprobe's start time of stream `stream` ("v:0", "a:0") of `file`, in seconds.
pub fn probe_start(file: &Path, stream: &str) -> f64 {
    let text = probe_entry(
        file,
        &[
            "-select_streams",
            stream,
            "-show_entries",
            "stream=start_time",
        ],
    );
    text.parse()
        .unwrap_or_else(|_| panic!("{} {stream}: start time {text:?}", file.display()))
}
