//! Seamless loops: an endless render of N laps is N whole laps whose last frame is one step
//! before the first, and a viewer recording of an endless loop is whole laps too.
//!
//! The scripted engine paints the latent mean x 20 as grey, so with keyframes of latents 0
//! and 4 and a straight-line walk, a frame's grey level is where it is on the walk: 0 at the
//! first keyframe, 80 at the second. Every step of the walk changes it by the same amount.

use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use dreamwalk::app::{LapGate, Session};
use dreamwalk::model::scripted::ScriptedEngine;
use dreamwalk::model::{DecoderKind, EndpointRequest, Engine};
use dreamwalk::pipeline::{Inbetweens, Settings};
use dreamwalk::record::RecordOptions;
use dreamwalk::upscale::UpscaleMode;
use dreamwalk::usecase::{render, RenderJob};
use dreamwalk::walk::{Interp, LoopMode, Walk, WalkSettings};

use crate::support::images::{png_files, read_png_rgb};
use crate::support::y4m::read_y4m;

/// Two keyframes (latents 0 and 4: grey 0 and 80), a straight-line walk of `steps` steps
/// per pair, `inbetweens` in-betweens, frames at the source size (32x16).
fn settings(steps: usize, inbetweens: usize, loop_mode: LoopMode, fps: f64) -> Settings {
    Settings {
        endpoints: EndpointRequest {
            keyframes: vec!["a".into(), "b".into()],
            negative: String::new(),
            seed: 0,
            seed_per_keyframe: false,
            steps: 1,
            guidance: 1.0,
            image_size: (32, 16),
            init_latents: None,
        },
        walk: WalkSettings {
            steps_between: steps,
            interp: Interp::Lerp,
            loop_mode,
            ..Default::default()
        },
        decoder: DecoderKind::Taesd,
        inbetweens: Inbetweens::Fixed(inbetweens),
        target_fps: fps,
        upscale: UpscaleMode::None,
        output_size: (32, 16),
        diffuse: 0,
    }
}

/// Renders `laps` laps to a PNG folder; every frame's grey level.
fn render_greys(settings: Settings, laps: u64) -> Vec<u8> {
    let engine: Arc<dyn Engine> = Arc::new(ScriptedEngine::grey());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("walk");
    let job = RenderJob {
        settings,
        laps,
        out: out.clone(),
        record: RecordOptions::default(),
        save_latents: None,
        audio: None,
        frames: None,
    };
    let summary = render(engine, &job, &mut ()).expect("render");
    let greys: Vec<u8> = png_files(&out)
        .iter()
        .map(|png| read_png_rgb(png).2[0])
        .collect();
    assert_eq!(greys.len() as u64, summary.frames_written);
    greys
}

/// The step from each frame to the next, and from the last back to the first (a player
/// looping the file), in grey levels.
fn steps_around(greys: &[u8]) -> Vec<i32> {
    (0..greys.len())
        .map(|i| i32::from(greys[(i + 1) % greys.len()]) - i32::from(greys[i]))
        .collect()
}

fn walk(keyframes: usize, steps: usize, loop_mode: LoopMode) -> Walk {
    let latents = (0..keyframes)
        .map(|i| Tensor::full(i as f32, (1, 4, 2, 2), &Device::Cpu).unwrap())
        .collect();
    Walk::new(
        latents,
        WalkSettings {
            steps_between: steps,
            loop_mode,
            ..Default::default()
        },
    )
}

#[test]
fn an_endless_walk_counts_whole_laps_and_marks_their_starts() {
    let endless = walk(2, 2, LoopMode::Endless);
    // 4 positions around the circle; a lap is those 4, not a 5th back on the first.
    assert_eq!(endless.path_len(), 4);
    assert_eq!(endless.frames_in_laps(1), 4);
    assert_eq!(endless.frames_in_laps(3), 12);
    let starts: Vec<u64> = (0..12).filter(|&i| endless.starts_lap(i)).collect();
    assert_eq!(starts, [0, 4, 8]);
    assert!(endless.closes_loop());
    for other in [LoopMode::Once, LoopMode::PingPong] {
        let w = walk(2, 2, other);
        assert!(
            !w.closes_loop() && (0..12).all(|i| !w.starts_lap(i)),
            "{other:?}"
        );
    }
}

#[test]
fn one_endless_lap_ends_one_step_before_its_first_frame() {
    // 4 steps per pair, 2 pairs around the circle: 8 positions, grey 0, 20, .. 80, .. 20.
    let greys = render_greys(settings(4, 0, LoopMode::Endless, 30.0), 1);
    assert_eq!(greys, [0, 20, 40, 60, 80, 60, 40, 20]);
    // Looped, the seam is a step like any other (20 levels), with no repeated frame.
    let steps = steps_around(&greys);
    assert!(steps.iter().all(|s| s.abs() == 20), "{steps:?}");
}

#[test]
fn in_betweens_close_the_loop_too() {
    // One in-between per step, and one between the last frame and the first: 16 frames, each
    // 10 levels from the next, the last (10) leading back to the first (0).
    let greys = render_greys(settings(4, 1, LoopMode::Endless, 30.0), 1);
    assert_eq!(greys.len(), 16, "{greys:?}");
    assert_eq!((greys[0], greys[15]), (0, 10), "{greys:?}");
    let steps = steps_around(&greys);
    assert!(steps.iter().all(|s| s.abs() == 10), "{steps:?}");

    // Two laps are the first twice over.
    let two = render_greys(settings(4, 1, LoopMode::Endless, 30.0), 2);
    assert_eq!(two.len(), 32);
    assert_eq!(two[..16], two[16..]);
    assert_eq!(two[..16], greys[..]);
}

#[test]
fn a_walk_played_once_still_ends_on_its_last_keyframe() {
    let greys = render_greys(settings(4, 1, LoopMode::Once, 30.0), 1);
    assert_eq!(greys.len(), 9);
    assert_eq!((greys[0], greys[8]), (0, 80), "{greys:?}");
}

/// Polls the session until `done` holds (the display thread plays on meanwhile).
fn wait_for(session: &mut Session, what: &str, mut done: impl FnMut(&mut Session) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done(session) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_viewer_recording_of_an_endless_loop_is_whole_laps() {
    // A lap: 8 positions x (1 + 1 in-between) = 16 frames, played fast.
    let lap = 16;
    let engine: Arc<dyn Engine> = Arc::new(ScriptedEngine::grey());
    let mut session = Session::new(engine);
    session.play(settings(4, 1, LoopMode::Endless, 240.0), Box::new(|_| {}));
    // Record from mid-walk: the recording waits for the next lap to start.
    wait_for(&mut session, "frames shown", |s| {
        s.current_frame().is_some_and(|f| f.index >= 5)
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("loop.y4m");
    let options = RecordOptions {
        fps: 240,
        size: Some((32, 16)),
        ..RecordOptions::default()
    };
    session
        .start_recording(&out, options)
        .expect("recording starts");
    wait_for(&mut session, "a lap and a bit recorded", |s| {
        s.recording()
            .is_some_and(|r| r.gate == LapGate::Recording && r.frames >= lap + 3)
    });
    // Stop: the recording finishes its lap first.
    assert!(
        session.end_recording().is_none(),
        "an endless loop's recording ends with its lap"
    );
    let mut outcome = None;
    wait_for(&mut session, "the lap to end", |s| {
        outcome = s.poll();
        outcome.is_some()
    });
    let summary = outcome.unwrap().expect("recording finished");
    assert_eq!(summary.frames % lap, 0, "{} frames", summary.frames);
    assert!(summary.frames >= 2 * lap, "{} frames", summary.frames);

    let y4m = read_y4m(&out, 32, 16);
    assert_eq!(y4m.frames.len() as u64, summary.frames);
    // Grey g is luma g in full-range BT.601, so the Y plane's first byte is the grey level.
    let greys: Vec<u8> = y4m.frames.iter().map(|f| f[0]).collect();
    assert_eq!(greys[0], 0, "starts on the first keyframe: {greys:?}");
    assert_eq!(
        *greys.last().unwrap(),
        10,
        "ends a step before it: {greys:?}"
    );
    let steps = steps_around(&greys);
    assert!(steps.iter().all(|s| s.abs() == 10), "{steps:?}");
    // The walk played on.
    assert!(session.current_frame().is_some());
}

#[test]
fn a_viewer_recording_of_a_ping_pong_walk_stops_at_once() {
    let engine: Arc<dyn Engine> = Arc::new(ScriptedEngine::grey());
    let mut session = Session::new(engine);
    session.play(
        settings(400, 0, LoopMode::PingPong, 240.0),
        Box::new(|_| {}),
    );
    wait_for(&mut session, "a frame", |s| s.current_frame().is_some());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("walk.y4m");
    let options = RecordOptions {
        fps: 240,
        size: Some((32, 16)),
        ..RecordOptions::default()
    };
    session
        .start_recording(&out, options)
        .expect("recording starts");
    wait_for(&mut session, "frames recorded", |s| {
        s.recording().is_some_and(|r| r.frames >= 3)
    });
    let summary = session
        .end_recording()
        .expect("a ping-pong recording ends at once")
        .expect("finished");
    assert!(summary.frames >= 3);
}
