//! A sound track that times a walk: decoded with symphonia ([`decode`]: WAV, FLAC, MP3, Ogg
//! Vorbis), its onsets measured as spectral flux ([`flux`]), sampled once per video frame into
//! an onset envelope and turned into each frame's progress along the walk ([`timing`]), so
//! the walk surges on beats and drifts between them. The walk's length is the sound's.
//!
//! [`Soundtrack::read`] reads and analyses the whole file up front (about a second for a
//! song), so a file that cannot time a walk (unreadable, not audio, silent) is refused
//! before any other work, by name.

mod decode;
mod flux;
mod timing;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use timing::{walk_progress, RELEASE_SECONDS, STEADY_SHARE};

/// Peaks below this are silence (-60 dBFS): nothing to time a walk to.
pub const SILENCE_PEAK: f32 = 0.001;

/// Log filter directives that keep symphonia's own log lines (a probe that finds no format,
/// a packet that does not decode) out of the way: [`Soundtrack::read`] reports each of those
/// once, as its error, naming the file.
pub const QUIET_SYMPHONIA_LOG_DIRECTIVES: &str = "symphonia_core=off,symphonia_metadata=off,\
symphonia_format_riff=off,symphonia_format_ogg=off,symphonia_bundle_flac=off,\
symphonia_bundle_mp3=off,symphonia_codec_pcm=off,symphonia_codec_vorbis=off";

/// Why a file cannot time a walk; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    /// Why, in the message rather than a `source()`, so that it is printed once.
    #[error("audio file {}: cannot open it: {error}", path.display())]
    Open {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "audio file {}: not a WAV, FLAC, MP3 or Ogg Vorbis file dreamwalk can read ({reason})",
        path.display()
    )]
    Unsupported { path: PathBuf, reason: String },
    #[error("audio file {}: damaged: {reason}", path.display())]
    Damaged { path: PathBuf, reason: String },
    #[error("audio file {}: holds no sound (0 samples)", path.display())]
    Empty { path: PathBuf },
    /// The loudest sample, in dBFS.
    #[error(
        "audio file {}: silent (its loudest sample is {peak_db:.0} dBFS): there is nothing to time the walk to",
        path.display()
    )]
    Silent { path: PathBuf, peak_db: f64 },
    #[error(
        "audio file {}: lasts {seconds:.3} s, shorter than two frames at {fps} fps",
        path.display()
    )]
    TooShort {
        path: PathBuf,
        seconds: f64,
        fps: u32,
    },
}

/// An audio file, read and analysed: its length and its onsets (spectral flux every few
/// milliseconds), ready to time a walk at any frame rate. Cheap to clone.
#[derive(Clone)]
pub struct Soundtrack {
    path: PathBuf,
    sample_rate: u32,
    channels: usize,
    /// Samples per channel.
    samples: u64,
    peak: f32,
    flux: Arc<[f32]>,
    times: timing::HopTimes,
}

impl Soundtrack {
    /// Reads and analyses `path`. Refuses, naming the file, what cannot be opened, is not
    /// WAV / FLAC / MP3 / Ogg Vorbis, does not decode, holds no samples, or is silent (peak
    /// under [`SILENCE_PEAK`]).
    pub fn read(path: &Path) -> Result<Self, AudioError> {
        let mut analyzer: Option<flux::FluxAnalyzer> = None;
        let decoded = decode::decode_mono(path, |rate, samples| {
            analyzer
                .get_or_insert_with(|| flux::FluxAnalyzer::new(rate))
                .push(samples);
        })?;
        let owned = || path.to_path_buf();
        let Some(analyzer) = analyzer.filter(|_| decoded.frames > 0) else {
            return Err(AudioError::Empty { path: owned() });
        };
        if decoded.peak < SILENCE_PEAK {
            let peak_db = 20.0 * f64::from(decoded.peak).log10();
            return Err(AudioError::Silent {
                path: owned(),
                peak_db: peak_db.max(-200.0),
            });
        }
        let rate = f64::from(decoded.sample_rate);
        // Hop j's window ends at sample j*hop; a sound entering it raises the flux most a
        // quarter window in (where the Hann window rises fastest), so that is its time.
        let times = timing::HopTimes {
            hop_seconds: analyzer.hop() as f64 / rate,
            offset_seconds: analyzer.window() as f64 / 4.0 / rate,
        };
        Ok(Self {
            path: owned(),
            sample_rate: decoded.sample_rate,
            channels: decoded.channels,
            samples: decoded.frames,
            peak: decoded.peak,
            flux: analyzer.finish().into(),
            times,
        })
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its length in seconds.
    pub fn duration_s(&self) -> f64 {
        self.samples as f64 / f64::from(self.sample_rate)
    }

    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    pub fn channels(&self) -> usize {
        self.channels
    }

    /// The loudest sample, 0 to 1 (full scale).
    pub fn peak(&self) -> f32 {
        self.peak
    }

    /// Video frames that last as long as the sound at `fps`: `round(duration x fps)`, so the
    /// two differ by half a frame at most. Two at least ([`AudioError::TooShort`]).
    pub fn frames(&self, fps: u32) -> Result<usize, AudioError> {
        let frames = (self.duration_s() * f64::from(fps)).round();
        if frames < 2.0 {
            return Err(AudioError::TooShort {
                path: self.path.clone(),
                seconds: self.duration_s(),
                fps,
            });
        }
        Ok(frames as usize)
    }

    /// The onset envelope: one value per video frame at `fps` ([`Self::frames`] of them),
    /// the spectral flux in that frame's time, with a short release ([`RELEASE_SECONDS`]).
    pub fn onset_envelope(&self, fps: u32) -> Result<Vec<f32>, AudioError> {
        let frames = self.frames(fps)?;
        Ok(timing::onset_envelope(
            &self.flux,
            self.times,
            frames,
            f64::from(fps),
        ))
    }

    /// Each video frame's share of the walk covered at `fps`, from the onset envelope (see
    /// [`walk_progress`]): 0 at the first frame, 1 at the last of an open walk, one advance
    /// short of 1 for a `closed` (looping) one.
    pub fn walk_progress(&self, fps: u32, closed: bool) -> Result<Vec<f64>, AudioError> {
        Ok(walk_progress(&self.onset_envelope(fps)?, closed))
    }
}

impl std::fmt::Debug for Soundtrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Soundtrack")
            .field("path", &self.path)
            .field("seconds", &self.duration_s())
            .field("sample_rate", &self.sample_rate)
            .field("channels", &self.channels)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Display for Soundtrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({:.2} s, {} Hz, {} channel{})",
            self.path.display(),
            self.duration_s(),
            self.sample_rate,
            self.channels,
            if self.channels == 1 { "" } else { "s" }
        )
    }
}
