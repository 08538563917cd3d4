//! MP4 without ffmpeg: the OpenH264 encoder (built from its bundled source) and the
//! [`mp4`](super::mp4) boxes.
//!
//! Samples are appended to the partial file, which starts as `ftyp` + `mdat`; finishing writes
//! the output with the index first, or, without room for that copy, appends the index to the
//! partial file and renames it.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use openh264::encoder::{
    BitRate, EncoderConfig, FrameRate, IntraFramePeriod, QpRange, RateControlMode, UsageType,
    VuiConfig,
};
use openh264::formats::YUVBuffer;
use openh264::OpenH264API;

use super::ffmpeg::partial_path;
use super::mp4::{self, Track, MDAT_HEADER_LEN};
use super::{Encoder, FrameSink, RecordError, RecordOptions};
use crate::frame::RgbaImage;

/// The lowest quantizer used: OpenH264 sizes its output buffer for ordinary quality and fails
/// on a frame that does not fit, which detailed small frames below about QP 12 can do.
const MIN_QP: u8 = 16;

/// How often the index may be retried with fewer frames when the disk is full.
const INDEX_RETRIES: usize = 8;

/// Records an MP4 with OpenH264; see the module docs.
pub(super) struct OpenH264Sink {
    output: PathBuf,
    part: PathBuf,
    file: File,
    fps: u32,
    qp: u8,
    encoder: Option<openh264::encoder::Encoder>,
    /// `ftyp` + `mdat` header: where the samples start in the partial file.
    header_len: u64,
    payload_len: u64,
    sample_sizes: Vec<u32>,
    sync_samples: Vec<u32>,
    sps: Option<Vec<u8>>,
    pps: Option<Vec<u8>>,
    size: (u32, u32),
    /// The current frame's sample, reused.
    sample: Vec<u8>,
    /// The `comment` metadata tag.
    comment: Option<String>,
}

impl OpenH264Sink {
    /// Creates the partial file with its `ftyp` and `mdat` header.
    pub(super) fn create(output: &Path, opts: &RecordOptions) -> Result<Self, RecordError> {
        let part = partial_path(output);
        let unwritable = |error| RecordError::Unwritable {
            path: output.to_path_buf(),
            error,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&part)
            .map_err(unwritable)?;
        let ftyp = mp4::ftyp();
        file.write_all(&ftyp)
            .and_then(|()| file.write_all(&mp4::mdat_header(0)))
            .map_err(|e| {
                let _ = fs::remove_file(&part);
                unwritable(e)
            })?;
        Ok(Self {
            output: output.to_path_buf(),
            part,
            file,
            fps: opts.fps,
            qp: opts.crf.max(MIN_QP),
            encoder: None,
            header_len: ftyp.len() as u64 + MDAT_HEADER_LEN,
            payload_len: 0,
            sample_sizes: Vec::new(),
            sync_samples: Vec::new(),
            sps: None,
            pps: None,
            size: (0, 0),
            sample: Vec::new(),
            comment: opts.comment.clone(),
        })
    }

    fn failed(&self, reason: impl Into<String>) -> RecordError {
        RecordError::failed(&self.output, reason)
    }

    fn new_encoder(&self) -> Result<openh264::encoder::Encoder, RecordError> {
        let config = EncoderConfig::new()
            // The only camera usage this OpenH264 build accepts ("non real time" is refused).
            .usage_type(UsageType::CameraVideoRealTime)
            // A fixed quantizer is the closest OpenH264 has to a constant rate factor; the
            // bitrate is only a ceiling the rate control never reaches.
            .rate_control_mode(RateControlMode::Quality)
            .qp(QpRange::new(self.qp, self.qp))
            .bitrate(BitRate::from_bps(200_000_000))
            .max_frame_rate(FrameRate::from_hz(self.fps as f32))
            // Never skip a frame: every frame pushed must be in the file.
            .skip_frames(false)
            .intra_frame_period(IntraFramePeriod::from_num_frames(self.fps * 2))
            .vui(VuiConfig::bt709());
        openh264::encoder::Encoder::with_api_config(OpenH264API::from_source(), config)
            .map_err(|e| self.failed(format!("cannot start the OpenH264 encoder: {e}")))
    }

    /// Encodes `frame` into `self.sample` (length-prefixed NAL units); returns whether it is a
    /// key frame.
    fn encode(&mut self, frame: &RgbaImage) -> Result<bool, RecordError> {
        let (width, height) = (frame.width as usize, frame.height as usize);
        let yuv = YUVBuffer::from_vec(rgba_to_i420_bt709(frame), width, height);
        if self.encoder.is_none() {
            self.encoder = Some(self.new_encoder()?);
        }
        let Some(encoder) = self.encoder.as_mut() else {
            return Err(self.failed("the OpenH264 encoder is missing"));
        };
        let index = self.sample_sizes.len() as u64;
        let timestamp = openh264::Timestamp::from_millis(index * 1000 / u64::from(self.fps));
        let bitstream = encoder.encode_at(&yuv, timestamp).map_err(|e| {
            RecordError::failed(
                &self.output,
                format!("OpenH264 failed on frame {index}: {e}"),
            )
        })?;
        self.sample.clear();
        let mut key_frame = false;
        let mut parameter_sets = Vec::new();
        for layer in (0..bitstream.num_layers()).filter_map(|i| bitstream.layer(i)) {
            for nal in (0..layer.nal_count()).filter_map(|i| layer.nal_unit(i)) {
                let nal = strip_start_code(nal);
                let Some(&header) = nal.first() else { continue };
                match header & 0x1f {
                    7 | 8 => parameter_sets.push(nal.to_vec()),
                    // Access unit delimiters carry nothing an MP4 needs.
                    9 => {}
                    nal_type => {
                        key_frame |= nal_type == 5;
                        self.sample
                            .extend_from_slice(&(nal.len() as u32).to_be_bytes());
                        self.sample.extend_from_slice(nal);
                    }
                }
            }
        }
        for set in parameter_sets {
            self.keep_parameter_set(set)?;
        }
        if self.sample.is_empty() {
            return Err(self.failed(format!("OpenH264 produced no picture for frame {index}")));
        }
        Ok(key_frame)
    }

    /// Keeps the first SPS and PPS for the `avcC` box; the encoder repeats them at each key
    /// frame, and a different one would need a second sample description.
    fn keep_parameter_set(&mut self, set: Vec<u8>) -> Result<(), RecordError> {
        let is_sps = set[0] & 0x1f == 7;
        let slot = if is_sps { &mut self.sps } else { &mut self.pps };
        match slot {
            None => *slot = Some(set),
            Some(kept) if *kept == set => {}
            Some(_) => {
                return Err(self.failed("OpenH264 changed its parameter sets mid-stream"));
            }
        }
        Ok(())
    }

    fn track(&self) -> Result<Track<'_>, RecordError> {
        let (Some(sps), Some(pps)) = (&self.sps, &self.pps) else {
            return Err(self.failed("OpenH264 produced no parameter sets"));
        };
        Ok(Track {
            width: self.size.0,
            height: self.size.1,
            fps: self.fps,
            sample_sizes: &self.sample_sizes,
            sync_samples: &self.sync_samples,
            sps,
            pps,
            comment: self.comment.as_deref(),
        })
    }

    /// Writes the output as `ftyp`, `moov`, `mdat` (the index first), copying the samples.
    fn write_faststart(&mut self) -> Result<(), std::io::Error> {
        let ftyp = mp4::ftyp();
        let track = self.track().map_err(std::io::Error::other)?;
        // The index's length does not depend on the offset's value (always `stco` here).
        let moov_len = mp4::moov(&track, 0).len() as u64;
        let payload_offset = ftyp.len() as u64 + moov_len + MDAT_HEADER_LEN;
        let moov = mp4::moov(&track, payload_offset);
        // Written beside the output and renamed when whole: an existing output is replaced
        // only by a complete file.
        let mut name = self.output.file_name().unwrap_or_default().to_os_string();
        name.push(".faststart.part");
        let staged = self.output.with_file_name(name);
        let result = self.write_faststart_to(&staged, &ftyp, &moov);
        match result.and_then(|()| fs::rename(&staged, &self.output)) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = fs::remove_file(&staged);
                Err(e)
            }
        }
    }

    fn write_faststart_to(
        &mut self,
        staged: &Path,
        ftyp: &[u8],
        moov: &[u8],
    ) -> Result<(), std::io::Error> {
        let mut out = File::create(staged)?;
        out.write_all(ftyp)?;
        out.write_all(moov)?;
        out.write_all(&mp4::mdat_header(self.payload_len))?;
        self.file.seek(SeekFrom::Start(self.header_len))?;
        let copied = std::io::copy(&mut (&self.file).take(self.payload_len), &mut out)?;
        if copied != self.payload_len {
            return Err(std::io::Error::other(
                "the partial file is shorter than its samples",
            ));
        }
        out.sync_all()
    }

    /// Makes the partial file a complete MP4 by appending the index, dropping the last frames
    /// if that is what it takes to fit it on a full disk; returns the frames dropped.
    fn finalize_in_place(&mut self) -> Result<usize, String> {
        let mut dropped = 0;
        let mut last_error = String::new();
        for _ in 0..INDEX_RETRIES {
            let track = self.track().map_err(|e| e.to_string())?;
            let moov = mp4::moov(&track, self.header_len);
            let ftyp_len = self.header_len - MDAT_HEADER_LEN;
            let result = self
                .file
                .set_len(self.header_len + self.payload_len)
                .and_then(|()| self.file.seek(SeekFrom::Start(ftyp_len)))
                .and_then(|_| self.file.write_all(&mp4::mdat_header(self.payload_len)))
                .and_then(|()| self.file.seek(SeekFrom::End(0)))
                .and_then(|_| self.file.write_all(&moov))
                .and_then(|()| self.file.sync_all());
            match result {
                Ok(()) => return Ok(dropped),
                Err(e) => last_error = e.to_string(),
            }
            // Free at least the index's size (and a page for the file system's rounding).
            let mut freed = 0u64;
            while freed < moov.len() as u64 + 4096 && self.sample_sizes.len() > 1 {
                if let Some(size) = self.sample_sizes.pop() {
                    freed += u64::from(size);
                    self.payload_len -= u64::from(size);
                    dropped += 1;
                }
            }
            let frames = self.sample_sizes.len() as u32;
            self.sync_samples.retain(|&s| s <= frames);
            if freed == 0 {
                break;
            }
        }
        Err(last_error)
    }
}

impl FrameSink for OpenH264Sink {
    fn encoder(&self) -> Encoder {
        Encoder::OpenH264 { qp: self.qp }
    }

    fn frame_size(&self, (width, height): (u32, u32)) -> (u32, u32) {
        (width.next_multiple_of(2), height.next_multiple_of(2))
    }

    fn write_frame(&mut self, frame: &RgbaImage) -> Result<(), RecordError> {
        self.size = (frame.width, frame.height);
        let key_frame = self.encode(frame)?;
        if let Err(e) = self.file.write_all(&self.sample) {
            // Leave only whole samples behind.
            let _ = self.file.set_len(self.header_len + self.payload_len);
            let _ = self.file.seek(SeekFrom::End(0));
            return Err(self.failed(format!(
                "writing frame {} to {} failed: {e}",
                self.sample_sizes.len(),
                self.part.display()
            )));
        }
        self.payload_len += self.sample.len() as u64;
        self.sample_sizes.push(self.sample.len() as u32);
        if key_frame {
            self.sync_samples.push(self.sample_sizes.len() as u32);
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<String, RecordError> {
        if self.sample_sizes.is_empty() {
            let _ = fs::remove_file(&self.part);
            return Ok("no frames (no file was written)".to_string());
        }
        let faststart_error = match self.write_faststart() {
            Ok(()) => {
                let _ = fs::remove_file(&self.part);
                return Ok(format!(
                    "{} frames, finalized MP4 (faststart)",
                    self.sample_sizes.len()
                ));
            }
            Err(e) => e,
        };
        // Most likely a full disk: the partial file needs only its index to be complete.
        let frames_before = self.sample_sizes.len();
        match self.finalize_in_place() {
            Ok(dropped) => {
                fs::rename(&self.part, &self.output).map_err(|e| {
                    self.failed(format!(
                        "writing the output failed ({faststart_error}); {} is a complete MP4 \
                         but renaming it failed: {e}",
                        self.part.display()
                    ))
                })?;
                let note = format!(
                    "writing the index first failed ({faststart_error}); kept an MP4 with the \
                     index last: {} frames",
                    self.sample_sizes.len()
                );
                if dropped > 0 {
                    Err(self.failed(format!(
                        "{note} (the last {dropped} of {frames_before} were dropped to fit it)"
                    )))
                } else {
                    Err(self.failed(note))
                }
            }
            Err(e) => Err(self.failed(format!(
                "writing the output failed ({faststart_error}) and so did finishing {} ({e}); \
                 it holds the encoded frames without an index and is not playable",
                self.part.display()
            ))),
        }
    }
}

/// `nal` without its Annex B start code (`00 00 01` or `00 00 00 01`).
fn strip_start_code(nal: &[u8]) -> &[u8] {
    let zeros = nal.iter().take_while(|&&b| b == 0).count();
    if zeros >= 2 && nal.get(zeros) == Some(&1) {
        &nal[zeros + 1..]
    } else {
        nal
    }
}

/// RGBA (alpha ignored) to planar I420 with the BT.709 matrix, limited range (what the
/// stream's VUI and `colr` box say), chroma from the mean of each 2x2 block. Width and height
/// must be even.
fn rgba_to_i420_bt709(frame: &RgbaImage) -> Vec<u8> {
    let (width, height) = (frame.width as usize, frame.height as usize);
    let (chroma_w, chroma_h) = (width / 2, height / 2);
    let mut yuv = vec![0u8; width * height + 2 * chroma_w * chroma_h];
    let (y_plane, chroma) = yuv.split_at_mut(width * height);
    let (u_plane, v_plane) = chroma.split_at_mut(chroma_w * chroma_h);
    // Coefficients times 2^16: Y = 16 + 219/255 (0.2126 R + 0.7152 G + 0.0722 B),
    // Cb and Cr scaled by 224/255.
    const Y_R: i32 = 11966;
    const Y_G: i32 = 40254;
    const Y_B: i32 = 4064;
    const CB_R: i32 = -6596;
    const CB_G: i32 = -22188;
    const CB_B: i32 = 28784;
    const CR_R: i32 = 28784;
    const CR_G: i32 = -26145;
    const CR_B: i32 = -2639;
    let pixel = |x: usize, y: usize| {
        let p = &frame.pixels[(y * width + x) * 4..][..3];
        (i32::from(p[0]), i32::from(p[1]), i32::from(p[2]))
    };
    for y in 0..height {
        for x in 0..width {
            let (r, g, b) = pixel(x, y);
            y_plane[y * width + x] =
                ((Y_R * r + Y_G * g + Y_B * b + (16 << 16) + 32768) >> 16) as u8;
        }
    }
    for cy in 0..chroma_h {
        for cx in 0..chroma_w {
            let (mut r, mut g, mut b) = (0, 0, 0);
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                let p = pixel(cx * 2 + dx, cy * 2 + dy);
                r += p.0;
                g += p.1;
                b += p.2;
            }
            // Sums of four pixels: divide by 4 inside the shift.
            let cb = (CB_R * r + CB_G * g + CB_B * b + (128 << 18) + (1 << 17)) >> 18;
            let cr = (CR_R * r + CR_G * g + CR_B * b + (128 << 18) + (1 << 17)) >> 18;
            u_plane[cy * chroma_w + cx] = cb.clamp(0, 255) as u8;
            v_plane[cy * chroma_w + cx] = cr.clamp(0, 255) as u8;
        }
    }
    yuv
}
