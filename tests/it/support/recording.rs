//! For the recorder's tests: smooth synthetic frames and PSNR against them, a whole
//! recording in one call, a sink the test holds back frame by frame, tagged frames, and a
//! tiny disk that fills up.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use dreamwalk::frame::RgbaImage;
use dreamwalk::record::{Encoder, FrameSink, RecordError, RecordOptions, Recorder};

/// A smooth synthetic frame: two drifting sine gradients and a soft moving disc (video-like
/// content; noise would test the codec's worst case instead of our plumbing). It moves fast
/// enough that neighbouring frames are far apart (see `neighbouring_frames_differ`).
pub fn smooth_frame(index: u64, width: u32, height: u32) -> RgbaImage {
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

/// `count` smooth frames, from frame 0.
pub fn frames(count: u64, width: u32, height: u32) -> Vec<Arc<RgbaImage>> {
    (0..count)
        .map(|i| Arc::new(smooth_frame(i, width, height)))
        .collect()
}

/// PSNR in dB over R, G and B of an RGBA frame against packed RGB bytes.
pub fn psnr(frame: &RgbaImage, rgb: &[u8]) -> f64 {
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

/// Records `frames` into `path`, pushing each as it comes; the recording must succeed.
pub fn record(
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

/// A sink that writes a frame only when the test lets it, and reports each one.
pub struct GatedSink {
    pub gate: Receiver<()>,
    pub written: Sender<u64>,
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

/// A small frame carrying `tag` in its first bytes.
pub fn tagged_frame(tag: u64) -> Arc<RgbaImage> {
    let mut frame = RgbaImage::new(8, 8);
    frame.pixels[..8].copy_from_slice(&tag.to_le_bytes());
    Arc::new(frame)
}

/// The tag of a `tagged_frame`.
fn tag_of(frame: &RgbaImage) -> u64 {
    u64::from_le_bytes(frame.pixels[..8].try_into().unwrap())
}

/// A tmpfs of `size_kib` mounted on a fresh folder, unmounted on drop; `None` where mounting
/// is not allowed (not root).
pub struct TinyDisk {
    pub mount_point: PathBuf,
    _dir: tempfile::TempDir,
}

impl TinyDisk {
    pub fn mount(size_kib: u32) -> Option<Self> {
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
pub fn push_until_failure(recorder: &Recorder, width: u32, height: u32) -> (RecordError, u64) {
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
