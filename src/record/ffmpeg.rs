//! MP4 through the system ffmpeg (libx264), fed raw RGBA frames over a pipe.
//!
//! ffmpeg writes a fragmented MP4 to the partial file (a fragment about every second, each
//! flushed as it is done) so a killed ffmpeg or a full disk leaves every completed fragment
//! playable; finishing remuxes it (stream copy) into the output with `+faststart`.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;

use super::{Encoder, FrameSink, RecordError, RecordOptions};
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

/// Where the finished MP4 is remuxed to before it is renamed to `output`.
fn remux_path(output: &Path) -> PathBuf {
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
pub(super) fn locate(opts: &RecordOptions) -> Result<Option<PathBuf>, RecordError> {
    if let Some(program) = &opts.ffmpeg {
        return resolve(program.as_os_str(), "RecordOptions::ffmpeg").map(Some);
    }
    if let Some(program) = std::env::var_os(FFMPEG_ENV).filter(|p| !p.is_empty()) {
        return resolve(&program, FFMPEG_ENV).map(Some);
    }
    Ok(search_path(OsStr::new("ffmpeg")))
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

/// Records an MP4 through ffmpeg; see the module docs.
pub(super) struct FfmpegSink {
    output: PathBuf,
    part: PathBuf,
    program: PathBuf,
    fps: u32,
    crf: u8,
    preset: String,
    /// The `comment` metadata tag.
    comment: Option<String>,
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
        opts: &RecordOptions,
    ) -> Result<Self, RecordError> {
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
            crf: opts.crf,
            preset: opts.preset.clone(),
            comment: opts.comment.clone(),
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
        // Convert with the BT.709 matrix and say so in the stream: untagged yuv420p is read
        // as BT.601 by some players and BT.709 by others, which shifts the colours.
        args.extend(
            [
                "-vf",
                "scale=out_color_matrix=bt709:out_range=tv",
                "-c:v",
                "libx264",
                "-preset",
            ]
            .map(OsString::from),
        );
        args.push(self.preset.clone().into());
        args.push("-crf".into());
        args.push(self.crf.to_string().into());
        if let Some(comment) = &self.comment {
            args.push("-metadata".into());
            args.push(format!("comment={comment}").into());
        }
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
                "-flush_packets",
                "1",
                "-f",
                "mp4",
                "-y",
            ]
            .map(OsString::from),
        );
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

    /// Remuxes the (trimmed) fragmented partial file into the output with `+faststart`; if
    /// that fails, keeps the fragmented file under the output name.
    fn finalize(&mut self) -> Result<String, RecordError> {
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
        let remux = Command::new(&self.program)
            .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i"])
            .arg(&self.part)
            .args([
                "-map",
                "0",
                "-c",
                "copy",
                "-movflags",
                "+faststart",
                "-f",
                "mp4",
            ])
            .arg(&remuxed)
            .stdin(Stdio::null())
            .process_group(0)
            .output();
        let remux_error = match remux {
            Ok(out) if out.status.success() => fs::rename(&remuxed, &self.output)
                .err()
                .map(|e| format!("renaming {} failed: {e}", remuxed.display())),
            Ok(out) => Some(format!(
                "{}{}",
                describe_exit(out.status),
                format_tail(&String::from_utf8_lossy(&out.stderr))
            )),
            Err(e) => Some(e.to_string()),
        };
        let Some(remux_error) = remux_error else {
            let _ = fs::remove_file(&self.part);
            return Ok(format!("{} frames, finalized MP4 (faststart)", kept.frames));
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
}

impl FrameSink for FfmpegSink {
    fn encoder(&self) -> Encoder {
        Encoder::Ffmpeg {
            program: self.program.clone(),
            preset: self.preset.clone(),
            crf: self.crf,
        }
    }

    fn frame_size(&self, (width, height): (u32, u32)) -> (u32, u32) {
        // yuv420p has one chroma sample per 2x2 pixels.
        (width.next_multiple_of(2), height.next_multiple_of(2))
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

/// What a fragmented MP4 holds once cut back to its complete fragments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fragments {
    fragments: u64,
    frames: u64,
}

/// Cuts a fragmented MP4 back to its last complete `moof`+`mdat` pair (a killed or starved
/// ffmpeg leaves a partial one, whose truncated last sample would be copied as a broken
/// frame), and counts the frames kept.
fn trim_to_complete_fragments(path: &Path) -> std::io::Result<Fragments> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let len = file.metadata()?.len();
    let mut kept = Fragments {
        fragments: 0,
        frames: 0,
    };
    let mut complete_end = 0u64;
    let mut pending_moof_frames = None;
    let mut pos = 0u64;
    while let Some((kind, header_len, box_len)) = read_box_header(&mut file, pos, len)? {
        match &kind {
            b"moof" => {
                let mut body = vec![0u8; (box_len - header_len) as usize];
                file.read_exact(&mut body)?;
                pending_moof_frames = Some(trun_sample_count(&body));
            }
            b"mdat" => {
                if let Some(frames) = pending_moof_frames.take() {
                    kept.fragments += 1;
                    kept.frames += frames;
                }
                complete_end = pos + box_len;
            }
            _ if pending_moof_frames.is_none() => complete_end = pos + box_len,
            _ => {}
        }
        pos += box_len;
    }
    if complete_end < len {
        file.set_len(complete_end)?;
    }
    Ok(kept)
}

/// The box at `pos`: type, header length and total length; `None` at the end of the file or
/// when the box is cut short.
fn read_box_header(
    file: &mut File,
    pos: u64,
    file_len: u64,
) -> std::io::Result<Option<([u8; 4], u64, u64)>> {
    if pos + 8 > file_len {
        return Ok(None);
    }
    file.seek(SeekFrom::Start(pos))?;
    let mut header = [0u8; 16];
    file.read_exact(&mut header[..8])?;
    let size32 = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let kind = [header[4], header[5], header[6], header[7]];
    let (header_len, box_len) = match size32 {
        // A box running to the end of the file: ffmpeg never writes one while fragmenting.
        0 => return Ok(None),
        1 => {
            if pos + 16 > file_len {
                return Ok(None);
            }
            file.read_exact(&mut header[8..])?;
            let mut large = [0u8; 8];
            large.copy_from_slice(&header[8..]);
            (16, u64::from_be_bytes(large))
        }
        n => (8, u64::from(n)),
    };
    if box_len < header_len || pos + box_len > file_len {
        return Ok(None);
    }
    Ok(Some((kind, header_len, box_len)))
}

/// The number of samples in the `trun` boxes of a `moof` body.
fn trun_sample_count(moof_body: &[u8]) -> u64 {
    let mut frames = 0;
    for (kind, traf) in child_boxes(moof_body) {
        if &kind != b"traf" {
            continue;
        }
        for (kind, trun) in child_boxes(traf) {
            // trun: version and flags, then the sample count.
            if &kind == b"trun" && trun.len() >= 8 {
                frames += u64::from(u32::from_be_bytes([trun[4], trun[5], trun[6], trun[7]]));
            }
        }
    }
    frames
}

/// The (type, body) of each box in `data`, stopping at the first malformed one.
fn child_boxes(mut data: &[u8]) -> impl Iterator<Item = ([u8; 4], &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 8 {
            return None;
        }
        let size = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if size < 8 || size > data.len() {
            return None;
        }
        let kind = [data[4], data[5], data[6], data[7]];
        let body = &data[8..size];
        data = &data[size..];
        Some((kind, body))
    })
}
