//! The record stage: every frame pushed lands in the file, in order, in a file players open;
//! back-pressure instead of loss; failures that keep a playable file.
//!
//! Tests that use ffmpeg/ffprobe fail (not skip) without them; the built-in encoder's test
//! runs everywhere (it checks the file with ffprobe only when there is one).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use dreamwalk::frame::RgbaImage;
use dreamwalk::record::{
    partial_path, Encoder, FrameSink, OutputFormat, RecordError, RecordOptions, Recorder,
};

// ---------------------------------------------------------------------------------------
// Frames and measures

/// A smooth synthetic frame: two drifting sine gradients and a soft moving disc (video-like
/// content; noise would test the codec's worst case instead of our plumbing). It moves fast
/// enough that neighbouring frames are far apart (see `neighbouring_frames_differ`).
fn smooth_frame(index: u64, width: u32, height: u32) -> RgbaImage {
    let t = index as f32 / 6.0;
    let (w, h) = (width as f32, height as f32);
    let (cx, cy) = (
        w * (0.5 + 0.3 * (t * 1.3).sin()),
        h * (0.5 + 0.3 * (t * 0.9).cos()),
    );
    let sigma = 0.18 * w.min(h);
    let mut pixels = Vec::with_capacity(width as usize * height as usize * 4);
    for y in 0..height {
        for x in 0..width {
            let (xf, yf) = (x as f32, y as f32);
            let tau = std::f32::consts::TAU;
            let r = 128.0 + 100.0 * (tau * (xf / w + 0.25 * t)).sin();
            let g = 128.0 + 90.0 * (tau * (0.7 * yf / h - 0.15 * t)).sin();
            let d2 = (xf - cx).powi(2) + (yf - cy).powi(2);
            let b = 40.0 + 190.0 * (-d2 / (2.0 * sigma * sigma)).exp();
            pixels.extend_from_slice(&[r as u8, g as u8, b as u8, 255]);
        }
    }
    RgbaImage::from_pixels(width, height, pixels).expect("size matches")
}

fn frames(count: u64, width: u32, height: u32) -> Vec<Arc<RgbaImage>> {
    (0..count)
        .map(|i| Arc::new(smooth_frame(i, width, height)))
        .collect()
}

/// PSNR in dB over R, G and B of an RGBA frame against packed RGB bytes.
fn psnr(frame: &RgbaImage, rgb: &[u8]) -> f64 {
    assert_eq!(rgb.len(), frame.pixels.len() / 4 * 3);
    let mut squared = 0.0f64;
    for (p, q) in frame.pixels.chunks_exact(4).zip(rgb.chunks_exact(3)) {
        for c in 0..3 {
            let d = f64::from(p[c]) - f64::from(q[c]);
            squared += d * d;
        }
    }
    let mse = squared / rgb.len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

fn record(
    path: &Path,
    opts: RecordOptions,
    frames: &[Arc<RgbaImage>],
) -> dreamwalk::record::RecordSummary {
    let recorder = Recorder::start(path, opts).expect("recording starts");
    for (i, frame) in frames.iter().enumerate() {
        recorder
            .push(i as u64, Arc::clone(frame))
            .expect("frame is accepted");
    }
    recorder.finish().expect("recording finishes")
}

// ---------------------------------------------------------------------------------------
// ffmpeg / ffprobe

/// The ffmpeg the recorder will find: `$DREAMWALK_FFMPEG` or `PATH`.
fn ffmpeg() -> PathBuf {
    if let Some(program) = std::env::var_os("DREAMWALK_FFMPEG").filter(|p| !p.is_empty()) {
        return PathBuf::from(program);
    }
    which("ffmpeg").expect("this test needs ffmpeg (Debian package `ffmpeg`) on PATH")
}

fn ffprobe() -> Option<PathBuf> {
    let beside_ffmpeg = which("ffmpeg")
        .and_then(|f| f.parent().map(|d| d.join("ffprobe")))
        .filter(|p| p.is_file());
    beside_ffmpeg.or_else(|| which("ffprobe"))
}

fn require_ffprobe() -> PathBuf {
    ffprobe().expect("this test needs ffprobe (Debian package `ffmpeg`) on PATH")
}

fn which(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// What ffprobe says about the first video stream, decoding every frame to count them.
#[derive(Debug)]
struct Probe {
    codec_name: String,
    pix_fmt: String,
    width: u32,
    height: u32,
    r_frame_rate: String,
    nb_read_frames: u64,
}

fn probe_with(ffprobe: &Path, file: &Path) -> Probe {
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

fn probe_stream(file: &Path) -> Probe {
    probe_with(&require_ffprobe(), file)
}

/// Every frame of `file` decoded by ffmpeg to packed RGB (with the colour matrix the stream
/// is tagged with, as a player does).
fn decode_rgb(file: &Path, width: u32, height: u32) -> Vec<Vec<u8>> {
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

// ---------------------------------------------------------------------------------------
// MP4 boxes, read back without ffmpeg

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

fn assert_moov_before_mdat(file: &Path) {
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

fn u32_at(data: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(data[at..at + 4].try_into().unwrap())
}

/// A single-track H.264 MP4 read back: its size, parameter sets and samples.
struct Mp4Track {
    width: u32,
    height: u32,
    sps: Vec<u8>,
    pps: Vec<u8>,
    samples: Vec<Vec<u8>>,
}

fn read_mp4_track(data: &[u8]) -> Mp4Track {
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
fn decode_track_openh264(track: &Mp4Track) -> Vec<Vec<u8>> {
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

/// The PSNR bounds below tell frames apart only if neighbouring frames differ by much more.
#[test]
fn neighbouring_frames_differ() {
    for i in 0..60 {
        let (a, b) = (smooth_frame(i, 160, 96), smooth_frame(i + 1, 160, 96));
        let db = psnr(&a, &b.to_rgb());
        assert!(db < 30.0, "frames {i} and {}: {db:.2} dB apart", i + 1);
    }
}

// ---------------------------------------------------------------------------------------
// MP4

#[test]
fn mp4_via_ffmpeg_is_h264_yuv420p_faststart_and_matches_every_frame() {
    let _ = ffmpeg();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("walk.mp4");
    let (width, height, count, fps) = (160, 96, 48, 24);
    let input = frames(count, width, height);
    let opts = RecordOptions {
        fps,
        // The smallest queue: every push waits for the encoder, and still nothing is lost.
        queue_capacity: 1,
        ..RecordOptions::default()
    };
    let started = Instant::now();
    let summary = record(&out, opts, &input);
    eprintln!("{summary} (wall {:?})", started.elapsed());
    assert!(
        matches!(summary.encoder, Encoder::Ffmpeg { crf: 18, .. }),
        "{:?}",
        summary.encoder
    );
    assert_eq!(
        (summary.frames, summary.width, summary.height),
        (count, width, height)
    );
    assert!(!partial_path(&out).exists(), "the partial file is removed");

    let probe = probe_stream(&out);
    assert_eq!(probe.codec_name, "h264");
    assert_eq!(probe.pix_fmt, "yuv420p");
    assert_eq!((probe.width, probe.height), (width, height));
    assert_eq!(probe.r_frame_rate, format!("{fps}/1"));
    assert_eq!(probe.nb_read_frames, count);
    assert_moov_before_mdat(&out);

    let decoded = decode_rgb(&out, width, height);
    assert_eq!(decoded.len() as u64, count);
    // crf 18 is "visually lossless": on smooth content every frame is well above 35 dB, and a
    // frame out of order or lost would fall far below (neighbouring frames differ a lot more).
    let worst = input
        .iter()
        .zip(&decoded)
        .map(|(frame, rgb)| psnr(frame, rgb))
        .fold(f64::INFINITY, f64::min);
    eprintln!("ffmpeg crf 18: worst frame PSNR {worst:.2} dB");
    assert!(worst >= 35.0, "worst frame PSNR {worst:.2} dB < 35 dB");
}

#[test]
fn mp4_record_size_differs_from_frame_size() {
    let _ = ffmpeg();
    let dir = tempfile::tempdir().unwrap();
    let input = frames(24, 160, 96);

    // Downscaled to an asked-for size.
    let out = dir.path().join("small.mp4");
    let opts = RecordOptions {
        size: Some((120, 72)),
        ..RecordOptions::default()
    };
    let summary = record(&out, opts, &input);
    assert_eq!((summary.width, summary.height), (120, 72));
    let probe = probe_stream(&out);
    assert_eq!(
        (probe.width, probe.height, probe.nb_read_frames),
        (120, 72, 24)
    );
    // The content survives the resize: compared with the test's own rendering at 120x72 (the
    // frames are smooth, so filters differ little), far above what a garbled image gives.
    let decoded = decode_rgb(&out, 120, 72);
    for (i, rgb) in decoded.iter().enumerate() {
        let reference = smooth_frame(i as u64, 120, 72);
        let db = psnr(&reference, rgb);
        assert!(
            db >= 25.0,
            "frame {i}: {db:.2} dB against the frame rendered at 120x72"
        );
    }

    // Odd sizes are padded by one column and row for yuv420p.
    let out = dir.path().join("odd.mp4");
    let odd = frames(12, 75, 47);
    let summary = record(&out, RecordOptions::default(), &odd);
    assert_eq!((summary.width, summary.height), (76, 48));
    let probe = probe_stream(&out);
    assert_eq!(
        (probe.width, probe.height, probe.nb_read_frames),
        (76, 48, 12)
    );
}

#[test]
fn mp4_builtin_encoder_when_forced() {
    // Runs with or without ffmpeg: the file is read back with the test's own box parser and
    // OpenH264's decoder; ffprobe checks it too where there is one.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("builtin.mp4");
    let (width, height, count, fps) = (96, 64, 30, 30);
    let input = frames(count, width, height);
    let opts = RecordOptions {
        fps,
        force_builtin_encoder: true,
        ..RecordOptions::default()
    };
    let started = Instant::now();
    let summary = record(&out, opts, &input);
    eprintln!("{summary} (wall {:?})", started.elapsed());
    assert_eq!(summary.encoder, Encoder::OpenH264 { qp: 18 });
    assert_eq!(summary.frames, count);
    assert!(!partial_path(&out).exists(), "the partial file is removed");

    assert_moov_before_mdat(&out);
    let data = std::fs::read(&out).unwrap();
    let track = read_mp4_track(&data);
    assert_eq!((track.width, track.height), (width, height));
    assert_eq!(track.samples.len() as u64, count);
    let decoded = decode_track_openh264(&track);
    assert_eq!(
        decoded.len() as u64,
        count,
        "every sample decodes to a frame"
    );
    let worst = input
        .iter()
        .zip(&decoded)
        .map(|(frame, rgb)| psnr(frame, rgb))
        .fold(f64::INFINITY, f64::min);
    eprintln!("built-in qp 18: worst frame PSNR {worst:.2} dB");
    // A fixed quantizer of 18 with 4:2:0 chroma; the test's decoder upsamples chroma by
    // nearest neighbour, which costs a little on top.
    assert!(worst >= 33.0, "worst frame PSNR {worst:.2} dB < 33 dB");

    match ffprobe() {
        Some(ffprobe) => {
            let probe = probe_with(&ffprobe, &out);
            assert_eq!(probe.codec_name, "h264");
            assert_eq!(probe.pix_fmt, "yuv420p");
            assert_eq!((probe.width, probe.height), (width, height));
            assert_eq!(probe.r_frame_rate, format!("{fps}/1"));
            assert_eq!(probe.nb_read_frames, count);
        }
        None => eprintln!("no ffprobe: checked with the built-in parser and decoder only"),
    }
}

// ---------------------------------------------------------------------------------------
// Y4M and PNG

/// The documented RGB -> YCbCr (full-range BT.601, JFIF) conversion, written out again.
fn documented_ycbcr(r: u8, g: u8, b: u8) -> [u8; 3] {
    let (r, g, b) = (i64::from(r), i64::from(g), i64::from(b));
    let y = (19595 * r + 38470 * g + 7471 * b + 32768) >> 16;
    let cb = (-11059 * r - 21709 * g + 32768 * b + (128 << 16) + 32767) >> 16;
    let cr = (32768 * r - 27439 * g - 5329 * b + (128 << 16) + 32767) >> 16;
    [y as u8, cb as u8, cr as u8]
}

/// A parsed `.y4m`: header fields and frames of three planes.
struct Y4m {
    header: String,
    frames: Vec<Vec<u8>>,
}

fn read_y4m(path: &Path, width: u32, height: u32) -> Y4m {
    let data = std::fs::read(path).unwrap();
    let header_end = data.iter().position(|&b| b == b'\n').expect("header line");
    let header = String::from_utf8(data[..header_end].to_vec()).unwrap();
    let plane = width as usize * height as usize;
    let mut frames = Vec::new();
    let mut pos = header_end + 1;
    while pos < data.len() {
        assert_eq!(
            &data[pos..pos + 6],
            b"FRAME\n",
            "frame {} header",
            frames.len()
        );
        pos += 6;
        assert!(
            pos + 3 * plane <= data.len(),
            "frame {} is whole",
            frames.len()
        );
        frames.push(data[pos..pos + 3 * plane].to_vec());
        pos += 3 * plane;
    }
    Y4m { header, frames }
}

fn assert_y4m_frame_exact(frame: &RgbaImage, planes: &[u8], index: usize) {
    let plane = frame.pixels.len() / 4;
    for (i, p) in frame.pixels.chunks_exact(4).enumerate() {
        let expected = documented_ycbcr(p[0], p[1], p[2]);
        let got = [planes[i], planes[plane + i], planes[2 * plane + i]];
        assert_eq!(got, expected, "frame {index} pixel {i}: RGB {:?}", &p[..3]);
    }
}

#[test]
fn y4m_planes_are_the_documented_conversion() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("walk.y4m");
    // Odd size: 4:4:4 needs no padding.
    let (width, height, count) = (63, 47, 30);
    let mut input = frames(count, width, height);
    // Corners of the RGB cube, where rounding and clamping matter most.
    let mut corners = RgbaImage::new(width, height);
    for (i, p) in corners.pixels.chunks_exact_mut(4).enumerate() {
        let k = i % 8;
        p[..3].copy_from_slice(&[
            255 * (k & 1) as u8,
            255 * (k >> 1 & 1) as u8,
            255 * (k >> 2) as u8,
        ]);
    }
    input.push(Arc::new(corners));
    let opts = RecordOptions {
        fps: 25,
        ..RecordOptions::default()
    };
    let summary = record(&out, opts, &input);
    assert_eq!(
        (summary.encoder, summary.format),
        (Encoder::Y4m, OutputFormat::Y4m)
    );

    let y4m = read_y4m(&out, width, height);
    assert_eq!(
        y4m.header,
        "YUV4MPEG2 W63 H47 F25:1 Ip A1:1 C444 XCOLORRANGE=FULL"
    );
    assert_eq!(y4m.frames.len(), input.len());
    for (i, (frame, planes)) in input.iter().zip(&y4m.frames).enumerate() {
        assert_y4m_frame_exact(frame, planes, i);
    }
}

#[test]
fn y4m_reads_back_in_ffmpeg_as_the_frames() {
    // The header tags say what ffmpeg needs to convert back: full range, 4:4:4.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("walk.y4m");
    let input = frames(10, 64, 48);
    record(&out, RecordOptions::default(), &input);
    let probe = probe_stream(&out);
    assert_eq!(probe.pix_fmt, "yuv444p");
    assert_eq!(probe.nb_read_frames, 10);
    let decoded = decode_rgb(&out, 64, 48);
    assert_eq!(decoded.len(), 10);
    for (i, (frame, rgb)) in input.iter().zip(&decoded).enumerate() {
        // 8-bit YCbCr round trip: a couple of levels of rounding at most.
        let max_diff = frame
            .pixels
            .chunks_exact(4)
            .zip(rgb.chunks_exact(3))
            .flat_map(|(p, q)| (0..3).map(move |c| p[c].abs_diff(q[c])))
            .max()
            .unwrap_or(0);
        assert!(
            max_diff <= 3,
            "frame {i}: max difference {max_diff} after ffmpeg's conversion"
        );
    }
}

fn read_png_rgb(path: &Path) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buffer = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buffer).unwrap();
    assert_eq!(
        (info.color_type, info.bit_depth),
        (png::ColorType::Rgb, png::BitDepth::Eight)
    );
    buffer.truncate(info.buffer_size());
    (info.width, info.height, buffer)
}

#[test]
fn png_sequence_is_exact_rgb() {
    let dir = tempfile::tempdir().unwrap();
    let input = frames(24, 64, 48);

    // A folder (created), frame_NNNNNN.png, numbered from 0 whatever the first index.
    let folder = dir.path().join("frames");
    let recorder = Recorder::start(&folder, RecordOptions::default()).unwrap();
    for (i, frame) in input.iter().enumerate() {
        recorder.push(1000 + i as u64, Arc::clone(frame)).unwrap();
    }
    let summary = recorder.finish().unwrap();
    assert_eq!((summary.encoder, summary.frames), (Encoder::Png, 24));
    let mut names: Vec<_> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let expected: Vec<_> = (0..24).map(|i| format!("frame_{i:06}.png")).collect();
    assert_eq!(names, expected);
    for (i, frame) in input.iter().enumerate() {
        let (w, h, rgb) = read_png_rgb(&folder.join(&expected[i]));
        assert_eq!((w, h), (64, 48));
        assert!(
            rgb == frame.to_rgb(),
            "frame {i} decodes to exactly its RGB"
        );
    }

    // name.png: name_NNNNNN.png beside it.
    let named = dir.path().join("shot.png");
    record(&named, RecordOptions::default(), &input[..3]);
    for (i, frame) in input[..3].iter().enumerate() {
        let (_, _, rgb) = read_png_rgb(&dir.path().join(format!("shot_{i:06}.png")));
        assert!(rgb == frame.to_rgb(), "shot frame {i}");
    }
}

// ---------------------------------------------------------------------------------------
// The consumer: order, loss, back-pressure, shutdown

/// A sink that writes a frame only when the test lets it, and reports each one.
struct GatedSink {
    gate: Receiver<()>,
    written: Sender<u64>,
}

impl FrameSink for GatedSink {
    fn encoder(&self) -> Encoder {
        Encoder::Custom("gated test sink".to_string())
    }

    fn write_frame(&mut self, frame: &RgbaImage) -> Result<(), RecordError> {
        let _ = self.gate.recv();
        let _ = self.written.send(tag_of(frame));
        Ok(())
    }

    fn finish(&mut self) -> Result<String, RecordError> {
        Ok("done".to_string())
    }
}

fn tagged_frame(tag: u64) -> Arc<RgbaImage> {
    let mut frame = RgbaImage::new(8, 8);
    frame.pixels[..8].copy_from_slice(&tag.to_le_bytes());
    Arc::new(frame)
}

fn tag_of(frame: &RgbaImage) -> u64 {
    u64::from_le_bytes(frame.pixels[..8].try_into().unwrap())
}

#[test]
fn push_blocks_while_the_queue_is_full_and_nothing_is_lost() {
    const FRAMES: u64 = 40;
    const WAIT: Duration = Duration::from_secs(20);
    let (gate_tx, gate_rx) = crossbeam_channel::unbounded();
    let (written_tx, written_rx) = crossbeam_channel::unbounded();
    let (pushed_tx, pushed_rx) = crossbeam_channel::unbounded();
    let sink = GatedSink {
        gate: gate_rx,
        written: written_tx,
    };
    let opts = RecordOptions {
        queue_capacity: 2,
        ..RecordOptions::default()
    };
    let recorder = Recorder::with_sink(Path::new("gated"), Box::new(sink), opts).unwrap();
    std::thread::scope(|scope| {
        let recorder = &recorder;
        scope.spawn(move || {
            for i in 0..FRAMES {
                recorder.push(i, tagged_frame(i)).unwrap();
                pushed_tx.send(i).unwrap();
            }
        });
        // The sink holds frame 0 (waiting at the gate), the queue takes 1 and 2...
        for i in 0..3 {
            assert_eq!(pushed_rx.recv_timeout(WAIT), Ok(i));
        }
        // ...and the push of frame 3 blocks until the sink moves on.
        assert!(
            pushed_rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "push returned with the queue full"
        );
        let stats = recorder.stats();
        assert_eq!(
            (stats.frames_pushed, stats.frames_written, stats.queue_len),
            (3, 0, 2)
        );
        assert_eq!(stats.queue_capacity, 2);

        // One frame written makes room for exactly one push.
        gate_tx.send(()).unwrap();
        assert_eq!(written_rx.recv_timeout(WAIT), Ok(0));
        assert_eq!(pushed_rx.recv_timeout(WAIT), Ok(3));
        assert!(pushed_rx.recv_timeout(Duration::from_millis(300)).is_err());

        for _ in 1..FRAMES {
            gate_tx.send(()).unwrap();
        }
        for i in 4..FRAMES {
            assert_eq!(pushed_rx.recv_timeout(WAIT), Ok(i));
        }
    });
    let summary = recorder.finish().unwrap();
    assert_eq!(summary.frames, FRAMES);
    let written: Vec<u64> = written_rx.try_iter().collect();
    assert_eq!(
        written,
        (1..FRAMES).collect::<Vec<_>>(),
        "every frame, in order"
    );
}

#[test]
fn a_gap_in_frame_indices_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gap.y4m");
    let recorder = Recorder::start(&out, RecordOptions::default()).unwrap();
    let frame = Arc::new(smooth_frame(0, 16, 16));
    recorder.push(5, Arc::clone(&frame)).unwrap();
    recorder.push(6, Arc::clone(&frame)).unwrap();
    let err = recorder.push(8, Arc::clone(&frame)).unwrap_err();
    assert!(
        matches!(
            err,
            RecordError::FrameGap {
                expected: 7,
                got: 8
            }
        ),
        "{err}"
    );
    assert!(matches!(
        recorder.push(6, Arc::clone(&frame)),
        Err(RecordError::FrameGap { .. })
    ));
    // The recording goes on from the frame that was due.
    recorder.push(7, Arc::clone(&frame)).unwrap();
    let bad = Arc::new(RgbaImage {
        width: 4,
        height: 4,
        pixels: vec![0; 10],
    });
    assert!(matches!(
        recorder.push(8, bad),
        Err(RecordError::BadFrame { index: 8, .. })
    ));
    assert_eq!(recorder.finish().unwrap().frames, 3);
    assert_eq!(read_y4m(&out, 16, 16).frames.len(), 3);
}

#[test]
fn dropping_a_recorder_finishes_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = frames(12, 32, 32);
    for name in ["dropped.y4m", "dropped.mp4"] {
        let out = dir.path().join(name);
        let opts = RecordOptions {
            force_builtin_encoder: true,
            ..RecordOptions::default()
        };
        {
            let recorder = Recorder::start(&out, opts).unwrap();
            for (i, frame) in input.iter().enumerate() {
                recorder.push(i as u64, Arc::clone(frame)).unwrap();
            }
        }
        assert!(!partial_path(&out).exists(), "{name}: no partial file left");
        if name.ends_with(".y4m") {
            assert_eq!(read_y4m(&out, 32, 32).frames.len(), 12);
        } else {
            let track = read_mp4_track(&std::fs::read(&out).unwrap());
            assert_eq!(track.samples.len(), 12);
        }
    }
}

#[test]
fn bad_paths_and_options_fail_at_start() {
    let err = |path: &str, opts: RecordOptions| match Recorder::start(Path::new(path), opts) {
        Ok(_) => panic!("{path}: started"),
        Err(e) => e,
    };
    let e = err("/tmp/walk.avi", RecordOptions::default());
    assert!(matches!(e, RecordError::UnknownFormat { .. }), "{e}");
    assert!(
        e.to_string().contains("walk.avi") && e.to_string().contains(".avi"),
        "{e}"
    );

    let builtin = RecordOptions {
        force_builtin_encoder: true,
        ..RecordOptions::default()
    };
    for (path, opts) in [
        ("/proc/dreamwalk.mp4", builtin),
        ("/proc/dreamwalk.y4m", RecordOptions::default()),
        ("/proc/dreamwalk-frames/", RecordOptions::default()),
        ("/nonexistent-dir/walk.y4m", RecordOptions::default()),
    ] {
        let e = err(path, opts);
        assert!(matches!(e, RecordError::Unwritable { .. }), "{path}: {e}");
        assert!(
            e.to_string().contains(path.trim_end_matches('/')),
            "{path}: {e}"
        );
    }

    for opts in [
        RecordOptions {
            fps: 0,
            ..RecordOptions::default()
        },
        RecordOptions {
            crf: 52,
            ..RecordOptions::default()
        },
        RecordOptions {
            preset: "warp".into(),
            ..RecordOptions::default()
        },
        RecordOptions {
            queue_capacity: 0,
            ..RecordOptions::default()
        },
        RecordOptions {
            size: Some((0, 10)),
            ..RecordOptions::default()
        },
    ] {
        let e = err("/tmp/never.y4m", opts);
        assert!(matches!(e, RecordError::InvalidOption(_)), "{e}");
    }

    let missing = RecordOptions {
        ffmpeg: Some(PathBuf::from("/nonexistent/ffmpeg")),
        ..RecordOptions::default()
    };
    let e = err("/tmp/never.mp4", missing);
    assert!(matches!(e, RecordError::Ffmpeg { .. }), "{e}");
    assert!(e.to_string().contains("/nonexistent/ffmpeg"), "{e}");
}

#[test]
fn mp4_via_ffmpeg_unwritable_path_fails_at_start() {
    let _ = ffmpeg();
    let e = match Recorder::start(Path::new("/proc/dreamwalk.mp4"), RecordOptions::default()) {
        Ok(_) => panic!("started"),
        Err(e) => e,
    };
    assert!(matches!(e, RecordError::Unwritable { .. }), "{e}");
    assert!(e.to_string().contains("/proc/dreamwalk.mp4"), "{e}");
}

// ---------------------------------------------------------------------------------------
// Faults mid-way

/// Writes an executable shell script.
fn write_script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Whether the fragmented partial file holds a complete fragment yet.
fn has_complete_fragment(path: &Path) -> bool {
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

#[test]
fn ffmpeg_killed_mid_way_keeps_a_playable_file() {
    // DREAMWALK_FFMPEG is process-wide, so the recording runs in a child test process.
    let real = ffmpeg();
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("ffmpeg-wrapper");
    // The encoding ffmpeg (it reads pipe:0; the remux does not) leaves its pid to be killed.
    write_script(
        &wrapper,
        &format!(
            "case \"$*\" in *pipe:0*) echo $$ > '{}';; esac\nexec '{}' \"$@\"\n",
            dir.path().join("ffmpeg.pid").display(),
            real.display()
        ),
    );
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "record_with_ffmpeg_killed",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("DREAMWALK_FFMPEG", &wrapper)
        .env("DREAMWALK_TEST_DIR", dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "child test failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("1 passed"),
        "the child ran the test:\n{stdout}"
    );
}

#[test]
#[ignore = "run by ffmpeg_killed_mid_way_keeps_a_playable_file in a child process"]
fn record_with_ffmpeg_killed() {
    let dir = PathBuf::from(std::env::var_os("DREAMWALK_TEST_DIR").expect("DREAMWALK_TEST_DIR"));
    let out = dir.join("killed.mp4");
    let (width, height) = (160, 96);
    let recorder = Recorder::start(&out, RecordOptions::default()).unwrap();
    let mut pushed = 0u64;
    let mut push = |recorder: &Recorder| {
        let result = recorder.push(pushed, Arc::new(smooth_frame(pushed, width, height)));
        if result.is_ok() {
            pushed += 1;
        }
        result
    };
    // Four seconds of video: ffmpeg completes fragments while more frames are in flight.
    for _ in 0..120 {
        push(&recorder).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !has_complete_fragment(&partial_path(&out)) {
        assert!(Instant::now() < deadline, "ffmpeg wrote no fragment");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = std::fs::read_to_string(dir.join("ffmpeg.pid")).unwrap();
    let killed = Command::new("kill")
        .args(["-KILL", pid.trim()])
        .status()
        .unwrap();
    assert!(killed.success());

    // The pipe breaks within a few frames; every push from then on says why.
    let error = (0..10_000)
        .find_map(|_| push(&recorder).err())
        .expect("push fails once ffmpeg is dead");
    let message = error.to_string();
    eprintln!("push error: {message}");
    assert!(message.contains("killed by signal 9"), "{message}");
    assert!(message.contains("killed.mp4"), "{message}");
    assert!(push(&recorder).is_err(), "the failure sticks");
    let finish_error = recorder.finish().expect_err("finish reports the failure");
    assert_eq!(finish_error.to_string(), message);

    // What ffmpeg had completed was remuxed into a finalized, faststart file.
    assert!(!partial_path(&out).exists());
    assert_moov_before_mdat(&out);
    let probe = probe_stream(&out);
    assert_eq!(
        (probe.codec_name.as_str(), probe.width, probe.height),
        ("h264", width, height)
    );
    let kept = probe.nb_read_frames;
    eprintln!("kept {kept} of {pushed} frames");
    assert!(kept > 0 && kept < pushed, "kept {kept} of {pushed}");
    assert!(message.contains(&format!("{kept} frames")), "{message}");
    // The kept frames are the first ones, in order.
    let decoded = decode_rgb(&out, width, height);
    for (i, rgb) in decoded.iter().enumerate() {
        let db = psnr(&smooth_frame(i as u64, width, height), rgb);
        assert!(db >= 35.0, "kept frame {i}: {db:.2} dB");
    }
}

/// A tmpfs of `size_kib` mounted on a fresh folder, unmounted on drop; `None` where mounting
/// is not allowed (not root).
struct TinyDisk {
    mount_point: PathBuf,
    _dir: tempfile::TempDir,
}

impl TinyDisk {
    fn mount(size_kib: u32) -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        let mount_point = dir.path().join("disk");
        std::fs::create_dir(&mount_point).ok()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_kib}k"), "tmpfs"])
            .arg(&mount_point)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then_some(Self {
            mount_point,
            _dir: dir,
        })
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount_point).status();
    }
}

/// Pushes detailed frames until the recording fails; returns the error and frames pushed.
fn push_until_failure(recorder: &Recorder, width: u32, height: u32) -> (RecordError, u64) {
    for i in 0..20_000u64 {
        // Fine moving stripes: much to encode per frame, so the disk fills quickly.
        let mut frame = smooth_frame(i, width, height);
        for (j, p) in frame.pixels.chunks_exact_mut(4).enumerate() {
            let (x, y) = ((j as u32 % width) as u64, (j as u32 / width) as u64);
            p[1] = p[1].wrapping_add((((x * 7 + y * 3 + i * 5) % 16) * 8) as u8);
        }
        if let Err(e) = recorder.push(i, Arc::new(frame)) {
            return (e, i);
        }
    }
    panic!("the disk never filled up");
}

#[test]
fn disk_full_with_ffmpeg_keeps_a_playable_file() {
    let real = ffmpeg();
    let (width, height) = (160, 96);
    let dir = tempfile::tempdir().unwrap();
    let disk = TinyDisk::mount(384);
    let (out, opts) = match &disk {
        Some(disk) => (disk.mount_point.join("full.mp4"), RecordOptions::default()),
        None => {
            // Not root: a file size limit on the encoding ffmpeg instead of a full disk.
            eprintln!("cannot mount a tmpfs: limiting ffmpeg's file size with ulimit instead");
            let wrapper = dir.path().join("ffmpeg-ulimit");
            write_script(
                &wrapper,
                &format!(
                    "case \"$*\" in *pipe:0*) ulimit -f 384;; esac\nexec '{}' \"$@\"\n",
                    real.display()
                ),
            );
            let opts = RecordOptions {
                ffmpeg: Some(wrapper),
                ..RecordOptions::default()
            };
            (dir.path().join("full.mp4"), opts)
        }
    };
    let opts = RecordOptions { crf: 8, ..opts };
    let recorder = Recorder::start(&out, opts).unwrap();
    let (error, pushed) = push_until_failure(&recorder, width, height);
    let message = error.to_string();
    eprintln!("after {pushed} frames: {message}");
    if disk.is_some() {
        assert!(message.contains("No space left on device"), "{message}");
    }
    let finish_error = recorder.finish().expect_err("finish reports the failure");
    assert_eq!(finish_error.to_string(), message);
    // The disk is full, so the remux has no room: the fragmented file is kept, playable.
    assert!(message.contains("kept"), "{message}");
    let probe = probe_stream(&out);
    assert_eq!(
        (probe.codec_name.as_str(), probe.width, probe.height),
        ("h264", width, height)
    );
    assert!(probe.nb_read_frames > 0, "no frame kept");
    assert!(
        message.contains(&format!("{} frames", probe.nb_read_frames)),
        "{message}"
    );
    let decoded = decode_rgb(&out, width, height);
    assert_eq!(
        decoded.len() as u64,
        probe.nb_read_frames,
        "every kept frame decodes"
    );
}

#[test]
fn disk_full_with_y4m_keeps_whole_frames() {
    let Some(disk) = TinyDisk::mount(128) else {
        eprintln!("cannot mount a tmpfs (not root): skipped");
        return;
    };
    let out = disk.mount_point.join("full.y4m");
    let (width, height) = (64, 48);
    let recorder = Recorder::start(&out, RecordOptions::default()).unwrap();
    let (error, pushed) = push_until_failure(&recorder, width, height);
    let message = error.to_string();
    assert!(message.contains("No space left on device"), "{message}");
    assert!(recorder.finish().is_err());
    let y4m = read_y4m(&out, width, height);
    eprintln!(
        "after {pushed} frames: {message}; kept {}",
        y4m.frames.len()
    );
    assert!(!y4m.frames.is_empty() && (y4m.frames.len() as u64) < pushed);
    assert!(
        message.contains(&format!("{} frames", y4m.frames.len())),
        "{message}"
    );
}

#[test]
fn disk_full_with_builtin_encoder_keeps_a_playable_file() {
    let Some(disk) = TinyDisk::mount(192) else {
        eprintln!("cannot mount a tmpfs (not root): skipped");
        return;
    };
    let out = disk.mount_point.join("full.mp4");
    let (width, height) = (160, 96);
    let opts = RecordOptions {
        force_builtin_encoder: true,
        ..RecordOptions::default()
    };
    let recorder = Recorder::start(&out, opts).unwrap();
    let (error, pushed) = push_until_failure(&recorder, width, height);
    let message = error.to_string();
    eprintln!("after {pushed} frames: {message}");
    assert!(message.contains("No space left on device"), "{message}");
    assert!(recorder.finish().is_err());
    assert!(!partial_path(&out).exists());
    let track = read_mp4_track(&std::fs::read(&out).unwrap());
    assert!(!track.samples.is_empty());
    assert!(
        message.contains(&format!("{} frames", track.samples.len())),
        "{message}"
    );
    assert_eq!(decode_track_openh264(&track).len(), track.samples.len());
}

// ---------------------------------------------------------------------------------------
// Provenance: every format carries the comment (the demo model labels its output with it)

/// ffprobe's `comment` tag of a file's container.
fn probe_comment(file: &Path) -> String {
    let out = Command::new(require_ffprobe())
        .args(["-v", "error", "-show_entries", "format_tags=comment"])
        .args(["-of", "default=noprint_wrappers=1:nokey=1"])
        .arg(file)
        .output()
        .expect("ffprobe runs");
    assert!(out.status.success(), "ffprobe {} failed", file.display());
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn every_format_stores_the_comment() {
    let comment = dreamwalk::record::provenance(
        "demo model (random weights)",
        &["a fox".to_string(), "ein Haus – 家".to_string()],
    );
    assert!(comment.contains("demo model (random weights)"));
    let dir = tempfile::tempdir().unwrap();
    let input = frames(3, 64, 48);
    let opts = RecordOptions {
        comment: Some(comment.clone()),
        ..RecordOptions::default()
    };

    let _ = ffmpeg();
    let via_ffmpeg = dir.path().join("ffmpeg.mp4");
    record(&via_ffmpeg, opts.clone(), &input);
    assert_eq!(probe_comment(&via_ffmpeg), comment);

    let builtin = dir.path().join("builtin.mp4");
    let summary = record(
        &builtin,
        RecordOptions {
            force_builtin_encoder: true,
            ..opts.clone()
        },
        &input,
    );
    assert!(matches!(summary.encoder, Encoder::OpenH264 { .. }));
    assert_eq!(probe_comment(&builtin), comment);

    let y4m = dir.path().join("walk.y4m");
    record(&y4m, opts.clone(), &input);
    let bytes = std::fs::read(&y4m).unwrap();
    let header_end = bytes.iter().position(|&b| b == b'\n').unwrap();
    let header = String::from_utf8(bytes[..header_end].to_vec()).unwrap();
    // The header keeps the start of the comment, the model's name, within ffmpeg's limit.
    let field = header.split(" XCOMMENT=").nth(1).expect("a comment field");
    assert!(comment.replace(' ', "_").starts_with(field), "{header}");
    assert!(field.contains("demo_model_(random_weights)"), "{header}");
    assert!(header.len() < 96, "{header}");
    // ffmpeg still reads the file with the extra field.
    assert_eq!(probe_with(&require_ffprobe(), &y4m).nb_read_frames, 3);

    let pngs = dir.path().join("pngs");
    record(&pngs, opts, &input);
    for i in 0..3 {
        let file = pngs.join(format!("frame_{i:06}.png"));
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&file).unwrap()));
        let reader = decoder.read_info().unwrap();
        let texts: Vec<(String, String)> = reader
            .info()
            .utf8_text
            .iter()
            .map(|t| (t.keyword.clone(), t.get_text().unwrap()))
            .collect();
        assert_eq!(texts, vec![("Comment".to_string(), comment.clone())]);
    }
}
