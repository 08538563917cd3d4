//! Audio-timed walks: a synthetic click track (written here as a WAV) times a walk, the walk's
//! progress gathers at the clicks, the render lasts as long as the sound and carries it
//! (ffprobe sees the stream), and audio that cannot time a walk is refused by name before
//! any work.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use candle_core::{Device, Tensor};

use dreamwalk::audio::{Soundtrack, STEADY_SHARE};
use dreamwalk::model::scripted::ScriptedEngine;
use dreamwalk::model::{DecoderKind, EndpointRequest, Engine};
use dreamwalk::pipeline::{Inbetweens, Settings};
use dreamwalk::record::{AudioPlan, RecordOptions};
use dreamwalk::upscale::UpscaleMode;
use dreamwalk::usecase::{render, RenderJob, RenderSummary};
use dreamwalk::walk::{Interp, LoopMode, Timeline, Walk, WalkSettings};

use crate::support::ffmpeg::{ffmpeg, require_ffprobe};
use crate::support::images::{png_files, read_png_rgb};
use crate::support::process::dreamwalk;

const RATE: u32 = 44_100;
const FPS: u32 = 30;
const SECONDS: f64 = 4.0;
/// The video frames the clicks fall in (each in the middle of its frame).
const CLICK_FRAMES: [usize; 4] = [15, 45, 75, 105];

/// A mono 16-bit PCM WAV file, written by hand.
fn write_wav(path: &Path, rate: u32, samples: &[f32]) {
    let data_len = (samples.len() * 2) as u32;
    let mut bytes = Vec::with_capacity(44 + samples.len() * 2);
    bytes.extend_from_slice(b"RIFF");
    bytes.extend_from_slice(&(36 + data_len).to_le_bytes());
    bytes.extend_from_slice(b"WAVEfmt ");
    bytes.extend_from_slice(&16u32.to_le_bytes());
    bytes.extend_from_slice(&1u16.to_le_bytes()); // PCM
    bytes.extend_from_slice(&1u16.to_le_bytes()); // mono
    bytes.extend_from_slice(&rate.to_le_bytes());
    bytes.extend_from_slice(&(rate * 2).to_le_bytes());
    bytes.extend_from_slice(&2u16.to_le_bytes());
    bytes.extend_from_slice(&16u16.to_le_bytes());
    bytes.extend_from_slice(b"data");
    bytes.extend_from_slice(&data_len.to_le_bytes());
    for &s in samples {
        let value = (s.clamp(-1.0, 1.0) * 32767.0).round() as i16;
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

/// Four seconds of silence with a click (3 ms of decaying noise) in the middle of each of
/// [`CLICK_FRAMES`].
fn click_track() -> Vec<f32> {
    let mut samples = vec![0f32; (SECONDS * f64::from(RATE)) as usize];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for frame in CLICK_FRAMES {
        let start = ((frame as f64 + 0.5) / f64::from(FPS) * f64::from(RATE)) as usize;
        for i in 0..(RATE as usize * 3 / 1000) {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let noise = ((state >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0;
            let decay = (-(i as f32) / (RATE as f32 * 0.001)).exp();
            samples[start + i] = 0.8 * noise * decay;
        }
    }
    samples
}

fn click_wav(dir: &Path) -> PathBuf {
    let path = dir.join("clicks.wav");
    write_wav(&path, RATE, &click_track());
    path
}

/// Per frame, how far the walk moved since the frame before (frame 0: 0).
fn advances(progress: &[f64]) -> Vec<f64> {
    std::iter::once(0.0)
        .chain(progress.windows(2).map(|w| w[1] - w[0]))
        .collect()
}

/// The share of `advance` in the four frames from each click on (the click's frame and the
/// surge's release), of 120 frames.
fn share_at_clicks(advance: &[f64]) -> f64 {
    let total: f64 = advance.iter().sum();
    let near: f64 = CLICK_FRAMES
        .iter()
        .map(|&c| advance[c..c + 4].iter().sum::<f64>())
        .sum();
    near / total
}

#[test]
fn a_click_track_concentrates_walk_progress_at_the_clicks() {
    let dir = tempfile::tempdir().unwrap();
    let track = Soundtrack::read(&click_wav(dir.path())).expect("the click track reads");
    assert!((track.duration_s() - SECONDS).abs() < 1e-9);
    assert_eq!((track.sample_rate(), track.channels()), (RATE, 1));
    assert_eq!(track.frames(FPS).unwrap(), 120);

    let envelope = track.onset_envelope(FPS).unwrap();
    let mut loudest: Vec<usize> = (0..envelope.len()).collect();
    loudest.sort_by(|&a, &b| envelope[b].total_cmp(&envelope[a]));
    let mut top = loudest[..4].to_vec();
    top.sort();
    assert_eq!(top, CLICK_FRAMES, "the onsets are the clicks' frames");

    let progress = track.walk_progress(FPS, false).unwrap();
    assert_eq!(progress.len(), 120);
    assert_eq!((progress[0], progress[119]), (0.0, 1.0));
    let advance = advances(&progress);
    // 16 of 120 frames (13%) hold the clicks and their release; a walk that ignored the
    // sound would move 13% there. The clicks carry all but the steady share (25%): measured
    // 0.755; 0.7 leaves room for the analysis' details, far from 0.13.
    let share = share_at_clicks(&advance);
    eprintln!("{share:.3} of the walk's progress in the click frames");
    assert!(share > 0.7, "{share:.3} of the walk at the clicks");
    // Between clicks, once a surge has died away (12 frames, 0.4 s), the walk drifts at the
    // steady pace.
    let steady = STEADY_SHARE / 119.0;
    for i in (27..44).chain(57..74) {
        let ratio = advance[i] / steady;
        assert!(
            (0.999..1.01).contains(&ratio),
            "frame {i}: {ratio} x the steady pace"
        );
    }
    // A loop's lap ends one advance short of the start, and that advance is frame 0's.
    let closed = track.walk_progress(FPS, true).unwrap();
    assert!(closed[119] < 1.0);
    let closing = 1.0 - closed[119];
    assert!(
        (closing / (STEADY_SHARE / 120.0) - 1.0).abs() < 0.01,
        "{closing}"
    );
}

#[test]
fn a_timeline_places_each_frame_by_its_index_alone() {
    let latents: Vec<Tensor> = (0..3)
        .map(|i| Tensor::full(i as f32, (1, 4, 2, 2), &Device::Cpu).unwrap())
        .collect();
    let timeline = Timeline::new(vec![0.0, 0.1, 0.5, 0.75]).unwrap();
    let timed = |loop_mode| {
        let settings = WalkSettings {
            loop_mode,
            ..Default::default()
        };
        Walk::new(latents.clone(), settings).with_timeline(Some(timeline.clone()))
    };
    let place = |w: &Walk, i: usize| {
        let p = w.position(i);
        p.segment as f64 + p.t
    };
    // Once: 2 pairs, first to last keyframe; the walk ends with the timeline.
    let once = timed(LoopMode::Once);
    assert_eq!(once.path_len(), 4);
    assert_eq!(once.frames_in_laps(5), 4, "a timed walk has no laps");
    assert_eq!(once.path_index_at(3), Some(3));
    assert_eq!(once.path_index_at(4), None);
    let places: Vec<f64> = (0..4).map(|i| place(&once, i)).collect();
    assert_eq!(places, [0.0, 0.2, 1.0, 1.5]);
    // Endless: 3 pairs around the circle; ping-pong: there (2 pairs) and back.
    let endless = timed(LoopMode::Endless);
    assert!((place(&endless, 3) - 2.25).abs() < 1e-12);
    let pingpong = timed(LoopMode::PingPong);
    assert!((place(&pingpong, 2) - 2.0).abs() < 1e-12);
    assert!((place(&pingpong, 3) - 1.0).abs() < 1e-12);

    // A timeline goes forward, within [0, 1], and has frames.
    assert!(Timeline::new(vec![]).is_err());
    assert!(Timeline::new(vec![0.0, 0.5, 0.4]).is_err());
    assert!(Timeline::new(vec![0.0, 1.5]).is_err());
    assert!(Timeline::new(vec![0.0, f64::NAN]).is_err());
}

#[test]
fn flac_mp3_and_ogg_time_the_walk_as_the_wav_does() {
    let dir = tempfile::tempdir().unwrap();
    let wav = click_wav(dir.path());
    for (extension, codec) in [
        ("flac", "flac"),
        ("mp3", "libmp3lame"),
        ("ogg", "libvorbis"),
    ] {
        let path = dir.path().join(format!("clicks.{extension}"));
        let made = Command::new(ffmpeg())
            .args(["-nostdin", "-v", "error", "-i"])
            .arg(&wav)
            .args(["-c:a", codec])
            .arg(&path)
            .status()
            .expect("ffmpeg runs");
        assert!(made.success(), "ffmpeg made no {extension}");
        let track = Soundtrack::read(&path).unwrap_or_else(|e| panic!("{extension}: {e}"));
        // Lossy codecs pad their last frame: within a video frame of the WAV's length.
        let frames = track.frames(FPS).unwrap() as i64;
        assert!((frames - 120).abs() <= 1, "{extension}: {frames} frames");
        let envelope = track.onset_envelope(FPS).unwrap();
        let mut loudest: Vec<usize> = (0..envelope.len()).collect();
        loudest.sort_by(|&a, &b| envelope[b].total_cmp(&envelope[a]));
        let mut top = loudest[..4].to_vec();
        top.sort();
        assert_eq!(
            top, CLICK_FRAMES,
            "{extension}: the onsets are the clicks' frames"
        );
    }
}

/// Four keyframes (latents 0, 4, 8, 12: grey 0, 80, 160, 240) walked once in a straight
/// line, every frame decoded at its place, at the source size (32x16).
fn settings(loop_mode: LoopMode) -> Settings {
    Settings {
        endpoints: EndpointRequest {
            keyframes: vec!["a".into(), "b".into(), "c".into(), "d".into()],
            negative: String::new(),
            seed: 0,
            seed_per_keyframe: false,
            steps: 1,
            guidance: 1.0,
            image_size: (32, 16),
            init_latents: None,
        },
        walk: WalkSettings {
            interp: Interp::Lerp,
            loop_mode,
            ..Default::default()
        },
        decoder: DecoderKind::Taesd,
        inbetweens: Inbetweens::Fixed(0),
        target_fps: f64::from(FPS),
        upscale: UpscaleMode::None,
        output_size: (32, 16),
        diffuse: 0,
    }
}

fn render_with_audio(audio: &Path, out: &Path, record: RecordOptions) -> RenderSummary {
    let engine: Arc<dyn Engine> = Arc::new(ScriptedEngine::grey());
    let job = RenderJob {
        settings: settings(LoopMode::Once),
        laps: 1,
        out: out.to_path_buf(),
        record: RecordOptions { fps: FPS, ..record },
        save_latents: None,
        audio: Some(Soundtrack::read(audio).unwrap()),
        frames: None,
    };
    render(engine, &job, &mut ()).expect("render")
}

/// ffprobe's streams of `file`: (codec_type, codec_name, duration in seconds).
fn streams(file: &Path) -> Vec<(String, String, f64)> {
    let out = Command::new(require_ffprobe())
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_type,codec_name,duration",
        ])
        .args(["-of", "json"])
        .arg(file)
        .output()
        .expect("ffprobe runs");
    assert!(out.status.success(), "ffprobe {}", file.display());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    json["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let text = |key: &str| s[key].as_str().unwrap_or_default().to_string();
            (
                text("codec_type"),
                text("codec_name"),
                text("duration").parse().unwrap_or(f64::NAN),
            )
        })
        .collect()
}

#[test]
fn an_audio_walk_lasts_as_long_as_the_sound_and_carries_it() {
    let dir = tempfile::tempdir().unwrap();
    let wav = click_wav(dir.path());

    // The walk's frames, exactly (PNG): grey = 240 x progress.
    let folder = dir.path().join("walk");
    let summary = render_with_audio(&wav, &folder, RecordOptions::default());
    assert_eq!(summary.frames_written, 120);
    assert!(
        matches!(&summary.record.audio, AudioPlan::Left(why) if why.contains("PNG sequence holds no sound")),
        "{}",
        summary.record
    );
    let greys: Vec<f64> = png_files(&folder)
        .iter()
        .map(|png| f64::from(read_png_rgb(png).2[0]))
        .collect();
    assert_eq!((greys[0], greys[119]), (0.0, 240.0));
    let share = share_at_clicks(&advances(&greys));
    // As the timeline's 0.755, give or take the grey levels' rounding (1 level in 240 per
    // click window).
    assert!(
        share > 0.7,
        "{share:.3} of the walk's grey change at the clicks"
    );

    // The MP4 carries the sound (AAC), as long as the pictures within a frame.
    let mp4 = dir.path().join("walk.mp4");
    let summary = render_with_audio(&wav, &mp4, RecordOptions::default());
    assert_eq!(summary.frames_written, 120);
    assert!(
        matches!(&summary.record.audio, AudioPlan::Muxed { codec: "AAC", .. }),
        "{}",
        summary.record
    );
    let found = streams(&mp4);
    let video = found
        .iter()
        .find(|s| s.0 == "video")
        .expect("a video stream");
    let audio = found
        .iter()
        .find(|s| s.0 == "audio")
        .expect("an audio stream");
    assert_eq!(audio.1, "aac");
    let frame = 1.0 / f64::from(FPS);
    assert!((video.2 - SECONDS).abs() < 1e-3, "video {} s", video.2);
    assert!(
        (audio.2 - video.2).abs() <= frame,
        "audio {} s, video {} s",
        audio.2,
        video.2
    );
}

#[test]
fn webm_carries_opus_and_what_cannot_hold_sound_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let wav = click_wav(dir.path());

    let webm = dir.path().join("walk.webm");
    let summary = render_with_audio(&wav, &webm, RecordOptions::default());
    assert!(
        matches!(
            &summary.record.audio,
            AudioPlan::Muxed { codec: "Opus", .. }
        ),
        "{}",
        summary.record
    );
    let found = streams(&webm);
    assert!(
        found.iter().any(|s| s.0 == "audio" && s.1 == "opus"),
        "{found:?}"
    );

    // A GIF holds no sound: written all the same, and the summary says so by name.
    let gif = dir.path().join("walk.gif");
    let summary = render_with_audio(&wav, &gif, RecordOptions::default());
    assert_eq!(summary.frames_written, 120);
    let said = summary.record.to_string();
    assert!(
        said.contains("no sound") && said.contains("GIF") && said.contains("clicks.wav"),
        "{said}"
    );

    // So does the built-in MP4 encoder (the one used without ffmpeg).
    let builtin = dir.path().join("builtin.mp4");
    let summary = render_with_audio(
        &wav,
        &builtin,
        RecordOptions {
            force_builtin_encoder: true,
            ..RecordOptions::default()
        },
    );
    assert!(
        matches!(&summary.record.audio, AudioPlan::Left(why) if why.contains("built-in MP4")),
        "{}",
        summary.record
    );
    assert!(streams(&builtin).iter().all(|s| s.0 != "audio"));
}

/// Runs a demo render to a .mp4 with `--audio audio` and `extra`; asserts it was refused
/// before any work (nothing written, no model header printed); returns its stderr.
fn refused(audio: &Path, extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.mp4");
    let result = dreamwalk()
        .args([
            "render",
            "--prompt",
            "a red fox",
            "--prompt",
            "a lighthouse",
        ])
        .args(["--source", "64x64", "--size", "64x64", "--out"])
        .arg(&out)
        .arg("--audio")
        .arg(audio)
        .args(extra)
        .output()
        .expect("run dreamwalk");
    let stderr = String::from_utf8_lossy(&result.stderr).into_owned();
    assert!(!result.status.success(), "{audio:?} was accepted: {stderr}");
    assert!(!stderr.contains("panicked"), "no panic: {stderr}");
    assert!(!out.exists(), "the output was opened");
    assert!(
        !stderr.contains("keyframes |"),
        "the render started: {stderr}"
    );
    stderr
}

#[test]
fn audio_that_cannot_time_a_walk_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let name = |p: &Path| p.display().to_string();

    let missing = dir.path().join("missing.wav");
    let stderr = refused(&missing, &[]);
    assert!(
        stderr.contains(&name(&missing)) && stderr.contains("cannot open"),
        "{stderr}"
    );

    let text = dir.path().join("notes.mp3");
    std::fs::write(&text, "not a song, just words\n".repeat(50)).unwrap();
    let stderr = refused(&text, &[]);
    assert!(
        stderr.contains(&name(&text)) && stderr.contains("not a WAV, FLAC, MP3 or Ogg Vorbis"),
        "{stderr}"
    );

    let silent = dir.path().join("silence.wav");
    write_wav(&silent, RATE, &vec![0.0; RATE as usize]);
    let stderr = refused(&silent, &[]);
    assert!(
        stderr.contains(&name(&silent)) && stderr.contains("silent"),
        "{stderr}"
    );

    let empty = dir.path().join("empty.wav");
    write_wav(&empty, RATE, &[]);
    let stderr = refused(&empty, &[]);
    assert!(
        stderr.contains(&name(&empty)) && stderr.contains("no sound"),
        "{stderr}"
    );

    let blip = dir.path().join("blip.wav");
    write_wav(&blip, RATE, &[0.5; 441]);
    let stderr = refused(&blip, &[]);
    assert!(
        stderr.contains(&name(&blip)) && stderr.contains("shorter than two frames"),
        "{stderr}"
    );

    // The sound sets the walk's length and places every frame: no laps, no in-betweens.
    let wav = click_wav(dir.path());
    for extra in [["--laps", "2"], ["--inbetween", "3"]] {
        let stderr = refused(&wav, &extra);
        assert!(
            stderr.contains("cannot be used with"),
            "{extra:?}: {stderr}"
        );
    }
}
