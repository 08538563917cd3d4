//! `join`, the use case that makes one video of a walk's segments (`render --frames` on many
//! machines): ffmpeg's concat demuxer with stream copy, so no picture is encoded again (the
//! sound is, seam-exact: see `join_sound`). Every
//! segment is read first with ffprobe and must match the first (codec, size, pixel format,
//! frame rate, and sound or none, with the same codec and rate), or the join is refused
//! naming the odd one; the output is written under a temporary name and renamed when whole.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::record::{locate_ffmpeg, partial_path, sound_mux_args, RecordOptions};

/// One join: the segments in order, and where the whole goes.
#[derive(Clone, Debug, PartialEq)]
pub struct JoinJob {
    /// The segments, in walk order (`.mp4` or `.webm` files of one render's settings).
    pub segments: Vec<PathBuf>,
    /// The joined video: `.mp4` or `.webm`, as the segments' codec allows.
    pub out: PathBuf,
    /// Replace an existing `out` (only once the new one is whole).
    pub overwrite: bool,
    /// The ffmpeg to run, before `DREAMWALK_FFMPEG` and `PATH` are looked at; ffprobe is
    /// the one beside it, else the first on `PATH`.
    pub ffmpeg: Option<PathBuf>,
}

/// What a segment holds, as ffprobe reads it: what must be equal for a stream copy.
#[derive(Clone, Debug, PartialEq)]
pub struct SegmentFormat {
    /// "h264", "vp9".
    pub codec: String,
    pub width: u32,
    pub height: u32,
    /// "yuv420p".
    pub pix_fmt: String,
    /// "30/1".
    pub frame_rate: String,
    /// The sound's codec and sample rate, when the segment has sound.
    pub audio: Option<(String, u32)>,
}

impl fmt::Display for SegmentFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}x{} {} at {} fps",
            self.codec, self.width, self.height, self.pix_fmt, self.frame_rate
        )?;
        match &self.audio {
            Some((codec, rate)) => write!(f, ", {codec} sound at {rate} Hz"),
            None => f.write_str(", no sound"),
        }
    }
}

/// What a finished join made.
#[derive(Clone, Debug, PartialEq)]
pub struct JoinSummary {
    pub out: PathBuf,
    pub segments: usize,
    /// Video frames in the joined file (the segments' sum).
    pub frames: u64,
    /// The joined file's length.
    pub seconds: f64,
    pub format: SegmentFormat,
}

impl fmt::Display for JoinSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "joined {} segments into {}: {} frames, {:.2} s, {} (video stream copy{})",
            self.segments,
            self.out.display(),
            self.frames,
            self.seconds,
            self.format,
            match self.format.audio {
                Some(_) => "; sound decoded, joined sample-exact and encoded once",
                None => "",
            }
        )
    }
}

/// Why a join was refused or failed. Every refusal comes before anything is written.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("join needs at least one segment")]
    NoSegments,
    #[error("segment {} does not exist", .0.display())]
    Missing(PathBuf),
    #[error("segment {} is given twice, or is the output", .0.display())]
    Repeated(PathBuf),
    #[error(
        "{} already exists and was left as it is: choose another name, or replace it with \
         --overwrite",
        .0.display()
    )]
    Exists(PathBuf),
    #[error("{}: the joined video must be .mp4 or .webm", .0.display())]
    Extension(PathBuf),
    #[error(
        "join needs ffmpeg and ffprobe (Debian package `ffmpeg`): {0}; without them, segments \
         can be joined by any tool that concatenates videos"
    )]
    NeedsFfmpeg(String),
    #[error("segment {}: ffprobe cannot read it: {reason}", path.display())]
    Unreadable { path: PathBuf, reason: String },
    #[error(
        "segment {} is {got}, but {} is {expected}: segments joined without re-encoding must \
         come from one render's settings",
        path.display(),
        first.display()
    )]
    Mismatch {
        path: PathBuf,
        got: Box<SegmentFormat>,
        first: PathBuf,
        expected: Box<SegmentFormat>,
    },
    #[error("joining into {}: ffmpeg failed: {reason}; nothing was written there", out.display())]
    Ffmpeg { out: PathBuf, reason: String },
}

/// Joins `job.segments` into `job.out` (see the module docs).
pub fn join(job: &JoinJob) -> Result<JoinSummary, JoinError> {
    let Some(first) = job.segments.first() else {
        return Err(JoinError::NoSegments);
    };
    let muxer = match extension(&job.out).as_deref() {
        Some("mp4") => "mp4",
        Some("webm") => "webm",
        _ => return Err(JoinError::Extension(job.out.clone())),
    };
    for (i, segment) in job.segments.iter().enumerate() {
        if !segment.is_file() {
            return Err(JoinError::Missing(segment.clone()));
        }
        let same = |other: &PathBuf| same_file(segment, other);
        if job.segments[..i].iter().any(same) || same(&job.out) {
            return Err(JoinError::Repeated(segment.clone()));
        }
    }
    if !job.overwrite && job.out.symlink_metadata().is_ok() {
        return Err(JoinError::Exists(job.out.clone()));
    }
    let (ffmpeg, ffprobe) = tools(job)?;
    let first_probe = probe(&ffprobe, first)?;
    let expected = first_probe.format.clone();
    let mut lengths = vec![first_probe.video_seconds()];
    for segment in &job.segments[1..] {
        let probed = probe(&ffprobe, segment)?;
        lengths.push(probed.video_seconds());
        let got = probed.format;
        if got != expected {
            return Err(JoinError::Mismatch {
                path: segment.clone(),
                got: Box::new(got),
                first: first.clone(),
                expected: Box::new(expected),
            });
        }
    }
    let failed = |reason: String| JoinError::Ffmpeg {
        out: job.out.clone(),
        reason,
    };
    let list = concat_list(&job.segments, &lengths).map_err(|e| failed(e.to_string()))?;
    let list_path = list_path(&job.out);
    std::fs::write(&list_path, list)
        .map_err(|e| failed(format!("{}: {e}", list_path.display())))?;
    let part = partial_path(&job.out);
    let outcome = match &expected.audio {
        Some((codec, rate)) => {
            let lengths: Option<Vec<f64>> = lengths.iter().copied().collect();
            let lengths = lengths.ok_or_else(|| {
                failed("a segment's video length is unknown, so its sound cannot be cut".into())
            })?;
            super::join_sound::decode_segments(&ffmpeg, &job.segments, &lengths, *rate, &job.out)
                .and_then(|sound| {
                    run_concat(
                        &ffmpeg,
                        &list_path,
                        Some((&sound.list, codec)),
                        muxer,
                        &part,
                    )
                })
        }
        None => run_concat(&ffmpeg, &list_path, None, muxer, &part),
    };
    let _ = std::fs::remove_file(&list_path);
    if let Err(reason) = outcome.and_then(|()| {
        std::fs::rename(&part, &job.out).map_err(|e| format!("renaming {}: {e}", part.display()))
    }) {
        let _ = std::fs::remove_file(&part);
        return Err(failed(reason));
    }
    let joined = probe(&ffprobe, &job.out)?;
    Ok(JoinSummary {
        out: job.out.clone(),
        segments: job.segments.len(),
        frames: joined.frames,
        seconds: joined.seconds,
        format: joined.format,
    })
}

fn extension(path: &Path) -> Option<String> {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// ffmpeg as the recorder finds it, and ffprobe beside it (else on `PATH`).
fn tools(job: &JoinJob) -> Result<(PathBuf, PathBuf), JoinError> {
    let options = RecordOptions {
        ffmpeg: job.ffmpeg.clone(),
        ..RecordOptions::default()
    };
    let ffmpeg = locate_ffmpeg(&options)
        .map_err(|e| JoinError::NeedsFfmpeg(e.to_string()))?
        .ok_or_else(|| JoinError::NeedsFfmpeg("no ffmpeg on PATH".to_string()))?;
    let beside = ffmpeg
        .parent()
        .map(|dir| dir.join("ffprobe"))
        .filter(|p| p.is_file());
    let on_path = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("ffprobe"))
                .find(|p| p.is_file())
        })
    };
    let ffprobe = beside.or_else(on_path).ok_or_else(|| {
        JoinError::NeedsFfmpeg(format!("no ffprobe beside {} or on PATH", ffmpeg.display()))
    })?;
    Ok((ffmpeg, ffprobe))
}

/// A segment (or the joined file) as ffprobe reads it.
struct Probed {
    format: SegmentFormat,
    /// Video frames, from the container's index or counted packets (0 when neither is known).
    frames: u64,
    seconds: f64,
}

impl Probed {
    /// The video's exact length, its frames at its frame rate, when both are known.
    fn video_seconds(&self) -> Option<f64> {
        let (num, den) = self.format.frame_rate.split_once('/')?;
        let (num, den) = (num.parse::<f64>().ok()?, den.parse::<f64>().ok()?);
        (self.frames > 0 && num > 0.0 && den > 0.0).then(|| self.frames as f64 * den / num)
    }
}

#[derive(serde::Deserialize)]
struct ProbeJson {
    #[serde(default)]
    streams: Vec<StreamJson>,
    format: Option<FormatJson>,
}

#[derive(serde::Deserialize)]
struct StreamJson {
    codec_type: Option<String>,
    codec_name: Option<String>,
    width: Option<u32>,
    height: Option<u32>,
    pix_fmt: Option<String>,
    r_frame_rate: Option<String>,
    sample_rate: Option<String>,
    nb_frames: Option<String>,
    /// Counted by `-count_packets` (one a frame): WebM's index has no frame count.
    nb_read_packets: Option<String>,
}

#[derive(serde::Deserialize)]
struct FormatJson {
    duration: Option<String>,
}

fn probe(ffprobe: &Path, path: &Path) -> Result<Probed, JoinError> {
    let unreadable = |reason: String| JoinError::Unreadable {
        path: path.to_path_buf(),
        reason,
    };
    let out = Command::new(ffprobe)
        .args(["-v", "error", "-count_packets", "-show_entries"])
        .arg(
            "stream=codec_type,codec_name,width,height,pix_fmt,r_frame_rate,sample_rate,\
             nb_frames,nb_read_packets:format=duration",
        )
        .args(["-of", "json"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| unreadable(format!("running {}: {e}", ffprobe.display())))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(unreadable(stderr.trim().to_string()));
    }
    let json: ProbeJson =
        serde_json::from_slice(&out.stdout).map_err(|e| unreadable(e.to_string()))?;
    let kind = |kind: &str| {
        json.streams
            .iter()
            .find(|s| s.codec_type.as_deref() == Some(kind))
    };
    let video = kind("video").ok_or_else(|| unreadable("it has no video".to_string()))?;
    let text = |value: &Option<String>| value.clone().unwrap_or_default();
    let audio = kind("audio").map(|a| {
        let rate = a.sample_rate.as_deref().and_then(|r| r.parse().ok());
        (text(&a.codec_name), rate.unwrap_or(0))
    });
    let count = |n: &Option<String>| n.as_deref().and_then(|n| n.parse::<u64>().ok());
    let frames = count(&video.nb_frames)
        .or_else(|| count(&video.nb_read_packets))
        .unwrap_or(0);
    Ok(Probed {
        format: SegmentFormat {
            codec: text(&video.codec_name),
            width: video.width.unwrap_or(0),
            height: video.height.unwrap_or(0),
            pix_fmt: text(&video.pix_fmt),
            frame_rate: text(&video.r_frame_rate),
            audio,
        },
        frames,
        seconds: json
            .format
            .and_then(|f| f.duration)
            .and_then(|d| d.parse().ok())
            .unwrap_or(0.0),
    })
}

/// The concat demuxer's list: one `file '...'` line per segment, absolute, quotes escaped,
/// each with its video's exact length where it is known (`lengths`). Without it the demuxer
/// starts the next segment at the container's duration, which MP4 rounds to milliseconds
/// (and sound may pass): a seam would get a longer frame, and the joined file an odd rate.
fn concat_list(segments: &[PathBuf], lengths: &[Option<f64>]) -> std::io::Result<String> {
    let mut list = String::from("ffconcat version 1.0\n");
    for (segment, length) in segments.iter().zip(lengths) {
        let path = segment.canonicalize()?;
        let quoted = path.to_string_lossy().replace('\'', "'\\''");
        // The file's time 0 is its first picture's: without it the demuxer starts each file
        // at its earliest packet, the sound's priming, and the pictures come ~23 ms late.
        list.push_str(&format!("file '{quoted}'\ninpoint 0\n"));
        if let Some(seconds) = length {
            list.push_str(&format!("duration {seconds:.6}\noutpoint {seconds:.6}\n"));
        }
    }
    Ok(list)
}

/// Where the concat list is written while ffmpeg runs: beside the output.
fn list_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".concat.txt");
    out.with_file_name(name)
}

/// Joins the videos `list` names (stream copy) into `part`, with the decoded sound `sound`'s
/// list names encoded again as its codec ("aac", "opus"), if any.
fn run_concat(
    ffmpeg: &Path,
    list: &Path,
    sound: Option<(&Path, &str)>,
    muxer: &str,
    part: &Path,
) -> Result<(), String> {
    let mut command = Command::new(ffmpeg);
    command
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args(["-f", "concat", "-safe", "0", "-i"])
        .arg(list);
    match sound {
        Some((sound, codec)) => {
            command
                .args(["-f", "concat", "-safe", "0", "-i"])
                .arg(sound);
            command.args(sound_mux_args(match codec {
                "opus" => "Opus",
                _ => "AAC",
            }));
        }
        None => {
            command.args(["-map", "0", "-c", "copy"]);
        }
    }
    if muxer == "mp4" {
        command.args(["-movflags", "+faststart"]);
    }
    let out = command
        .args(["-f", muxer])
        .arg(part)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", ffmpeg.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(10).collect();
        Err(tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
    }
}
