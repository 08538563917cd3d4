//! Fragmented MP4 as ffmpeg writes it while recording: cut back to its last complete
//! fragment (what a killed ffmpeg or a full disk leaves ends in a partial one), counting the
//! frames kept.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// What a fragmented MP4 holds once cut back to its complete fragments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Fragments {
    pub fragments: u64,
    pub frames: u64,
}

/// Cuts a fragmented MP4 back to its last complete `moof`+`mdat` pair (a killed or starved
/// ffmpeg leaves a partial one, whose truncated last sample would be copied as a broken
/// frame), and counts the frames kept.
pub(super) fn trim_to_complete_fragments(path: &Path) -> std::io::Result<Fragments> {
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
