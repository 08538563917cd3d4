//! Reading an audio file with symphonia: WAV, FLAC, MP3 or Ogg Vorbis, decoded packet by
//! packet and mixed down to mono, handed on as it comes (an hour of audio is never held).

use std::fs::File;
use std::io::ErrorKind;
use std::path::Path;

use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;

use super::AudioError;

/// What a file held, besides the samples handed on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Decoded {
    pub sample_rate: u32,
    pub channels: usize,
    /// Samples per channel.
    pub frames: u64,
    /// The largest sample magnitude of any channel, 0 to 1 (full scale).
    pub peak: f32,
}

/// Decodes `path`'s first audio track, passing each packet's samples to `mono` mixed down to
/// one channel (the mean of the channels), at the file's own rate. A packet that does not
/// decode is skipped, as players do; a file none of whose packets decodes is an error.
pub(super) fn decode_mono(
    path: &Path,
    mut mono: impl FnMut(u32, &[f32]),
) -> Result<Decoded, AudioError> {
    let file = File::open(path).map_err(|error| AudioError::Open {
        path: path.to_path_buf(),
        error,
    })?;
    if file.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(AudioError::Open {
            path: path.to_path_buf(),
            error: std::io::Error::new(ErrorKind::IsADirectory, "a folder, not a file"),
        });
    }
    let stream = MediaSourceStream::new(Box::new(file), Default::default());
    let mut hint = Hint::new();
    if let Some(extension) = path.extension().and_then(|e| e.to_str()) {
        hint.with_extension(extension);
    }
    let unsupported = |reason: String| AudioError::Unsupported {
        path: path.to_path_buf(),
        reason,
    };
    let mut format = symphonia::default::get_probe()
        .probe(
            &hint,
            stream,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(|e| unsupported(e.to_string()))?;
    let track = format
        .default_track(TrackType::Audio)
        .ok_or_else(|| unsupported("it has no audio track".to_string()))?;
    let track_id = track.id;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or_else(|| unsupported("its audio track describes no codec".to_string()))?;
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(params, &AudioDecoderOptions::default())
        .map_err(|e| unsupported(e.to_string()))?;

    let damaged = |reason: String| AudioError::Damaged {
        path: path.to_path_buf(),
        reason,
    };
    let mut decoded = Decoded {
        sample_rate: 0,
        channels: 0,
        frames: 0,
        peak: 0.0,
    };
    let (mut interleaved, mut mixed) = (Vec::<f32>::new(), Vec::<f32>::new());
    let (mut packets, mut bad_packets) = (0u64, 0u64);
    let mut first_error = None;
    loop {
        let packet = match format.next_packet() {
            Ok(Some(packet)) => packet,
            Ok(None) => break,
            // Some streams end without saying so.
            Err(SymphoniaError::IoError(e)) if e.kind() == ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(damaged(e.to_string())),
        };
        if packet.track_id != track_id {
            continue;
        }
        packets += 1;
        let buffer = match decoder.decode(&packet) {
            Ok(buffer) => buffer,
            Err(SymphoniaError::DecodeError(e)) => {
                bad_packets += 1;
                first_error.get_or_insert(e);
                continue;
            }
            Err(e) => return Err(damaged(e.to_string())),
        };
        let spec = buffer.spec();
        let (rate, channels) = (spec.rate(), spec.channels().count().max(1));
        if decoded.sample_rate == 0 {
            decoded.sample_rate = rate;
            decoded.channels = channels;
        } else if rate != decoded.sample_rate {
            return Err(damaged(format!(
                "its sample rate changes mid-stream ({} Hz, then {rate} Hz)",
                decoded.sample_rate
            )));
        }
        buffer.copy_to_vec_interleaved(&mut interleaved);
        mixed.clear();
        mixed.extend(
            interleaved
                .chunks_exact(channels)
                .map(|frame| frame.iter().sum::<f32>() / channels as f32),
        );
        let peak = interleaved.iter().fold(0f32, |m, &s| m.max(s.abs()));
        decoded.peak = decoded.peak.max(peak);
        decoded.frames += mixed.len() as u64;
        mono(rate, &mixed);
    }
    if packets > 0 && bad_packets == packets {
        return Err(damaged(format!(
            "none of its {packets} packets decodes ({})",
            first_error.unwrap_or("malformed")
        )));
    }
    if bad_packets > 0 {
        tracing::warn!(
            "{}: {bad_packets} of {packets} audio packets did not decode and were skipped",
            path.display()
        );
    }
    Ok(decoded)
}
