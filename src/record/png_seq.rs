//! Numbered RGB8 PNG files, lossless, for editors that take image sequences.

use std::fs;
use std::path::{Path, PathBuf};

use super::{Encoder, FrameSink, RecordError, RecordOptions};
use crate::frame::RgbaImage;

/// Writes `frame_000000.png`, ... into a folder, or `name_000000.png`, ... beside `name.png`.
/// Numbers count the recording's frames from 0, or for one segment of a walk
/// ([`RecordOptions::segment`]) are the walk's frame indices, so the segments of a walk can
/// share a folder. Each file is written under a temporary name and renamed when whole. With
/// [`RecordOptions::overwrite`], frames of an older sequence numbered past the new one's last
/// are deleted when it finishes with at least one frame (a run that wrote none leaves the old
/// sequence as it was); a segment deletes nothing (the frames past it are other segments').
pub(super) struct PngSequenceSink {
    dir: PathBuf,
    prefix: String,
    /// The first file's number: 0, or a segment's first frame index.
    first_number: u64,
    frames: u64,
    /// A segment, which leaves other frames in the folder alone.
    segment: bool,
    overwrite: bool,
    /// Stored in each file as a `Comment` text chunk.
    comment: Option<String>,
}

impl PngSequenceSink {
    /// Creates the folder if needed and checks that files can be written in it.
    pub(super) fn create(path: &Path, opts: &RecordOptions) -> Result<Self, RecordError> {
        let (dir, prefix) = layout(path);
        let unwritable = |error| RecordError::Unwritable {
            path: path.to_path_buf(),
            error,
        };
        let probe_dir = probe_dir(&dir);
        fs::create_dir_all(probe_dir).map_err(unwritable)?;
        // Fail at the start, not at the first frame, when the folder is read-only.
        let probe = probe_dir.join(".dreamwalk-write-probe");
        fs::write(&probe, b"").map_err(unwritable)?;
        let _ = fs::remove_file(&probe);
        Ok(Self {
            dir,
            prefix,
            first_number: opts.segment.as_ref().map_or(0, |numbers| *numbers.start()),
            frames: 0,
            segment: opts.segment.is_some(),
            overwrite: opts.overwrite,
            comment: opts.comment.clone(),
        })
    }

    /// Deletes `{prefix}NNNNNN.png` files numbered `self.frames` or more: what is left of an
    /// older, longer sequence. Returns how many.
    fn remove_stale_frames(&self) -> usize {
        let Ok(entries) = fs::read_dir(probe_dir(&self.dir)) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(number) = frame_number(&name.to_string_lossy(), &self.prefix) else {
                continue;
            };
            if number >= self.frames && fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    fn frame_path(&self, number: u64) -> PathBuf {
        self.dir.join(format!("{}{number:06}.png", self.prefix))
    }
}

impl FrameSink for PngSequenceSink {
    fn encoder(&self) -> Encoder {
        Encoder::Png
    }

    fn write_frame(&mut self, frame: &RgbaImage) -> Result<(), RecordError> {
        let path = self.frame_path(self.first_number + self.frames);
        write_png(&path, frame, self.comment.as_deref())
            .map_err(|e| RecordError::failed(&path, e.to_string()))?;
        self.frames += 1;
        Ok(())
    }

    fn finish(&mut self) -> Result<String, RecordError> {
        let removed = if self.overwrite && self.frames > 0 && !self.segment {
            self.remove_stale_frames()
        } else {
            0
        };
        let stale = match removed {
            0 => String::new(),
            n => format!(" ({n} stale frames of an older sequence removed)"),
        };
        Ok(match self.frames {
            0 => "no frames".to_string(),
            n => format!(
                "{n} PNG files, {} to {}{stale}",
                self.frame_path(self.first_number).display(),
                self.frame_path(self.first_number + n - 1).display()
            ),
        })
    }
}

/// The folder and file-name prefix of a PNG sequence written to `path`.
fn layout(path: &Path) -> (PathBuf, String) {
    let is_png_name = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if is_png_name && !path.is_dir() {
        let stem = path.file_stem().unwrap_or_default().to_string_lossy();
        let dir = path.parent().unwrap_or(Path::new(""));
        (dir.to_path_buf(), format!("{stem}_"))
    } else {
        (path.to_path_buf(), "frame_".to_string())
    }
}

fn probe_dir(dir: &Path) -> &Path {
    if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }
}

/// The number of a sequence's frame file `{prefix}NNNNNN.png`, or `None` for other names.
fn frame_number(name: &str, prefix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(".png")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Whether recording a PNG sequence to `path` would write where something already is: a
/// folder that is not empty, or (for `name.png`) `name_NNNNNN.png` files beside it.
pub(super) fn holds_frames(path: &Path) -> bool {
    let (dir, prefix) = layout(path);
    let Ok(mut entries) = fs::read_dir(probe_dir(&dir)) else {
        return false;
    };
    if prefix == "frame_" && dir == path {
        return entries.next().is_some();
    }
    entries
        .flatten()
        .any(|entry| frame_number(&entry.file_name().to_string_lossy(), &prefix).is_some())
}

/// Whether a segment of a PNG sequence written to `path` would replace one of its own frames
/// (`numbers`): files of other segments may be there.
pub(super) fn holds_any_of(path: &Path, numbers: &std::ops::RangeInclusive<u64>) -> bool {
    let (dir, prefix) = layout(path);
    let Ok(entries) = fs::read_dir(probe_dir(&dir)) else {
        return false;
    };
    entries.flatten().any(|entry| {
        frame_number(&entry.file_name().to_string_lossy(), &prefix)
            .is_some_and(|number| numbers.contains(&number))
    })
}

/// Why [`write_png`] failed.
#[derive(Debug, thiserror::Error)]
pub enum PngError {
    /// The PNG encoder refused the image or the comment.
    #[error("encoding failed: {0}")]
    Encode(#[from] png::EncodingError),
    /// The file could not be written (nothing is left behind).
    #[error("writing failed: {0}")]
    Write(#[from] std::io::Error),
}

/// Writes `image` to `path` as an RGB8 PNG (alpha dropped), with `comment` as an iTXt
/// `Comment` chunk: the crate's one PNG writer, for recorded frames and the viewer's
/// screenshots. The file is written under a temporary name beside `path`
/// ([`partial_path`](super::partial_path)) and renamed when whole, so a PNG that exists under
/// its name decodes, even when the process is killed mid-way; one that could not be written
/// whole is removed.
pub fn write_png(path: &Path, image: &RgbaImage, comment: Option<&str>) -> Result<(), PngError> {
    let encoded = encode_png(image, comment)?;
    let part = super::partial_path(path);
    if let Err(e) = fs::write(&part, encoded).and_then(|()| fs::rename(&part, path)) {
        // A partial PNG would look like a frame but not decode.
        let _ = fs::remove_file(&part);
        return Err(e.into());
    }
    Ok(())
}

fn encode_png(frame: &RgbaImage, comment: Option<&str>) -> Result<Vec<u8>, png::EncodingError> {
    let mut encoded = Vec::new();
    let mut encoder = png::Encoder::new(&mut encoded, frame.width, frame.height);
    if let Some(comment) = comment {
        // iTXt, not tEXt: the comment may hold any Unicode (prompts).
        encoder.add_itxt_chunk("Comment".to_string(), comment.to_string())?;
    }
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    // Speed over size: the encoder thread's pace is the walk's while recording.
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&frame.to_rgb())?;
    writer.finish()?;
    Ok(encoded)
}
