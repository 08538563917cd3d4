//! Live control: the pipeline's seek, and OSC over loopback into a headless viewer (its
//! settings change as messages arrive; garbage is counted and ignored; a port in use is
//! refused before the window opens).

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dreamwalk::app::{OscListener, PlayState, ViewerApp, ViewerOptions};
use dreamwalk::model::scripted::ScriptedEngine;
use dreamwalk::model::{DecoderKind, EndpointRequest, Keyframe};
use dreamwalk::pipeline::{Inbetweens, Pipeline, PipelineOptions, RingPolicy, Settings};
use dreamwalk::upscale::UpscaleMode;
use dreamwalk::walk::{LoopMode, Walk, WalkSettings};
use egui_kittest::Harness;
use rosc::{OscMessage, OscPacket, OscType};

use crate::support::process::dreamwalk;
use crate::viewer::{settings, step_until};

#[test]
fn fractions_of_the_walk_are_path_indices_in_every_loop_mode() {
    let keyframes = |n: usize| -> Vec<candle_core::Tensor> {
        (0..n)
            .map(|i| {
                candle_core::Tensor::full(i as f32, (1, 4, 2, 2), &candle_core::Device::Cpu)
                    .unwrap()
            })
            .collect()
    };
    let walk = |n: usize, loop_mode: LoopMode| {
        Walk::new(
            keyframes(n),
            WalkSettings {
                steps_between: 10,
                loop_mode,
                ..Default::default()
            },
        )
    };
    // Three keyframes, 10 steps apart: 20 steps from A to C (21 positions).
    for mode in [LoopMode::Once, LoopMode::PingPong] {
        let w = walk(3, mode);
        assert_eq!(w.path_index_at_fraction(0.0), 0);
        assert_eq!(w.path_index_at_fraction(0.5), 10);
        assert_eq!(w.path_index_at_fraction(0.76), 15);
        assert_eq!(w.path_index_at_fraction(1.0), 20);
        assert_eq!(w.path_index_at_fraction(7.0), 20, "clamped");
        assert_eq!(w.path_index_at_fraction(-1.0), 0, "clamped");
    }
    // Endless: 30 steps around, and 1 is back at the start.
    let w = walk(3, LoopMode::Endless);
    assert_eq!(w.path_index_at_fraction(0.5), 15);
    assert_eq!(w.path_index_at_fraction(1.0), 0);
    assert_eq!(walk(1, LoopMode::Once).path_index_at_fraction(0.7), 0);
}

fn scripted_settings() -> Settings {
    Settings {
        endpoints: EndpointRequest {
            keyframes: vec!["a".into(), "b".into(), "c".into()],
            negative: String::new(),
            seed: 0,
            seed_per_keyframe: false,
            steps: 1,
            guidance: 1.0,
            image_size: (32, 16),
            init_latents: None,
        },
        walk: WalkSettings {
            steps_between: 1000,
            ..Default::default()
        },
        decoder: DecoderKind::Taesd,
        inbetweens: Inbetweens::Fixed(0),
        target_fps: 30.0,
        upscale: UpscaleMode::None,
        output_size: (32, 16),
        diffuse: 0,
    }
}

#[test]
fn seeking_jumps_the_walk_and_it_goes_on_from_there() {
    let engine = Arc::new(ScriptedEngine::grey());
    let options = PipelineOptions {
        ring_capacity: 4,
        policy: RingPolicy::Record,
        upscale_workers: 1,
        ..Default::default()
    };
    let pipeline = Pipeline::start(engine, scripted_settings(), options);
    let first = pipeline.ring().pop().unwrap();
    assert_eq!((first.source.segment, first.source.t), (0, 0.0));
    // 2000 steps from A to C: three quarters is half way from B to C.
    pipeline.seek(0.75);
    // What was made before the seek comes first (the ring, the stages' queues: a few
    // frames), then the walk from its new place, frame after frame.
    let mut popped = 0;
    let jumped = loop {
        let frame = pipeline.ring().pop().unwrap();
        popped += 1;
        assert!(popped < 64, "the seek never showed");
        if frame.source.segment == 1 {
            break frame;
        }
        assert!(frame.source.t < 0.1, "before the seek: {:?}", frame.source);
    };
    assert_eq!((jumped.source.segment, jumped.source.t), (1, 0.5));
    let next = pipeline.ring().pop().unwrap();
    assert_eq!((next.source.segment, next.source.t), (1, 0.501));
    assert_eq!(
        next.index,
        jumped.index + 1,
        "frames stay numbered in order"
    );
}

/// A viewer on the demo model at a small size, listening for OSC on a free loopback port.
fn viewer_with_osc() -> (Harness<'static, ViewerApp>, SocketAddr) {
    let listener = OscListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let address = listener.local_addr();
    let mut app = ViewerApp::headless(ViewerOptions {
        source: Some((256, 160)),
        ..Default::default()
    })
    .with_osc(listener);
    assert!(
        app.wait_for_model(Duration::from_secs(60)),
        "demo model loads"
    );
    let harness = Harness::builder()
        .with_size(egui::vec2(1400.0, 1000.0))
        .build_ui_state(|ui, app: &mut ViewerApp| app.show(ui, None), app);
    (harness, address)
}

fn send(to: SocketAddr, addr: &str, args: Vec<OscType>) {
    let packet = OscPacket::Message(OscMessage {
        addr: addr.into(),
        args,
    });
    send_bytes(to, &rosc::encoder::encode(&packet).unwrap());
}

fn send_bytes(to: SocketAddr, bytes: &[u8]) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.send_to(bytes, to).unwrap();
}

fn position(app: &ViewerApp) -> (usize, f64) {
    app.session()
        .and_then(|s| s.stats())
        .map_or((usize::MAX, f64::NAN), |s| s.position)
}

fn state(app: &ViewerApp) -> PlayState {
    app.session().map_or(PlayState::Stopped, |s| s.state())
}

#[test]
fn osc_messages_over_loopback_drive_the_viewer() {
    let (mut harness, to) = viewer_with_osc();
    let mix = "a red fox:0.7 | a grey wolf:0.3";
    send(
        to,
        "/dreamwalk/keyframe/0/prompt",
        vec![OscType::String(mix.into())],
    );
    send(
        to,
        "/dreamwalk/keyframe/1/prompt",
        vec![OscType::String("a city".into())],
    );
    send(to, "/dreamwalk/play", vec![]);
    step_until(&mut harness, "the walk to play the prompts sent", |app| {
        app.session().and_then(|s| s.settings()).is_some_and(|s| {
            s.endpoints.keyframes == vec![Keyframe::from(mix), Keyframe::from("a city")]
        }) && app.session().and_then(|s| s.current_frame()).is_some()
    });
    assert_eq!(state(harness.state()), PlayState::Playing);

    send(to, "/dreamwalk/seed", vec![OscType::Int(1234)]);
    step_until(&mut harness, "the seed", |app| {
        app.session()
            .and_then(|s| s.settings())
            .is_some_and(|s| s.endpoints.seed == 1234)
    });
    send(to, "/dreamwalk/speed", vec![OscType::Float(200.0)]);
    step_until(&mut harness, "the speed", |app| {
        app.session()
            .and_then(|s| s.settings())
            .is_some_and(|s| s.walk.steps_between == 200)
    });
    send(
        to,
        "/dreamwalk/keyframe/0/weight/1",
        vec![OscType::Double(0.6)],
    );
    step_until(&mut harness, "the mix weight", |app| {
        app.session().and_then(|s| s.settings()).is_some_and(|s| {
            s.endpoints.keyframes[0] == Keyframe::from("a red fox:0.7 | a grey wolf:0.6")
        })
    });

    // Pause (a toggle button's 0), jump far from where the walk is, play (its 1): the
    // next frame decoded is at the place asked for.
    send(to, "/dreamwalk/play", vec![OscType::Float(0.0)]);
    step_until(&mut harness, "the pause", |app| {
        state(app) == PlayState::Paused
    });
    std::thread::sleep(Duration::from_millis(300));
    harness.step();
    let (_, t) = position(harness.state());
    let target = if t < 0.5 { 0.8 } else { 0.2 };
    send(
        to,
        "/dreamwalk/position",
        vec![OscType::Float(target as f32)],
    );
    send(to, "/dreamwalk/play", vec![OscType::Float(1.0)]);
    step_until(&mut harness, "the walk at the place sent", |app| {
        let (segment, t) = position(app);
        // Two keyframes: `target` of the walk is `target` of the way from A to B. The walk
        // goes on from there: the decode stage runs ahead of the display by what the ring
        // and the queues hold, some 20 steps of 1/200, well short of the 0.3 between the
        // target and anywhere the walk was.
        segment == 0 && t >= target - 1e-9 && t < target + 0.15
    });
    let osc = harness.state().osc_stats().unwrap();
    assert_eq!((osc.malformed, osc.ignored), (0, 0), "{osc:?}");

    // Garbage, an unknown address, a keyframe that is not there: counted, ignored, told.
    send_bytes(to, b"this is not OSC at all");
    send(to, "/dreamwalk/dance", vec![]);
    send(
        to,
        "/dreamwalk/keyframe/7/prompt",
        vec![OscType::String("x".into())],
    );
    step_until(&mut harness, "the counts", |app| {
        app.osc_stats()
            .is_some_and(|s| (s.malformed, s.ignored) == (1, 2))
    });
    let notice = harness.state().notice().unwrap_or_default().to_string();
    assert!(
        notice.starts_with("OSC: ignored 1 malformed packets and 2 messages"),
        "{notice}"
    );
    // A negative weight is the settings' refusal, as if typed: the walk plays on.
    send(
        to,
        "/dreamwalk/keyframe/0/weight/0",
        vec![OscType::Float(-1.0)],
    );
    step_until(&mut harness, "the refusal", |app| {
        app.notice().is_some_and(|n| n.contains("weight -1"))
    });
    assert_eq!(
        settings(&harness).endpoints.keyframes[0],
        Keyframe::from("a red fox:0.7 | a grey wolf:0.6")
    );
    assert_eq!(state(harness.state()), PlayState::Playing);
    let osc = harness.state().osc_stats().unwrap();
    assert_eq!((osc.malformed, osc.ignored), (1, 2), "{osc:?}");
    assert!(osc.applied >= 10, "{osc:?}");

    // Closing the window ends the listener: its port is free again.
    drop(harness);
    let deadline = Instant::now() + Duration::from_secs(10);
    while UdpSocket::bind(to).is_err() {
        assert!(Instant::now() < deadline, "the OSC port is still held");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_port_in_use_is_refused_before_the_window_opens() {
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    // No display: were the port not checked first, the window would fail instead.
    let result = dreamwalk()
        .args(["--osc", &address])
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .output()
        .expect("run dreamwalk");
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen for OSC on {address}")),
        "{stderr}"
    );
    assert!(stderr.contains("choose another with --osc"), "{stderr}");
    assert!(!stderr.contains("cannot open the window"), "{stderr}");
}
