//! YUV4MPEG2, 4:4:4, full range: lossless but for the colour conversion, and needs nothing.
//! The conversion is documented in the [module docs](super#y4m).

use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{Encoder, FrameSink, RecordError, RecordOptions};
use crate::frame::RgbaImage;

/// Writes a `.y4m` file; see the module docs. The frames go to the partial file beside it
/// ([`partial_path`](super::partial_path)), renamed to the output when finished, so an
/// existing file of that name is replaced only by a complete one.
pub(super) struct Y4mSink {
    path: PathBuf,
    part: PathBuf,
    file: File,
    fps: u32,
    /// ` XCOMMENT=...` for the header, or empty.
    comment_field: String,
    /// Bytes of complete header and frames: where the file is cut back to after a failure.
    complete_len: u64,
    frames: u64,
    /// The current frame, `FRAME\n` and its three planes, reused.
    buffer: Vec<u8>,
}

impl Y4mSink {
    /// Creates the partial file; the header is written with the first frame, which gives the
    /// size.
    pub(super) fn create(path: &Path, opts: &RecordOptions) -> Result<Self, RecordError> {
        let part = super::partial_path(path);
        let file = File::create(&part).map_err(|error| RecordError::Unwritable {
            path: path.to_path_buf(),
            error,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            part,
            file,
            fps: opts.fps,
            comment_field: opts
                .comment
                .as_deref()
                .map(comment_field)
                .unwrap_or_default(),
            complete_len: 0,
            frames: 0,
            buffer: Vec::new(),
        })
    }
}

impl FrameSink for Y4mSink {
    fn encoder(&self) -> Encoder {
        Encoder::Y4m
    }

    fn write_frame(&mut self, frame: &RgbaImage) -> Result<(), RecordError> {
        self.buffer.clear();
        if self.frames == 0 {
            let mut header = format!(
                "YUV4MPEG2 W{} H{} F{}:1 Ip A1:1 C444 XCOLORRANGE=FULL",
                frame.width, frame.height, self.fps
            );
            push_within(&mut header, &self.comment_field, MAX_HEADER_LEN - 1);
            header.push('\n');
            self.buffer.extend_from_slice(header.as_bytes());
        }
        self.buffer.extend_from_slice(b"FRAME\n");
        push_ycbcr_planes(frame, &mut self.buffer);
        if let Err(e) = self.file.write_all(&self.buffer) {
            // Leave only whole frames: players stop at a short one, or reject the file.
            let _ = self.file.set_len(self.complete_len);
            let _ = self.file.seek(SeekFrom::Start(self.complete_len));
            return Err(RecordError::failed(
                &self.path,
                format!("writing frame {} failed: {e}", self.frames),
            ));
        }
        self.complete_len += self.buffer.len() as u64;
        self.frames += 1;
        Ok(())
    }

    fn finish(&mut self) -> Result<String, RecordError> {
        if self.frames == 0 {
            let _ = fs::remove_file(&self.part);
            return Ok("no frames (no file was written)".to_string());
        }
        // Whole frames only, even after a failed write.
        let _ = self.file.set_len(self.complete_len);
        self.file
            .sync_all()
            .map_err(|e| RecordError::failed(&self.path, format!("flushing failed: {e}")))?;
        fs::rename(&self.part, &self.path).map_err(|e| {
            RecordError::failed(
                &self.path,
                format!(
                    "renaming {} failed ({e}); it holds {} complete frames",
                    self.part.display(),
                    self.frames
                ),
            )
        })?;
        Ok(format!("{} frames, complete", self.frames))
    }
}

/// ffmpeg refuses a Y4M header line longer than this (`MAX_YUV4_HEADER`), newline included,
/// so the comment is cut to fit.
const MAX_HEADER_LEN: usize = 96;

/// Appends as much of `extra` to `line` as keeps it within `limit` bytes, whole characters.
fn push_within(line: &mut String, extra: &str, limit: usize) {
    for c in extra.chars() {
        if line.len() + c.len_utf8() > limit {
            break;
        }
        line.push(c);
    }
}

/// A header field holding `comment`: header fields are separated by spaces and end at the
/// newline, so those become `_`.
fn comment_field(comment: &str) -> String {
    let text: String = comment
        .chars()
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect();
    format!(" XCOMMENT={text}")
}

/// Appends the Y, Cb and Cr planes of `frame`, full-range BT.601 (JFIF) in the exact integer
/// arithmetic of the module docs.
fn push_ycbcr_planes(frame: &RgbaImage, out: &mut Vec<u8>) {
    let pixels = || {
        frame
            .pixels
            .chunks_exact(4)
            .map(|p| (i32::from(p[0]), i32::from(p[1]), i32::from(p[2])))
    };
    out.extend(pixels().map(|(r, g, b)| ((19595 * r + 38470 * g + 7471 * b + 32768) >> 16) as u8));
    out.extend(
        pixels().map(|(r, g, b)| {
            ((-11059 * r - 21709 * g + 32768 * b + (128 << 16) + 32767) >> 16) as u8
        }),
    );
    out.extend(
        pixels().map(|(r, g, b)| {
            ((32768 * r - 27439 * g - 5329 * b + (128 << 16) + 32767) >> 16) as u8
        }),
    );
}
