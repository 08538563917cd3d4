//! Renders split over machines: `render --frames A..B` makes exactly frames A..B of the walk,
//! byte-identical to the same frames of the whole render (on the built-in demo model, whose
//! random weights still make every frame different), without decoding the frames before A;
//! what cannot be a segment is refused before any output exists; and `join` makes one video
//! of .mp4 segments (ffprobe counts the frames and the time).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dreamwalk::model::scripted::ScriptedEngine;
use dreamwalk::model::{DecoderKind, EndpointRequest, Engine};
use dreamwalk::pipeline::{stream_frames, Inbetweens, Settings};
use dreamwalk::record::RecordOptions;
use dreamwalk::upscale::UpscaleMode;
use dreamwalk::usecase::{
    join, load_engine, render, FrameRange, JoinError, JoinJob, ModelSource, RenderError, RenderJob,
    RenderSummary, SegmentError,
};
use dreamwalk::walk::{LoopMode, WalkSettings};

use crate::support::ffmpeg::{decode_sound, ffmpeg, probe_duration, probe_start, probe_stream};
use crate::support::images::png_files;
use crate::support::process::dreamwalk;

const FPS: u32 = 30;

fn demo() -> Arc<dyn Engine> {
    load_engine(&ModelSource::default()).expect("the demo model loads")
}

/// Two prompts on the demo model, small frames, `steps_between` steps, `inbetweens`
/// in-betweens, walked as `loop_mode` says.
fn settings(
    engine: &dyn Engine,
    steps_between: usize,
    inbetweens: Inbetweens,
    loop_mode: LoopMode,
) -> Settings {
    Settings {
        endpoints: EndpointRequest {
            keyframes: vec!["a red fox".into(), "a lighthouse".into()],
            negative: String::new(),
            seed: 3,
            seed_per_keyframe: true,
            steps: 2,
            guidance: 1.0,
            image_size: (64, 32),
            init_latents: None,
        },
        walk: WalkSettings {
            steps_between,
            loop_mode,
            ..Default::default()
        },
        decoder: DecoderKind::fastest(&engine.decoders()).unwrap_or_default(),
        inbetweens,
        target_fps: f64::from(FPS),
        upscale: UpscaleMode::None,
        output_size: (64, 32),
        diffuse: 0,
    }
}

fn job(settings: &Settings, laps: u64, out: &Path, frames: Option<FrameRange>) -> RenderJob {
    RenderJob {
        settings: settings.clone(),
        laps,
        out: out.to_path_buf(),
        record: RecordOptions {
            fps: FPS,
            ..RecordOptions::default()
        },
        save_latents: None,
        audio: None,
        frames,
    }
}

fn range(first: u64, last: Option<u64>) -> FrameRange {
    FrameRange { first, last }
}

fn name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// Renders the whole walk and `segments` (each to its own folder, or all to one shared folder
/// when `shared`), and checks that the segments together are the whole render, file for
/// file, byte for byte, and that no segment decoded a frame before its own.
fn segments_match_the_whole(settings: Settings, laps: u64, segments: &[FrameRange], shared: bool) {
    let engine = demo();
    let k = match settings.inbetweens {
        Inbetweens::Fixed(k) => k as u64,
        Inbetweens::Auto => unreachable!(),
    };
    let total = stream_frames(2, settings.walk, None, laps, k as usize);
    let dir = tempfile::tempdir().unwrap();
    let whole_dir = dir.path().join("whole");
    let whole = render(
        engine.clone(),
        &job(&settings, laps, &whole_dir, None),
        &mut (),
    )
    .expect("the whole render");
    assert_eq!(
        whole.frames_written, total,
        "stream_frames counts the render"
    );
    let whole_files = png_files(&whole_dir);
    assert_eq!(whole_files.len() as u64, total);
    // Every frame differs from the one before: a frame in the wrong place cannot pass.
    let bytes: Vec<Vec<u8>> = whole_files
        .iter()
        .map(|f| std::fs::read(f).unwrap())
        .collect();
    assert!(
        bytes.windows(2).all(|w| w[0] != w[1]),
        "the walk moves every frame"
    );

    let mut made: Vec<PathBuf> = Vec::new();
    // Shared: the later segment first, so the earlier one finds the folder holding frames.
    let order: Vec<usize> = if shared {
        (0..segments.len()).rev().collect()
    } else {
        (0..segments.len()).collect()
    };
    for i in order {
        let segment = segments[i];
        let out = if shared {
            dir.path().join("parts")
        } else {
            dir.path().join(format!("part{i}"))
        };
        let summary: RenderSummary = render(
            engine.clone(),
            &job(&settings, laps, &out, Some(segment)),
            &mut (),
        )
        .unwrap_or_else(|e| panic!("segment {segment}: {e}"));
        let last = segment.last.unwrap_or(total - 1);
        assert_eq!(
            summary.frames_written,
            last - segment.first + 1,
            "{segment}"
        );
        // Decoding starts at the decoded frame the first frame is or follows and stops at the
        // one the last frame is or blends toward: nothing before is decoded and dropped.
        let decoded = summary.stats.frames_decoded + summary.stats.frames_from_cache;
        let (first_decoded, last_decoded) = (segment.first / (k + 1), last.div_ceil(k + 1));
        assert_eq!(decoded, last_decoded - first_decoded + 1, "{segment}");
        if !shared {
            made.extend(png_files(&out));
        }
    }
    if shared {
        made = png_files(&dir.path().join("parts"));
    }
    made.sort_by_key(|f| name(f));
    let made_names: Vec<String> = made.iter().map(|f| name(f)).collect();
    let whole_names: Vec<String> = whole_files.iter().map(|f| name(f)).collect();
    assert_eq!(
        made_names, whole_names,
        "the segments cover the walk exactly, named by walk index"
    );
    for (part, whole) in made.iter().zip(&bytes) {
        assert!(
            std::fs::read(part).unwrap() == *whole,
            "{} differs from the whole render's frame",
            part.display()
        );
    }
}

#[test]
fn ping_pong_segments_split_mid_inbetweens_equal_the_whole_render() {
    let engine = demo();
    // 2 keyframes, 3 steps, ping-pong: 7 decoded frames, 2 in-betweens each: 19 frames.
    // Frame 8 is the second in-between between decoded frames 2 and 3.
    let settings = settings(&*engine, 3, Inbetweens::Fixed(2), LoopMode::PingPong);
    segments_match_the_whole(settings, 1, &[range(0, Some(7)), range(8, None)], false);
}

#[test]
fn endless_loop_segments_in_one_folder_equal_the_whole_render() {
    let engine = demo();
    // 2 keyframes, 2 steps, endless, 2 laps: 8 decoded frames, then the in-between that
    // closes the loop: 16 frames. 5 and 11 are in-betweens; the last segment holds the
    // closing one.
    let settings = settings(&*engine, 2, Inbetweens::Fixed(1), LoopMode::Endless);
    segments_match_the_whole(
        settings,
        2,
        &[range(0, Some(4)), range(5, Some(10)), range(11, None)],
        true,
    );
}

#[test]
fn a_segment_samples_only_the_keyframes_its_frames_are_made_from() {
    let engine = demo();
    // 3 keyframes, 3 steps a pair, played once: decoded frames 0..=6, pair 0 is 0..=3 and
    // pair 1 is 3..=6; one in-between each: frames 0..=12. One diffused in-between a pair.
    let mut settings = settings(&*engine, 3, Inbetweens::Fixed(1), LoopMode::Once);
    settings.endpoints.keyframes.push("a glass teapot".into());
    settings.diffuse = 1;
    let dir = tempfile::tempdir().unwrap();
    let whole_dir = dir.path().join("whole");
    let whole = render(
        engine.clone(),
        &job(&settings, 1, &whole_dir, None),
        &mut (),
    )
    .expect("the whole render");
    assert_eq!(whole.frames_written, 13);
    assert_eq!(whole.stats.keyframes_sampled, 3);
    assert_eq!(whole.stats.positions_diffused, 2, "one in each pair");
    let whole_files = png_files(&whole_dir);

    // Frames 8..=12 blend from decoded frame 4 on: pair 1 only, keyframes 2 and 3.
    let part_dir = dir.path().join("part");
    let mut header = None;
    struct Header<'a>(&'a mut Option<String>);
    impl dreamwalk::usecase::RenderProgress for Header<'_> {
        fn started(&mut self, header: &dreamwalk::usecase::RenderHeader) {
            *self.0 = Some(header.to_string());
        }
    }
    let part = render(
        engine.clone(),
        &job(&settings, 1, &part_dir, Some(range(8, None))),
        &mut Header(&mut header),
    )
    .expect("the segment");
    let header = header.expect("the render said what it does");
    assert!(
        header.contains("frames 8..12 (from keyframes 2, 3)"),
        "{header}"
    );
    assert_eq!(part.frames_written, 5);
    assert_eq!(
        part.stats.keyframes_sampled, 2,
        "keyframe 1 is not sampled for frames that do not show it"
    );
    assert_eq!(part.stats.positions_diffused, 1, "pair 1's in-between only");
    let part_files = png_files(&part_dir);
    assert_eq!(part_files.len(), 5);
    for (made, whole) in part_files.iter().zip(&whole_files[8..]) {
        assert_eq!(name(made), name(whole));
        assert!(
            std::fs::read(made).unwrap() == std::fs::read(whole).unwrap(),
            "{} differs from the whole render's frame",
            made.display()
        );
    }
}

/// `render` with `frames` fails with a segment error, and `out` was not created.
fn refused(settings: &Settings, laps: u64, frames: FrameRange) -> SegmentError {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("segment.mp4");
    let error = match render(demo(), &job(settings, laps, &out, Some(frames)), &mut ()) {
        Err(RenderError::Segment(error)) => error,
        Err(other) => panic!("{frames}: another error: {other}"),
        Ok(_) => panic!("{frames} was rendered"),
    };
    assert!(!out.exists(), "{frames}: nothing is written");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "{frames}: no partial file either"
    );
    error
}

#[test]
fn what_cannot_be_a_segment_is_refused_before_any_output() {
    let engine = demo();
    let fixed = settings(&*engine, 3, Inbetweens::Fixed(2), LoopMode::Once);
    // Once: 4 decoded frames, 3 gaps of 2: 10 frames, 0..9.
    let auto = Settings {
        inbetweens: Inbetweens::Auto,
        ..fixed.clone()
    };
    let error = refused(&auto, 1, range(0, Some(3)));
    assert!(matches!(error, SegmentError::AutoInbetweens { .. }));
    assert!(error.to_string().contains("--inbetween auto"), "{error}");

    let error = refused(&fixed, 1, range(0, Some(10)));
    assert_eq!(
        error,
        SegmentError::PastEnd {
            range: range(0, Some(10)),
            total: 10,
            first_past: 10
        }
    );
    let said = error.to_string();
    assert!(
        said.contains("0..10") && said.contains("10 frames (0..9)"),
        "{said}"
    );
    let error = refused(&fixed, 1, range(10, None));
    assert!(matches!(
        error,
        SegmentError::PastEnd { first_past: 10, .. }
    ));
    let error = refused(&fixed, 1, range(6, Some(2)));
    assert!(error.to_string().contains("comes before"), "{error}");
    // Laps count: two ping-pong laps are 13 decoded frames, 37 frames with 2 in-betweens.
    let pong = settings(&*engine, 3, Inbetweens::Fixed(2), LoopMode::PingPong);
    let error = refused(&pong, 2, range(30, Some(37)));
    assert!(error.to_string().contains("37 frames"), "{error}");

    // The command line refuses before loading anything: a reversed range as it parses,
    // auto in-betweens at once.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.mp4");
    let run = |extra: &[&str]| {
        let output = dreamwalk()
            .args(["render", "--prompt", "a", "--prompt", "b", "--out"])
            .arg(&out)
            .args(extra)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{extra:?} was accepted");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let reversed = run(&["--frames", "9..3"]);
    assert!(reversed.contains("comes before"), "{reversed}");
    let garbled = run(&["--frames", "nine"]);
    assert!(garbled.contains("not a frame range"), "{garbled}");
    let auto = run(&["--frames", "0..3", "--inbetween", "auto"]);
    assert!(auto.contains("--inbetween auto"), "{auto}");
    assert!(!out.exists());
}

/// Renders frames `frames` of a grey scripted walk to an .mp4 (fast: the join does not care
/// what the pictures are), with `audio` muxed in when given.
fn grey_segment(out: &Path, frames: FrameRange, size: (u32, u32), audio: Option<&Path>) {
    grey_segment_with(out, frames, size, audio, false);
}

/// [`grey_segment`], by the built-in OpenH264 encoder when `builtin`.
fn grey_segment_with(
    out: &Path,
    frames: FrameRange,
    size: (u32, u32),
    audio: Option<&Path>,
    builtin: bool,
) {
    let engine: Arc<dyn Engine> = Arc::new(ScriptedEngine::grey());
    let mut settings = settings(&*engine, 6, Inbetweens::Fixed(1), LoopMode::Once);
    settings.endpoints.image_size = size;
    settings.output_size = size;
    let mut job = job(&settings, 1, out, Some(frames));
    job.record.audio = audio.map(Path::to_path_buf);
    job.record.force_builtin_encoder = builtin;
    render(engine, &job, &mut ()).expect("segment renders");
}

fn join_job(segments: &[&Path], out: &Path) -> JoinJob {
    JoinJob {
        segments: segments.iter().map(|p| p.to_path_buf()).collect(),
        out: out.to_path_buf(),
        overwrite: false,
        ffmpeg: None,
    }
}

#[test]
fn join_makes_one_video_of_the_segments_and_refuses_odd_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    // 2 keyframes, 6 steps, 1 in-between: 13 frames, 0..12; split at 5 (an in-between).
    let (a, b) = (path("a.mp4"), path("b.mp4"));
    grey_segment(&a, range(0, Some(4)), (64, 32), None);
    grey_segment(&b, range(5, None), (64, 32), None);
    assert_eq!(probe_stream(&a).nb_read_frames, 5);
    assert_eq!(probe_stream(&b).nb_read_frames, 8);

    let whole = path("whole.mp4");
    let summary = join(&join_job(&[&a, &b], &whole)).expect("join");
    let probe = probe_stream(&whole);
    assert_eq!(
        probe.nb_read_frames, 13,
        "the joined file holds every frame"
    );
    assert_eq!(summary.frames, 13);
    assert_eq!((probe.width, probe.height), (64, 32));
    assert_eq!(probe.r_frame_rate, "30/1");
    // 13 frames at 30 fps; the container rounds to its time base: within a frame.
    let seconds = probe_duration(&whole);
    assert!(
        (seconds - 13.0 / 30.0).abs() < 1.0 / 30.0,
        "duration {seconds}"
    );
    assert!(summary.to_string().contains("2 segments"), "{summary}");

    // Refusals, each before anything is written.
    let error = join(&join_job(&[&a, &b], &whole)).unwrap_err();
    assert!(matches!(error, JoinError::Exists(_)), "{error}");
    let missing = path("missing.mp4");
    let error = join(&join_job(&[&a, &missing], &path("x.mp4"))).unwrap_err();
    assert!(
        matches!(&error, JoinError::Missing(p) if p == &missing),
        "{error}"
    );
    let odd = path("odd.mp4");
    grey_segment(&odd, range(5, None), (96, 32), None);
    let error = join(&join_job(&[&a, &odd], &path("y.mp4"))).unwrap_err();
    let said = error.to_string();
    assert!(
        matches!(&error, JoinError::Mismatch { path, .. } if path == &odd)
            && said.contains("96x32")
            && said.contains("64x32"),
        "{said}"
    );
    assert!(!path("x.mp4").exists() && !path("y.mp4").exists());

    // With --overwrite the old output is replaced by the new join.
    let again = join(&JoinJob {
        overwrite: true,
        ..join_job(&[&b, &a], &whole)
    })
    .expect("join over");
    assert_eq!(again.frames, 13);

    // Segments by the built-in encoder join as well.
    let (c, d) = (path("c.mp4"), path("d.mp4"));
    grey_segment_with(&c, range(0, Some(4)), (64, 32), None, true);
    grey_segment_with(&d, range(5, None), (64, 32), None, true);
    let built_in = path("built_in.mp4");
    join(&join_job(&[&c, &d], &built_in)).expect("join built-in segments");
    let probe = probe_stream(&built_in);
    assert_eq!(
        (probe.nb_read_frames, probe.r_frame_rate.as_str()),
        (13, "30/1")
    );
}

#[test]
fn joined_segments_keep_their_sound_in_time_across_the_seams() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    // Silence, then a tone from 0.35 s: inside the third segment (frames 8..12 are
    // 0.267..0.433 s), so two seams come before it.
    const RATE: u32 = 44100;
    const ONSET: f64 = 0.35;
    let wav = path("step.wav");
    let made = std::process::Command::new(ffmpeg())
        .args(["-nostdin", "-v", "error", "-f", "lavfi", "-i"])
        .arg(format!(
            "aevalsrc='if(gte(t,{ONSET}),0.5*sin(2*PI*440*t),0)':s={RATE}:d=1"
        ))
        .arg(&wav)
        .status()
        .unwrap();
    assert!(made.success());
    let (a, b, c) = (path("a.mp4"), path("b.mp4"), path("c.mp4"));
    grey_segment(&a, range(0, Some(3)), (64, 32), Some(&wav));
    grey_segment(&b, range(4, Some(7)), (64, 32), Some(&wav));
    grey_segment(&c, range(8, None), (64, 32), Some(&wav));
    let whole = path("whole.mp4");
    let summary = join(&join_job(&[&a, &b, &c], &whole)).expect("join");
    let (codec, rate) = summary
        .format
        .audio
        .clone()
        .expect("the joined file has sound");
    assert_eq!((codec.as_str(), rate), ("aac", RATE));
    assert_eq!(probe_stream(&whole).nb_read_frames, 13);
    // Each segment's AAC priming (1024 samples, 23 ms) stays out: the tone starts where the
    // walk's time says, not 23 ms later per seam, and the pictures start at 0 with it.
    let sound = decode_sound(&whole, RATE);
    let onset = sound.iter().position(|s| s.abs() > 0.1).expect("the tone") as f64;
    let onset = onset / f64::from(RATE);
    assert!(
        (onset - ONSET).abs() < 0.003,
        "the tone starts at {onset:.4} s in the joined file, {ONSET} s in the walk"
    );
    let video_start = probe_start(&whole, "v:0");
    assert!(video_start.abs() < 0.001, "pictures start at {video_start}");
    assert!(summary.to_string().contains("sample-exact"), "{summary}");
    // A segment without sound does not join one with it.
    let silent = path("silent.mp4");
    grey_segment(&silent, range(4, Some(7)), (64, 32), None);
    let error = join(&join_job(&[&a, &silent], &path("x.mp4"))).unwrap_err();
    assert!(
        matches!(&error, JoinError::Mismatch { path, .. } if path == &silent),
        "{error}"
    );
}
