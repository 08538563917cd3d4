//! MP4 files read back without ffmpeg: the box structure, the single H.264 track of the
//! built-in encoder's files, decoded with OpenH264, and fragments of a partial file.

use std::path::Path;

/// Top-level boxes of an MP4: (type, offset, length).
fn top_level_boxes(data: &[u8]) -> Vec<([u8; 4], usize, usize)> {
    let mut boxes = Vec::new();
    let mut pos = 0;
    while pos + 8 <= data.len() {
        let size32 = u32::from_be_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
        let kind: [u8; 4] = data[pos + 4..pos + 8].try_into().unwrap();
        let size = match size32 {
            1 => u64::from_be_bytes(data[pos + 8..pos + 16].try_into().unwrap()) as usize,
            0 => data.len() - pos,
            n => n,
        };
        assert!(
            size >= 8 && pos + size <= data.len(),
            "box {:?} overruns the file",
            kind
        );
        boxes.push((kind, pos, size));
        pos += size;
    }
    assert_eq!(pos, data.len(), "the file ends on a box boundary");
    boxes
}

/// Asserts the file is `+faststart`: its `moov` box comes before its `mdat`.
pub fn assert_moov_before_mdat(file: &Path) {
    let data = std::fs::read(file).expect("output readable");
    let kinds: Vec<[u8; 4]> = top_level_boxes(&data).iter().map(|b| b.0).collect();
    let moov = kinds.iter().position(|k| k == b"moov").expect("a moov box");
    let mdat = kinds
        .iter()
        .position(|k| k == b"mdat")
        .expect("an mdat box");
    assert!(
        moov < mdat,
        "+faststart: moov before mdat, got {:?}",
        kinds_text(&kinds)
    );
}

/// Box types as text.
fn kinds_text(kinds: &[[u8; 4]]) -> Vec<String> {
    kinds
        .iter()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect()
}

/// The body of the first box at `path` (container boxes only, plus `stsd` and `avc1`, whose
/// children follow fixed fields).
fn find_box<'a>(data: &'a [u8], path: &[&[u8; 4]]) -> Option<&'a [u8]> {
    let (first, rest) = path.split_first()?;
    let mut pos = 0;
    while pos + 8 <= data.len() {
        let size = u32::from_be_bytes(data[pos..pos + 4].try_into().ok()?) as usize;
        let size = if size == 1 {
            u64::from_be_bytes(data[pos + 8..pos + 16].try_into().ok()?) as usize
        } else {
            size
        };
        let header = if u32::from_be_bytes(data[pos..pos + 4].try_into().ok()?) == 1 {
            16
        } else {
            8
        };
        if size < header || pos + size > data.len() {
            return None;
        }
        if &data[pos + 4..pos + 8] == *first {
            let body = &data[pos + header..pos + size];
            if rest.is_empty() {
                return Some(body);
            }
            let children = match *first {
                b"stsd" => &body[8..],
                b"avc1" => &body[78..],
                _ => body,
            };
            return find_box(children, rest);
        }
        pos += size;
    }
    None
}

/// The big-endian `u32` at `at`.
fn u32_at(data: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(data[at..at + 4].try_into().unwrap())
}

/// A single-track H.264 MP4 read back: its size, parameter sets and samples.
pub struct Mp4Track {
    pub width: u32,
    pub height: u32,
    sps: Vec<u8>,
    pps: Vec<u8>,
    pub samples: Vec<Vec<u8>>,
}

/// The track of a single-track H.264 MP4, checking the table layout the built-in encoder
/// writes (one chunk, per-sample sizes, 4-byte NAL lengths, one SPS and PPS).
pub fn read_mp4_track(data: &[u8]) -> Mp4Track {
    let stbl: [&[u8; 4]; 5] = [b"moov", b"trak", b"mdia", b"minf", b"stbl"];
    let sub = |leaf: &[u8; 4]| {
        let mut path = stbl.to_vec();
        path.push(leaf);
        find_box(data, &path).unwrap_or_else(|| panic!("no {} box", String::from_utf8_lossy(leaf)))
    };
    let avc1 = find_box(
        data,
        &[
            b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd", b"avc1",
        ],
    )
    .expect("avc1");
    let width = u32::from(u16::from_be_bytes([avc1[24], avc1[25]]));
    let height = u32::from(u16::from_be_bytes([avc1[26], avc1[27]]));
    let avcc = find_box(
        data,
        &[
            b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd", b"avc1", b"avcC",
        ],
    )
    .expect("avcC");
    assert_eq!(avcc[4] & 3, 3, "4-byte NAL lengths");
    assert_eq!(avcc[5] & 0x1f, 1, "one SPS");
    let sps_len = usize::from(u16::from_be_bytes([avcc[6], avcc[7]]));
    let sps = avcc[8..8 + sps_len].to_vec();
    let at = 8 + sps_len;
    assert_eq!(avcc[at], 1, "one PPS");
    let pps_len = usize::from(u16::from_be_bytes([avcc[at + 1], avcc[at + 2]]));
    let pps = avcc[at + 3..at + 3 + pps_len].to_vec();

    let stsz = sub(b"stsz");
    assert_eq!(u32_at(stsz, 4), 0, "per-sample sizes");
    let count = u32_at(stsz, 8) as usize;
    let sizes: Vec<usize> = (0..count)
        .map(|i| u32_at(stsz, 12 + 4 * i) as usize)
        .collect();
    let stsc = sub(b"stsc");
    assert_eq!(u32_at(stsc, 4), 1, "one stsc entry");
    assert_eq!(u32_at(stsc, 12) as usize, count, "all samples in one chunk");
    let stco = sub(b"stco");
    assert_eq!(u32_at(stco, 4), 1, "one chunk");
    let mut offset = u32_at(stco, 8) as usize;
    let stts = sub(b"stts");
    assert_eq!(u32_at(stts, 8) as usize, count, "stts covers every sample");
    let samples = sizes
        .iter()
        .map(|&size| {
            let sample = data[offset..offset + size].to_vec();
            offset += size;
            sample
        })
        .collect();
    Mp4Track {
        width,
        height,
        sps,
        pps,
        samples,
    }
}

/// Decodes a track with OpenH264 into packed RGB, converting with BT.709 limited range (what
/// the stream is tagged with), chroma nearest-neighbour.
pub fn decode_track_openh264(track: &Mp4Track) -> Vec<Vec<u8>> {
    use openh264::formats::YUVSource;
    let mut decoder = openh264::decoder::Decoder::new().expect("decoder");
    let mut decoded = Vec::new();
    let to_rgb = |yuv: &dyn YUVSource| {
        let (w, h) = yuv.dimensions();
        let (sy, su, sv) = yuv.strides();
        let mut rgb = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                let luma = f64::from(yuv.y()[y * sy + x]) - 16.0;
                let cb = f64::from(yuv.u()[(y / 2) * su + x / 2]) - 128.0;
                let cr = f64::from(yuv.v()[(y / 2) * sv + x / 2]) - 128.0;
                let r = 1.164_383 * luma + 1.792_741 * cr;
                let g = 1.164_383 * luma - 0.213_249 * cb - 0.532_909 * cr;
                let b = 1.164_383 * luma + 2.112_402 * cb;
                for v in [r, g, b] {
                    rgb.push(v.round().clamp(0.0, 255.0) as u8);
                }
            }
        }
        rgb
    };
    for (i, sample) in track.samples.iter().enumerate() {
        let mut annex_b = Vec::new();
        if i == 0 {
            for set in [&track.sps, &track.pps] {
                annex_b.extend_from_slice(&[0, 0, 0, 1]);
                annex_b.extend_from_slice(set);
            }
        }
        let mut pos = 0;
        while pos + 4 <= sample.len() {
            let len = u32_at(sample, pos) as usize;
            annex_b.extend_from_slice(&[0, 0, 0, 1]);
            annex_b.extend_from_slice(&sample[pos + 4..pos + 4 + len]);
            pos += 4 + len;
        }
        assert_eq!(
            pos,
            sample.len(),
            "sample {i} is whole length-prefixed NAL units"
        );
        if let Some(yuv) = decoder.decode(&annex_b).expect("sample decodes") {
            decoded.push(to_rgb(&yuv));
        }
    }
    for yuv in decoder.flush_remaining().expect("flush") {
        decoded.push(to_rgb(&yuv));
    }
    decoded
}

/// Whether the fragmented partial file holds a complete fragment yet.
pub fn has_complete_fragment(path: &Path) -> bool {
    let Ok(data) = std::fs::read(path) else {
        return false;
    };
    let mut pos = 0;
    let mut after_moof = false;
    while pos + 8 <= data.len() {
        let size = u32_at(&data, pos) as usize;
        if size < 8 || pos + size > data.len() {
            return false;
        }
        match &data[pos + 4..pos + 8] {
            b"moof" => after_moof = true,
            b"mdat" if after_moof => return true,
            _ => {}
        }
        pos += size;
    }
    false
}
