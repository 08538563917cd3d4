//! Recording through the system ffmpeg, fed raw RGBA frames over a pipe: MP4 (libx264), WebM
//! (libvpx-vp9) and GIF.
//!
//! While frames stream in, ffmpeg writes the partial file ([`partial_path`]); finishing turns
//! it into the output under a second temporary name and renames that into place, so an
//! existing output is only ever replaced by a whole file:
//!
//! * MP4: a fragmented MP4 (a fragment about every second, each flushed as it is done) so a
//!   killed ffmpeg or a full disk leaves every completed fragment playable; finishing cuts it
//!   back to whole fragments and remuxes it (stream copy) with `+faststart`.
//! * WebM: VP9 in Matroska clusters, flushed as they are written; finishing remuxes it (stream
//!   copy), which also gives a file cut off mid-way its index back ([`webm`](super::webm)).
//! * GIF: lossless FFV1 frames in Matroska; finishing makes the GIF from them with one palette
//!   for the whole walk, in two more ffmpeg passes ([`gif`](super::gif)), so ffmpeg never
//!   holds the walk in memory.
//!
//! A sound track ([`RecordOptions::audio`]) joins an MP4 or a WebM in its finishing remux
//! ([`audio`](super::audio)), cut to the video's length: frames stream in as they are made,
//! and the sound is there only in the finished file. Should that fail, the video is kept
//! without it, and the error says so.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;

use super::audio::AudioPlan;
use super::fragments::trim_to_complete_fragments;
use super::{audio, gif, webm, Encoder, FrameSink, RecordError, RecordOptions};
use crate::frame::RgbaImage;

/// The environment variable naming the ffmpeg program to use.
const FFMPEG_ENV: &str = "DREAMWALK_FFMPEG";

/// Lines of ffmpeg's stderr kept for error messages.
const STDERR_TAIL_LINES: usize = 20;

/// The file a recording to `output` is written to until it is finalized: `output` with
/// `.part` appended, in the same folder (so the final rename is atomic).
pub fn partial_path(output: &Path) -> PathBuf {
    let mut name = output
        .file_name()
        .map(OsStr::to_os_string)
        .unwrap_or_default();
    name.push(".part");
    output.with_file_name(name)
}

/// Where the finished file is written before it is renamed to `output`.
pub(super) fn remux_path(output: &Path) -> PathBuf {
    let mut name = output
        .file_name()
        .map(OsStr::to_os_string)
        .unwrap_or_default();
    name.push(".remux.part");
    output.with_file_name(name)
}

/// The ffmpeg to run: `opts.ffmpeg`, else `$DREAMWALK_FFMPEG`, else `ffmpeg` on `PATH`;
/// `None` when there is none (the built-in encoder is used then). A program named explicitly
/// that cannot be found is an error rather than a silent fallback.
pub fn locate(opts: &RecordOptions) -> Result<Option<PathBuf>, RecordError> {
    if let Some(program) = &opts.ffmpeg {
        return resolve(program.as_os_str(), "RecordOptions::ffmpeg").map(Some);
    }
    if let Some(program) = std::env::var_os(FFMPEG_ENV).filter(|p| !p.is_empty()) {
        return resolve(&program, FFMPEG_ENV).map(Some);
    }
    Ok(search_path(OsStr::new("ffmpeg")))
}

/// [`RecordError::Ffmpeg`] unless `program -encoders` lists `encoder` (a build of ffmpeg
/// without libvpx would otherwise fail at the first frame).
pub(super) fn require_encoder(program: &Path, encoder: &str) -> Result<(), RecordError> {
    let error = |reason: String| RecordError::Ffmpeg {
        program: program.to_path_buf(),
        origin: "run",
        reason,
    };
    let out = Command::new(program)
        .args(["-nostdin", "-hide_banner", "-encoders"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| error(e.to_string()))?;
    // Lines like " V....D libvpx-vp9           libvpx VP9 (codec vp9)".
    let listed = String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|line| line.split_whitespace().nth(1) == Some(encoder));
    if listed {
        Ok(())
    } else {
        Err(error(format!(
            "this ffmpeg has no {encoder} encoder (`ffmpeg -encoders`); Debian's and most \
             distributions' ffmpeg have it"
        )))
    }
}

fn resolve(program: &OsStr, origin: &'static str) -> Result<PathBuf, RecordError> {
    let error = |reason: &str| RecordError::Ffmpeg {
        program: PathBuf::from(program),
        origin,
        reason: reason.to_string(),
    };
    let path = Path::new(program);
    if path.components().count() == 1 {
        return search_path(program).ok_or_else(|| error("not found on PATH"));
    }
    if is_executable(path) {
        Ok(path.to_path_buf())
    } else {
        Err(error("not an executable file"))
    }
}

fn search_path(program: &OsStr) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A running ffmpeg encoder.
struct Encoding {
    child: Child,
    stdin: ChildStdin,
    stderr: JoinHandle<String>,
}

/// What ffmpeg makes of the frames: how they are encoded while they stream in, and what
/// finishing makes of the partial file (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Target {
    /// H.264 by libx264 in a fragmented MP4.
    Mp4 {
        /// x264 preset.
        preset: String,
        /// x264 constant rate factor.
        crf: u8,
    },
    /// VP9 by libvpx-vp9 in WebM.
    Webm(webm::Vp9),
    /// A GIF with one palette, made from a lossless intermediate.
    Gif,
}

impl Target {
    /// The target `opts` ask for in `format`'s container (MP4, WebM or GIF).
    pub(super) fn for_format(format: super::OutputFormat, opts: &RecordOptions) -> Option<Self> {
        match format {
            super::OutputFormat::Mp4 => Some(Self::Mp4 {
                preset: opts.preset.clone(),
                crf: opts.crf,
            }),
            super::OutputFormat::Webm => Some(Self::Webm(webm::Vp9::from_options(opts))),
            super::OutputFormat::Gif => Some(Self::Gif),
            _ => None,
        }
    }
}

/// Records through ffmpeg; see the module docs.
pub(super) struct FfmpegSink {
    output: PathBuf,
    part: PathBuf,
    program: PathBuf,
    fps: u32,
    target: Target,
    /// The `comment` metadata tag.
    comment: Option<String>,
    /// The sound track muxed in when finishing, and its codec ("AAC", "Opus").
    audio: Option<(PathBuf, &'static str)>,
    /// Where in the sound track the video starts, in seconds: a segment's first frame's time
    /// ([`RecordOptions::segment`]), else 0.
    audio_start_seconds: f64,
    encoding: Option<Encoding>,
    frames_sent: u64,
    /// A failure already reported by `write_frame`, so `finish` only salvages.
    failed: bool,
}

impl FfmpegSink {
    /// Creates the partial file (proving the folder writable) and, when the size is known,
    /// starts ffmpeg right away so a broken one fails the start.
    pub(super) fn create(
        output: &Path,
        program: PathBuf,
        target: Target,
        opts: &RecordOptions,
        audio: &AudioPlan,
    ) -> Result<Self, RecordError> {
        // A GIF holds no sound; MP4 and WebM take it when finishing.
        let audio = match (audio, &target) {
            (AudioPlan::Muxed { path, codec }, Target::Mp4 { .. } | Target::Webm(_)) => {
                Some((path.clone(), *codec))
            }
            _ => None,
        };
        let part = partial_path(output);
        File::create(&part).map_err(|error| RecordError::Unwritable {
            path: output.to_path_buf(),
            error,
        })?;
        let mut sink = Self {
            output: output.to_path_buf(),
            part,
            program,
            fps: opts.fps,
            target,
            comment: opts.comment.clone(),
            audio,
            audio_start_seconds: opts
                .segment
                .as_ref()
                .map_or(0.0, |numbers| *numbers.start() as f64 / f64::from(opts.fps)),
            encoding: None,
            frames_sent: 0,
            failed: false,
        };
        if let Some(size) = opts.size {
            let size = sink.frame_size(size);
            if let Err(e) = sink.spawn(size) {
                // Not recording after all: leave no partial file behind.
                let _ = fs::remove_file(&sink.part);
                return Err(e);
            }
        }
        Ok(sink)
    }

    fn spawn(&mut self, (width, height): (u32, u32)) -> Result<(), RecordError> {
        let mut command = Command::new(&self.program);
        command
            .args(self.encode_args(width, height))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group: a Ctrl-C in the terminal goes to dreamwalk, which
            // finishes the recording, and not to ffmpeg, which would stop mid-stream.
            .process_group(0);
        tracing::debug!(?command, "starting ffmpeg");
        let mut child = command.spawn().map_err(|e| RecordError::Ffmpeg {
            program: self.program.clone(),
            origin: "run",
            reason: e.to_string(),
        })?;
        let (Some(stdin), Some(stderr)) = (child.stdin.take(), child.stderr.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(RecordError::failed(
                &self.output,
                "ffmpeg started without pipes",
            ));
        };
        // Drained continuously: a full stderr pipe would stall ffmpeg, and its last lines are
        // the explanation when it fails.
        let stderr = std::thread::Builder::new()
            .name("record-ffmpeg-stderr".to_string())
            .spawn(move || stderr_tail(stderr))
            .map_err(|e| {
                RecordError::failed(&self.output, format!("cannot start a thread: {e}"))
            })?;
        self.encoding = Some(Encoding {
            child,
            stdin,
            stderr,
        });
        Ok(())
    }

    fn encode_args(&self, width: u32, height: u32) -> Vec<OsString> {
        let mut args: Vec<OsString> = [
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgba",
            "-s",
        ]
        .map(OsString::from)
        .to_vec();
        args.push(format!("{width}x{height}").into());
        args.push("-framerate".into());
        args.push(self.fps.to_string().into());
        args.extend(["-i", "pipe:0", "-an"].map(OsString::from));
        match &self.target {
            Target::Mp4 { preset, crf } => args.extend(mp4_args(preset, *crf)),
            Target::Webm(vp9) => args.extend(vp9.encode_args()),
            Target::Gif => args.extend(gif::intermediate_args()),
        }
        // GIF's comment is added to the finished file (ffmpeg's GIF muxer writes none).
        if let (Some(comment), false) = (&self.comment, self.target == Target::Gif) {
            args.push("-metadata".into());
            args.push(format!("comment={comment}").into());
        }
        // Each packet written as soon as it is muxed: what a killed ffmpeg leaves is as long
        // as it can be.
        args.extend(["-flush_packets", "1", "-y"].map(OsString::from));
        args.push(self.part.clone().into());
        args
    }

    /// Closes ffmpeg's input and waits for it; the error says how it ended when that was
    /// not a success.
    fn stop(&mut self) -> Result<(), String> {
        let Some(Encoding {
            mut child,
            stdin,
            stderr,
        }) = self.encoding.take()
        else {
            return Ok(());
        };
        drop(stdin);
        let status = child.wait();
        let tail = stderr.join().unwrap_or_default();
        match status {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(format!("{}{}", describe_exit(status), format_tail(&tail))),
            Err(e) => Err(format!(
                "waiting for ffmpeg failed: {e}{}",
                format_tail(&tail)
            )),
        }
    }

    /// Makes the output from the partial file, as the target does.
    fn finalize(&mut self) -> Result<String, RecordError> {
        match &self.target {
            Target::Mp4 { .. } => self.finalize_mp4(),
            Target::Webm(_) => self.finalize_remuxed("webm", "WebM"),
            Target::Gif => self.finalize_gif(),
        }
    }

    /// Remuxes the (trimmed) fragmented partial file into the output with `+faststart`; if
    /// that fails, keeps the fragmented file under the output name.
    fn finalize_mp4(&mut self) -> Result<String, RecordError> {
        let kept = match trim_to_complete_fragments(&self.part) {
            Ok(kept) => kept,
            Err(e) => {
                return Err(RecordError::failed(
                    &self.output,
                    format!("cannot read back {}: {e}", self.part.display()),
                ))
            }
        };
        if kept.frames == 0 {
            let _ = fs::remove_file(&self.part);
            if self.frames_sent == 0 {
                return Ok("no frames (no file was written)".to_string());
            }
            return Err(RecordError::failed(
                &self.output,
                "ffmpeg had not completed any fragment, so no file was written",
            ));
        }
        // Remuxed beside the output and renamed when whole: an existing output is replaced
        // only by a complete file.
        let remuxed = remux_path(&self.output);
        let seconds = kept.frames as f64 / f64::from(self.fps);
        let mp4 = ["-movflags", "+faststart", "-f", "mp4"];
        let remux = |with_audio: bool| {
            let args = self.remux_args(with_audio, seconds, &mp4, &remuxed);
            let out = Command::new(&self.program)
                .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
                .args(args)
                .stdin(Stdio::null())
                .process_group(0)
                .output();
            match out {
                Ok(out) if out.status.success() => fs::rename(&remuxed, &self.output)
                    .map_err(|e| format!("renaming {} failed: {e}", remuxed.display())),
                Ok(out) => Err(format!(
                    "{}{}",
                    describe_exit(out.status),
                    format_tail(&String::from_utf8_lossy(&out.stderr))
                )),
                Err(e) => Err(e.to_string()),
            }
        };
        let remux_error = match remux(self.audio.is_some()) {
            Ok(()) => None,
            Err(audio_error) if self.audio.is_some() => match remux(false) {
                // The video is whole: only the sound is missing.
                Ok(()) => {
                    let _ = fs::remove_file(&self.part);
                    return Err(self.sound_failed(&audio_error, kept.frames, "MP4"));
                }
                Err(e) => Some(e),
            },
            Err(e) => Some(e),
        };
        let Some(remux_error) = remux_error else {
            let _ = fs::remove_file(&self.part);
            let sound = self.sound_note();
            return Ok(format!(
                "{} frames{sound}, finalized MP4 (faststart)",
                kept.frames
            ));
        };
        // A half-written output (disk full) is worth less than the fragmented file.
        let _ = fs::remove_file(&remuxed);
        match fs::rename(&self.part, &self.output) {
            Ok(()) => Err(RecordError::failed(
                &self.output,
                format!(
                    "remuxing to +faststart failed ({remux_error}); kept the fragmented MP4 \
                     instead: {} frames, playable",
                    kept.frames
                ),
            )),
            Err(e) => Err(RecordError::failed(
                &self.output,
                format!(
                    "remuxing to +faststart failed ({remux_error}) and renaming {} failed ({e}); \
                     the fragmented MP4 there holds {} frames",
                    self.part.display(),
                    kept.frames
                ),
            )),
        }
    }

    /// Remuxes the partial file (stream copy) into the output: a whole file gets its index
    /// written, one cut off mid-way is read up to its last whole frame. If the remux fails,
    /// the partial file, playable as it is, is kept under the output name.
    fn finalize_remuxed(&mut self, muxer: &str, name: &str) -> Result<String, RecordError> {
        if self.frames_sent == 0 {
            let _ = fs::remove_file(&self.part);
            return Ok("no frames (no file was written)".to_string());
        }
        let remuxed = remux_path(&self.output);
        let seconds = self.frames_sent as f64 / f64::from(self.fps);
        let format = ["-f", muxer, "-y"];
        let remux = |with_audio: bool| {
            let args = self.remux_args(with_audio, seconds, &format, &remuxed);
            run_pass(&self.program, &args)
        };
        let (outcome, sound_error) = match remux(self.audio.is_some()) {
            // The video alone, then, and the error says what happened to the sound.
            Err(e) if self.audio.is_some() => (remux(false), Some(e)),
            outcome => (outcome, None),
        };
        let remux_error = match outcome {
            Ok(Some(0)) => {
                let _ = fs::remove_file(&remuxed);
                let _ = fs::remove_file(&self.part);
                return Err(RecordError::failed(
                    &self.output,
                    "ffmpeg had not written a whole frame, so no file was written",
                ));
            }
            Ok(frames) => match fs::rename(&remuxed, &self.output) {
                Ok(()) => {
                    let _ = fs::remove_file(&self.part);
                    let frames = frames.unwrap_or(self.frames_sent);
                    if let Some(e) = sound_error {
                        return Err(self.sound_failed(&e, frames, name));
                    }
                    let sound = self.sound_note();
                    return Ok(format!("{frames} frames{sound}, finalized {name}"));
                }
                Err(e) => format!("renaming {} failed: {e}", remuxed.display()),
            },
            Err(e) => e,
        };
        let _ = fs::remove_file(&remuxed);
        match fs::rename(&self.part, &self.output) {
            Ok(()) => Err(RecordError::failed(
                &self.output,
                format!(
                    "remuxing failed ({remux_error}); kept the {name} as ffmpeg wrote it \
                     (playable, without an index)"
                ),
            )),
            Err(e) => Err(RecordError::failed(
                &self.output,
                format!(
                    "remuxing failed ({remux_error}) and renaming {} failed ({e}); the {name} \
                     is there",
                    self.part.display()
                ),
            )),
        }
    }

    /// The finishing remux's arguments after the common flags: the partial file's streams
    /// copied into `out` (`format` names the muxer), with the sound track muxed in, cut to
    /// `seconds`, when `with_audio` and there is one.
    fn remux_args(
        &self,
        with_audio: bool,
        seconds: f64,
        format: &[&str],
        out: &Path,
    ) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["-i".into(), self.part.clone().into()];
        match self.audio.as_ref().filter(|_| with_audio) {
            Some((path, codec)) => {
                args.extend(audio::input_args(path, self.audio_start_seconds, seconds));
                args.extend(audio::mux_args(codec));
            }
            None => args.extend(["-map", "0", "-c", "copy"].map(OsString::from)),
        }
        args.extend(format.iter().map(OsString::from));
        args.push(out.as_os_str().to_os_string());
        args
    }

    /// ", with AAC sound from song.wav" when a sound track was muxed in.
    fn sound_note(&self) -> String {
        match &self.audio {
            Some((path, codec)) => format!(", with {codec} sound from {}", path.display()),
            None => String::new(),
        }
    }

    /// The error for a video kept whole without the sound track that could not be added.
    fn sound_failed(&self, reason: &str, frames: u64, name: &str) -> RecordError {
        let sound = self
            .audio
            .as_ref()
            .map_or_else(String::new, |(path, _)| path.display().to_string());
        RecordError::failed(
            &self.output,
            format!(
                "adding the sound track {sound} failed ({reason}); kept the {name} without                  sound: {frames} frames, complete"
            ),
        )
    }

    /// Makes the GIF from the lossless intermediate (see [`gif`](super::gif)); if that fails,
    /// the intermediate is kept under its temporary name, and the error says where.
    fn finalize_gif(&mut self) -> Result<String, RecordError> {
        if self.frames_sent == 0 {
            let _ = fs::remove_file(&self.part);
            return Ok("no frames (no file was written)".to_string());
        }
        let made = remux_path(&self.output);
        let mut palette = made.clone().into_os_string();
        palette.push(".palette.png");
        let palette = PathBuf::from(palette);
        let passes = run_pass(&self.program, &gif::palette_args(&self.part, &palette))
            .and_then(|_| run_pass(&self.program, &gif::gif_args(&self.part, &palette, &made)))
            .and_then(|frames| match &self.comment {
                Some(comment) => gif::add_comment(&made, comment).map(|()| frames),
                None => Ok(frames),
            });
        let _ = fs::remove_file(&palette);
        let made_error = match passes {
            Ok(Some(0)) => "the intermediate held no whole frame".to_string(),
            Ok(frames) => match fs::rename(&made, &self.output) {
                Ok(()) => {
                    let _ = fs::remove_file(&self.part);
                    let frames = frames.unwrap_or(self.frames_sent);
                    return Ok(format!("{frames} frames, GIF with one palette"));
                }
                Err(e) => format!("renaming {} failed: {e}", made.display()),
            },
            Err(e) => e,
        };
        let _ = fs::remove_file(&made);
        Err(RecordError::failed(
            &self.output,
            format!(
                "making the GIF failed ({made_error}); the frames are kept losslessly in {} \
                 (FFV1 in Matroska)",
                self.part.display()
            ),
        ))
    }
}

/// libx264's arguments: BT.709 yuv420p, no B-frames, fragments of about a second.
fn mp4_args(preset: &str, crf: u8) -> Vec<OsString> {
    // Convert with the BT.709 matrix and say so in the stream: untagged yuv420p is read
    // as BT.601 by some players and BT.709 by others, which shifts the colours.
    let mut args: Vec<OsString> = [
        "-vf",
        "scale=out_color_matrix=bt709:out_range=tv",
        "-c:v",
        "libx264",
        "-preset",
    ]
    .map(OsString::from)
    .to_vec();
    args.push(preset.into());
    args.push("-crf".into());
    args.push(crf.to_string().into());
    args.extend(
        [
            // No B-frames: packets are written in display order, so a fragment cut off by
            // a killed ffmpeg or a full disk never leaves a later frame without an earlier
            // one (costs about 13% in size at the same quality).
            "-bf",
            "0",
            "-pix_fmt",
            "yuv420p",
            "-colorspace",
            "bt709",
            "-color_primaries",
            "bt709",
            "-color_trc",
            "bt709",
            "-color_range",
            "tv",
            // Fragments of about a second, each flushed to disk when complete: what a
            // killed ffmpeg or a full disk leaves stays playable up to the last one.
            "-movflags",
            "+empty_moov+default_base_moof",
            "-frag_duration",
            "1000000",
            "-f",
            "mp4",
        ]
        .map(OsString::from),
    );
    args
}

/// Runs one ffmpeg pass over files (`args` after the common flags) and returns how many
/// frames it wrote (ffmpeg's last `-progress` report), or why it failed.
fn run_pass(program: &Path, args: &[OsString]) -> Result<Option<u64>, String> {
    let out = Command::new(program)
        .args(["-nostdin", "-hide_banner", "-loglevel", "error"])
        .args(["-nostats", "-progress", "pipe:1"])
        .args(args)
        .stdin(Stdio::null())
        .process_group(0)
        .output()
        .map_err(|e| format!("running {} failed: {e}", program.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{}{}",
            describe_exit(out.status),
            format_tail(&String::from_utf8_lossy(&out.stderr))
        ));
    }
    let frames = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .filter_map(|line| line.strip_prefix("frame="))
        .find_map(|n| n.trim().parse().ok());
    Ok(frames)
}

impl FrameSink for FfmpegSink {
    fn encoder(&self) -> Encoder {
        let program = self.program.clone();
        match &self.target {
            Target::Mp4 { preset, crf } => Encoder::Ffmpeg {
                program,
                preset: preset.clone(),
                crf: *crf,
            },
            Target::Webm(vp9) => Encoder::Vp9 {
                program,
                crf: vp9.crf,
                speed: vp9.speed(),
            },
            Target::Gif => Encoder::Gif { program },
        }
    }

    fn frame_size(&self, (width, height): (u32, u32)) -> (u32, u32) {
        match self.target {
            // x264's yuv420p wants even sizes (one chroma sample per 2x2 pixels); VP9 and
            // GIF take any.
            Target::Mp4 { .. } => (width.next_multiple_of(2), height.next_multiple_of(2)),
            Target::Webm(_) | Target::Gif => (width, height),
        }
    }

    fn write_frame(&mut self, frame: &RgbaImage) -> Result<(), RecordError> {
        if self.encoding.is_none() {
            self.spawn((frame.width, frame.height))?;
        }
        let Some(encoding) = &mut self.encoding else {
            return Err(RecordError::failed(&self.output, "ffmpeg is not running"));
        };
        if let Err(write_error) = encoding.stdin.write_all(&frame.pixels) {
            self.failed = true;
            // A broken pipe means ffmpeg is gone: how it ended is the real reason.
            let ended = match self.stop() {
                Ok(()) => "ffmpeg exited".to_string(),
                Err(e) => e,
            };
            return Err(RecordError::failed(
                &self.output,
                format!(
                    "sending frame {} to ffmpeg failed ({write_error}): {ended}",
                    self.frames_sent
                ),
            ));
        }
        self.frames_sent += 1;
        Ok(())
    }

    fn finish(&mut self) -> Result<String, RecordError> {
        let stopped = self.stop();
        let finalized = self.finalize();
        match (stopped, finalized) {
            (Ok(()), finalized) => finalized,
            (Err(ffmpeg_error), Ok(held)) => Err(RecordError::failed(
                &self.output,
                format!("{ffmpeg_error}; kept {held}"),
            )),
            (Err(ffmpeg_error), Err(finalize_error)) => Err(RecordError::failed(
                &self.output,
                format!("{ffmpeg_error}; {}", super::inner_reason(&finalize_error)),
            )),
        }
    }
}

impl Drop for FfmpegSink {
    fn drop(&mut self) {
        // Only reached without `finish` if the encoder thread panicked: do not leave ffmpeg
        // waiting on its input.
        if let Some(mut encoding) = self.encoding.take() {
            let _ = encoding.child.kill();
            let _ = encoding.child.wait();
        }
    }
}

/// How a process ended, in words.
fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("ffmpeg exited with status {code}"),
        (None, Some(signal)) => format!("ffmpeg was killed by signal {signal}"),
        (None, None) => format!("ffmpeg ended: {status}"),
    }
}

/// ffmpeg's last lines as one line of an error message.
fn format_tail(tail: &str) -> String {
    let lines: Vec<&str> = tail
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    let tail = lines.join(" | ");
    if tail.is_empty() {
        String::new()
    } else {
        format!("; ffmpeg said: {tail}")
    }
}

/// Reads ffmpeg's stderr to the end, keeping its last lines.
fn stderr_tail(stderr: impl Read) -> String {
    let mut lines = VecDeque::with_capacity(STDERR_TAIL_LINES);
    for line in BufReader::new(stderr).split(b'\n') {
        let Ok(line) = line else { break };
        let line = String::from_utf8_lossy(&line).trim_end().to_string();
        if line.is_empty() {
            continue;
        }
        tracing::debug!(target: "dreamwalk::record::ffmpeg", "{line}");
        if lines.len() == STDERR_TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }
    Vec::from(lines).join(" | ")
}
