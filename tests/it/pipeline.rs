//! The pipeline's threads end to end with a fake engine (no model): order, counts,
//! live settings, pause, the loop cache, the display consumer and shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dreamwalk::model::scripted::ScriptedEngine;
use dreamwalk::model::{DecoderKind, EndpointRequest, Engine};
use dreamwalk::pipeline::display::Display;
use dreamwalk::pipeline::{Inbetweens, Pipeline, PipelineOptions, Popped, RingPolicy, Settings};
use dreamwalk::upscale::UpscaleMode;
use dreamwalk::walk::{LoopMode, WalkSettings};

/// Keyframe i is a latent full of the value 4i (plus the seed); decoding paints the latent
/// mean as a grey level, so frames along a walk are distinguishable and predictable.
fn fake_engine(decode_delay: Duration) -> Arc<ScriptedEngine> {
    Arc::new(ScriptedEngine::grey().with_decode_delay(decode_delay))
}

fn settings(steps_between: usize, inbetweens: usize, loop_mode: LoopMode) -> Settings {
    Settings {
        endpoints: EndpointRequest {
            keyframes: vec!["a".into(), "b".into(), "c".into()],
            negative: String::new(),
            seed: 0,
            seed_per_keyframe: false,
            steps: 2,
            guidance: 1.0,
            image_size: (32, 16),
            init_latents: None,
        },
        walk: WalkSettings {
            steps_between,
            loop_mode,
            ..Default::default()
        },
        decoder: DecoderKind::Taesd,
        inbetweens: Inbetweens::Fixed(inbetweens),
        target_fps: 30.0,
        upscale: UpscaleMode::Cpu,
        output_size: (64, 40),
        diffuse: 0,
    }
}

fn render_options() -> PipelineOptions {
    PipelineOptions {
        ring_capacity: 4,
        policy: RingPolicy::Record,
        upscale_workers: 3,
        stop_at_end: true,
        ..Default::default()
    }
}

fn drain(pipeline: &Pipeline) -> Vec<Arc<dreamwalk::pipeline::Frame>> {
    std::iter::from_fn(|| pipeline.ring().pop()).collect()
}

#[test]
fn a_once_walk_yields_every_frame_in_order() {
    let engine = fake_engine(Duration::ZERO);
    let pipeline = Pipeline::start(
        engine.clone(),
        settings(4, 3, LoopMode::Once),
        render_options(),
    );
    let frames = drain(&pipeline);
    // 3 keyframes, 4 steps between: 9 decoded frames, 8 gaps of 3 in-betweens.
    assert_eq!(frames.len(), 9 + 8 * 3);
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f.index, i as u64);
        assert_eq!(f.image.size(), (64, 40), "upscaled to the output size");
    }
    // Decoded frames sit every 4th position; grey levels rise monotonically along the walk.
    let greys: Vec<u8> = frames
        .iter()
        .map(|f| f.image.to_cpu().unwrap().pixels[0])
        .collect();
    assert!(greys.windows(2).all(|w| w[0] <= w[1]), "{greys:?}");
    assert_eq!(frames[4].source.inbetween, None);
    assert_eq!(frames[5].source.inbetween, Some((0, 3)));
    assert_eq!(engine.decodes(), 9);
    let stats = pipeline.stats_snapshot();
    assert_eq!(stats.frames_produced, 33);
    assert_eq!(stats.frames_decoded, 9);
}

#[test]
fn a_pingpong_lap_replays_from_the_cache() {
    let engine = fake_engine(Duration::ZERO);
    let options = PipelineOptions {
        laps: 2,
        ..render_options()
    };
    let pipeline = Pipeline::start(engine.clone(), settings(3, 0, LoopMode::PingPong), options);
    let frames = drain(&pipeline);
    // Path of 7 positions; two laps there and back: 2 * 2 * 6 + 1 frames.
    assert_eq!(frames.len(), 25);
    assert_eq!(engine.decodes(), 7, "each position decoded once");
    assert_eq!(pipeline.stats_snapshot().frames_from_cache, 18);
    assert_eq!(
        frames[0].image.to_cpu().unwrap().pixels,
        frames[12].image.to_cpu().unwrap().pixels,
        "back at the start"
    );
}

#[test]
fn live_settings_reach_the_next_frames() {
    let engine = fake_engine(Duration::ZERO);
    let mut s = settings(50, 0, LoopMode::Once);
    s.upscale = UpscaleMode::None;
    let pipeline = Pipeline::start(engine, s, render_options());
    let first = pipeline.ring().pop().unwrap();
    assert_eq!(first.image.size(), (32, 16));
    pipeline.update_settings(|s| {
        s.inbetweens = Inbetweens::Fixed(2);
        s.upscale = UpscaleMode::Cpu;
    });
    // The buffer holds at most capacity frames made with the old settings.
    let frames = drain(&pipeline);
    let late = &frames[frames.len() - 10..];
    assert!(late.iter().any(|f| f.source.inbetween == Some((1, 2))));
    assert!(late.iter().all(|f| f.image.size() == (64, 40)));
    for (a, b) in frames.windows(2).map(|w| (w[0].index, w[1].index)) {
        assert_eq!(b, a + 1);
    }
}

#[test]
fn new_prompts_sample_new_endpoints_while_the_walk_goes_on() {
    let engine = fake_engine(Duration::ZERO);
    let options = PipelineOptions {
        stop_at_end: false,
        ..render_options()
    };
    let pipeline = Pipeline::start(engine.clone(), settings(1000, 0, LoopMode::Once), options);
    let first = pipeline.ring().pop().unwrap();
    assert_eq!(first.source.generation, 1);
    pipeline.update_settings(|s| s.endpoints.seed = 7);
    // Keep consuming: frames keep coming, and soon they come from the new endpoints.
    let deadline = Instant::now() + Duration::from_secs(20);
    let switched = loop {
        let f = pipeline.ring().pop().unwrap();
        if f.source.generation == 2 {
            break f;
        }
        assert!(Instant::now() < deadline, "new endpoints never arrived");
    };
    assert!(
        switched.image.to_cpu().unwrap().pixels[0] >= 7 * 20,
        "seed 7 shifts the grey level"
    );
    // A new seed changes every keyframe: three, twice.
    assert_eq!(engine.keyframes_sampled(), 6);
    // A change that needs no new endpoints samples nothing.
    pipeline.update_settings(|s| s.target_fps = 12.0);
    assert_eq!(engine.keyframes_sampled(), 6);
}

#[test]
fn pause_stops_frames_and_resume_goes_on() {
    let engine = fake_engine(Duration::from_millis(1));
    let options = PipelineOptions {
        stop_at_end: false,
        ring_capacity: 2,
        ..render_options()
    };
    let pipeline = Pipeline::start(engine.clone(), settings(1000, 0, LoopMode::Once), options);
    let first = pipeline.ring().pop().unwrap();
    pipeline.pause();
    // Drain what was already in flight, then nothing more comes.
    while let Popped::Frame(_) = pipeline
        .ring()
        .pop_by(Instant::now() + Duration::from_millis(300))
    {}
    let decodes = engine.decodes();
    assert!(matches!(
        pipeline
            .ring()
            .pop_by(Instant::now() + Duration::from_millis(300)),
        Popped::Late
    ));
    assert_eq!(engine.decodes(), decodes, "no decoding while paused");
    pipeline.resume();
    let next = pipeline.ring().pop().unwrap();
    assert!(next.index > first.index);
}

#[test]
fn shutdown_joins_while_producers_are_blocked_on_a_full_ring() {
    let engine = fake_engine(Duration::ZERO);
    let options = PipelineOptions {
        stop_at_end: false,
        ring_capacity: 2,
        ..render_options()
    };
    let pipeline = Pipeline::start(engine.clone(), settings(1000, 2, LoopMode::Once), options);
    // Nobody consumes: wait until the ring is full and the stages behind it are stuck.
    while pipeline.ring().fill() < 2 {
        std::thread::yield_now();
        let _ = pipeline
            .ring()
            .pop_by(Instant::now() + Duration::from_millis(5))
            .is_late();
    }
    let started = Instant::now();
    pipeline.shutdown();
    // Every thread joined (shutdown returned); "promptly" is a functional bound, not a
    // timing test: it must not wait for the 1000-step walk to finish.
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn display_shows_frames_in_order_and_counts_underruns() {
    // Decoding (30 ms) is slower than the display (100 fps): underruns must be counted.
    let engine = fake_engine(Duration::from_millis(30));
    let mut s = settings(1000, 0, LoopMode::Once);
    s.target_fps = 100.0;
    s.upscale = UpscaleMode::Gpu;
    let options = PipelineOptions {
        stop_at_end: false,
        policy: RingPolicy::Display,
        ..render_options()
    };
    let pipeline = Pipeline::start(engine, s, options);
    let (tx, rx) = crossbeam_channel::unbounded();
    let display = Display::start(&pipeline, Box::new(move |f| tx.send(f.index).unwrap()));
    let shown: Vec<u64> = rx.iter().take(20).collect();
    assert_eq!(shown, (0..20).collect::<Vec<_>>());
    let stats = pipeline.stats_snapshot();
    assert!(stats.frames_shown >= 20);
    assert!(stats.underruns > 0, "a starved display counts underruns");
    assert!(display.current.get().is_some());
    drop(display);
    pipeline.shutdown();
}

#[test]
fn the_sampled_keyframes_get_thumbnails_when_asked() {
    let engine = fake_engine(Duration::ZERO);
    let s = settings(2, 0, LoopMode::Once);
    let options = PipelineOptions {
        keyframe_thumbnails: Some(8),
        ..render_options()
    };
    let pipeline = Pipeline::start(engine.clone(), s.clone(), options);
    drain(&pipeline);
    // Made after the walk got its keyframes: wait for them (a few decodes at most).
    let deadline = Instant::now() + Duration::from_secs(20);
    let thumbnails = loop {
        if let Some(t) = pipeline.keyframe_thumbnails() {
            break t;
        }
        assert!(Instant::now() < deadline, "no thumbnails made");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(thumbnails.generation, pipeline.stats_snapshot().generation);
    assert_eq!(thumbnails.keyframes, s.endpoints.keyframes);
    // Each is the keyframe's latents decoded (TAESD) and shrunk to 8 pixels wide.
    let latents = engine.endpoints(&s.endpoints, &mut |_| true).unwrap();
    for (i, (image, latent)) in thumbnails.images.iter().zip(&latents).enumerate() {
        let decoded = engine.decode(latent, DecoderKind::Taesd).unwrap();
        let expected = dreamwalk::model::keyframe::thumbnail(&decoded, 8);
        assert_eq!((image.width, image.height), (8, 4), "keyframe {i}");
        assert_eq!(image.pixels, expected.pixels, "keyframe {i}");
        let of = thumbnails.of(i, &s.endpoints.keyframes[i]).map(Arc::as_ptr);
        assert_eq!(of, Some(Arc::as_ptr(image)));
    }
    // Distinct keyframes, distinct pictures; a row that says something else has none.
    assert_ne!(thumbnails.images[0].pixels, thumbnails.images[2].pixels);
    assert!(thumbnails.of(0, &"another prompt".into()).is_none());
    assert!(thumbnails.of(3, &s.endpoints.keyframes[0]).is_none());
    // Without the option (render), none are made.
    let plain = Pipeline::start(engine, s, render_options());
    drain(&plain);
    assert!(plain.keyframe_thumbnails().is_none());
}
