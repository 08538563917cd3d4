//! GIF through ffmpeg: the frames stream into a lossless intermediate (FFV1 in Matroska) while
//! recording; finishing computes one palette for the whole walk from it (`palettegen`) and maps
//! every frame to it (`paletteuse`, ffmpeg's default error-diffusion dither), then adds the
//! recording's comment as a GIF comment extension (ffmpeg's GIF muxer writes none).
//!
//! Two passes over a file instead of ffmpeg's one-command `split` + `palettegen` +
//! `paletteuse` graph: that graph holds every frame in memory until the palette is known at the
//! end of the walk; this keeps memory flat however long the recording, and a cut-off
//! intermediate (ffmpeg killed mid-way) still makes a GIF of the frames it holds.
//!
//! Timing: GIF stores each frame's delay in hundredths of a second. ffmpeg rounds each frame's
//! time to that grid, so at 30 fps the delays run 3, 4, 3, ... and the whole plays in exactly
//! frames / fps seconds (to 1/100 s); every frame is kept. Players slow down delays under
//! 2/100 s (browsers show them at 1/10 s), so GIF is refused above [`MAX_GIF_FPS`].

use std::ffi::OsString;
use std::fs;
use std::path::Path;

/// The fastest GIF: frame delays of 2/100 s. Shorter ones are shown at 1/10 s by browsers.
pub const MAX_GIF_FPS: u32 = 50;

/// The encoding arguments while recording: lossless FFV1 (RGB, alpha dropped) in Matroska,
/// every frame a keyframe, so a file cut off mid-way decodes up to its last whole frame.
pub(super) fn intermediate_args() -> Vec<OsString> {
    ["-c:v", "ffv1", "-pix_fmt", "bgr0", "-f", "matroska"]
        .map(OsString::from)
        .to_vec()
}

/// The arguments of the palette pass: one 256-colour palette (one entry kept for
/// transparency, which the GIF encoder uses for pixels unchanged since the previous frame)
/// from the colours of every frame.
pub(super) fn palette_args(intermediate: &Path, palette: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["-i".into(), intermediate.into()];
    args.extend(
        [
            "-vf",
            "palettegen=stats_mode=full",
            "-frames:v",
            "1",
            "-update",
            "1",
            "-c:v",
            "png",
            "-f",
            "image2",
            "-y",
        ]
        .map(OsString::from),
    );
    args.push(palette.into());
    args
}

/// The arguments of the GIF pass: every frame of the intermediate mapped to the palette,
/// looping forever.
pub(super) fn gif_args(intermediate: &Path, palette: &Path, gif: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "-i".into(),
        intermediate.into(),
        "-i".into(),
        palette.into(),
    ];
    args.extend(
        [
            "-lavfi",
            "[0:v][1:v]paletteuse",
            "-loop",
            "0",
            "-f",
            "gif",
            "-y",
        ]
        .map(OsString::from),
    );
    args.push(gif.into());
    args
}

/// Adds `comment` to the GIF at `path` as a comment extension after the header, the global
/// colour table and any application extension (the looping one), where readers (ffprobe
/// among them) find it before the first frame.
pub(super) fn add_comment(path: &Path, comment: &str) -> Result<(), String> {
    let mut bytes = fs::read(path).map_err(|e| format!("reading back {}: {e}", path.display()))?;
    let at = comment_position(&bytes)
        .ok_or_else(|| format!("{} is not a GIF89a file ffmpeg would write", path.display()))?;
    bytes.splice(at..at, comment_extension(comment));
    fs::write(path, bytes).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Where the comment goes: after the logical screen descriptor, the global colour table and
/// the application extensions that follow it.
fn comment_position(bytes: &[u8]) -> Option<usize> {
    if !bytes.starts_with(b"GIF89a") || bytes.len() < 13 {
        return None;
    }
    let packed = bytes[10];
    let table = if packed & 0x80 != 0 {
        3 << ((packed & 7) + 1)
    } else {
        0
    };
    let mut pos = 13 + table;
    // Application extensions: 0x21 0xFF, then sub-blocks until a zero length.
    while bytes.get(pos..pos + 2) == Some(&[0x21, 0xFF]) {
        pos += 2;
        loop {
            let len = *bytes.get(pos)? as usize;
            pos += 1 + len;
            if len == 0 {
                break;
            }
        }
    }
    (pos <= bytes.len()).then_some(pos)
}

/// A GIF comment extension: 0x21 0xFE, the text in sub-blocks of at most 255 bytes, 0.
fn comment_extension(comment: &str) -> Vec<u8> {
    let mut block = vec![0x21, 0xFE];
    for chunk in comment.as_bytes().chunks(255) {
        block.push(chunk.len() as u8);
        block.extend_from_slice(chunk);
    }
    block.push(0);
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GIF89a header with a 2-entry global colour table and a NETSCAPE loop extension.
    fn header() -> Vec<u8> {
        let mut gif = b"GIF89a".to_vec();
        gif.extend([4, 0, 4, 0, 0x80, 0, 0]);
        gif.extend([0; 6]);
        gif.extend([0x21, 0xFF, 11]);
        gif.extend(b"NETSCAPE2.0");
        gif.extend([3, 1, 0, 0, 0]);
        gif
    }

    #[test]
    fn the_comment_goes_after_the_colour_table_and_the_loop_extension() {
        let gif = header();
        assert_eq!(comment_position(&gif), Some(gif.len()));
        assert_eq!(comment_position(b"GIF87a\0\0\0\0\0\0\0"), None);
        // Cut off inside the application extension.
        assert_eq!(comment_position(&gif[..gif.len() - 3]), None);
    }

    #[test]
    fn long_comments_are_split_into_sub_blocks() {
        let text = "x".repeat(300);
        let block = comment_extension(&text);
        assert_eq!(&block[..3], &[0x21, 0xFE, 255]);
        assert_eq!(block[3 + 255], 45);
        assert_eq!(block.len(), 2 + 1 + 255 + 1 + 45 + 1);
        assert_eq!(*block.last().unwrap(), 0);
    }
}
