//! The record stage: every frame pushed lands in the file, in order, in a file players open;
//! back-pressure instead of loss; failures that keep a playable file.
//!
//! Tests that use ffmpeg/ffprobe fail (not skip) without them; the built-in encoder's test
//! runs everywhere (it checks the file with ffprobe only when there is one).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dreamwalk::frame::RgbaImage;
use dreamwalk::record::{
    partial_path, Encoder, OutputFormat, RecordError, RecordOptions, Recorder,
};

use crate::support::ffmpeg::{
    decode_rgb, ffmpeg, ffprobe, probe_comment, probe_duration, probe_stream, probe_with,
    require_ffprobe,
};
use crate::support::images::{png_texts, read_png_rgb};
use crate::support::mp4::{
    assert_moov_before_mdat, decode_track_openh264, has_complete_fragment, read_mp4_track,
};
use crate::support::process::{dreamwalk, run_alone, write_script};
use crate::support::recording::{
    frames, psnr, push_until_failure, record, smooth_frame, tagged_frame, GatedSink, TinyDisk,
};
use crate::support::y4m::{assert_y4m_frame_exact, read_y4m, split_header};

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
// WebM and GIF (through ffmpeg)

/// Whether each decoded frame is nearer its own input frame than the frames beside it (by
/// more than `margin_db`): the frames are the same by index (none lost, repeated or out of
/// order), whatever the codec does to their colours.
fn assert_same_frames_by_index(
    what: &str,
    input: &[Arc<RgbaImage>],
    decoded: &[Vec<u8>],
    margin_db: f64,
) {
    assert_eq!(decoded.len(), input.len(), "{what}: frame count");
    for (i, rgb) in decoded.iter().enumerate() {
        let own = psnr(&input[i], rgb);
        for j in [i.wrapping_sub(1), i + 1] {
            if let Some(other) = input.get(j) {
                let beside = psnr(other, rgb);
                assert!(
                    own > beside + margin_db,
                    "{what} frame {i}: {own:.2} dB to its own input, {beside:.2} dB to {j}'s"
                );
            }
        }
    }
}

#[test]
fn webm_and_gif_hold_the_mp4s_frames() {
    let _ = ffmpeg();
    let dir = tempfile::tempdir().unwrap();
    // An odd size: VP9 and GIF keep it (the MP4 is padded to even sizes).
    let (width, height, count, fps) = (161, 95, 40, 25);
    let input = frames(count, width, height);
    let opts = RecordOptions {
        fps,
        queue_capacity: 1,
        ..RecordOptions::default()
    };
    let mp4 = dir.path().join("walk.mp4");
    let webm = dir.path().join("walk.webm");
    let gif = dir.path().join("walk.gif");
    record(&mp4, opts.clone(), &input);
    let mp4_frames = probe_stream(&mp4).nb_read_frames;
    assert_eq!(mp4_frames, count);

    let summary = record(&webm, opts.clone(), &input);
    eprintln!("{summary}");
    assert!(
        matches!(&summary.encoder, Encoder::Vp9 { crf: 22, speed, .. } if speed == "realtime, cpu-used 6"),
        "{:?}",
        summary.encoder
    );
    assert_eq!(
        (summary.frames, summary.width, summary.height),
        (count, width, height)
    );
    let probe = probe_stream(&webm);
    assert_eq!(
        (probe.codec_name.as_str(), probe.pix_fmt.as_str()),
        ("vp9", "yuv420p")
    );
    assert_eq!((probe.width, probe.height), (width, height));
    assert_eq!(probe.r_frame_rate, format!("{fps}/1"));
    assert_eq!(probe.nb_read_frames, mp4_frames);
    let decoded = decode_rgb(&webm, width, height);
    // Neighbouring synthetic frames are > 10 dB apart (`neighbouring_frames_differ`).
    assert_same_frames_by_index("webm", &input, &decoded, 3.0);
    let worst = input
        .iter()
        .zip(&decoded)
        .map(|(frame, rgb)| psnr(frame, rgb))
        .fold(f64::INFINITY, f64::min);
    eprintln!("vp9 crf 22: worst frame PSNR {worst:.2} dB");
    // crf 22 of 63 is high quality, as x264's 18: the same bound as the MP4's.
    assert!(worst >= 35.0, "worst frame PSNR {worst:.2} dB < 35 dB");

    let summary = record(&gif, opts, &input);
    eprintln!("{summary}");
    assert!(
        matches!(summary.encoder, Encoder::Gif { .. }),
        "{:?}",
        summary.encoder
    );
    let probe = probe_stream(&gif);
    assert_eq!(probe.codec_name, "gif");
    assert_eq!((probe.width, probe.height), (width, height));
    assert_eq!(probe.nb_read_frames, mp4_frames);
    // 25 fps is 4/100 s a frame, exactly what GIF stores.
    let duration = probe_duration(&gif);
    assert!(
        (duration - count as f64 / fps as f64).abs() < 0.015,
        "{duration} s for {count} frames at {fps} fps"
    );
    let decoded = decode_rgb(&gif, width, height);
    assert_same_frames_by_index("gif", &input, &decoded, 3.0);
    let worst = input
        .iter()
        .zip(&decoded)
        .map(|(frame, rgb)| psnr(frame, rgb))
        .fold(f64::INFINITY, f64::min);
    eprintln!("gif: worst frame PSNR {worst:.2} dB");
    // 255 colours for the whole walk, dithered: far from lossless, far from garbage.
    assert!(worst >= 25.0, "worst frame PSNR {worst:.2} dB < 25 dB");

    for out in [&mp4, &webm, &gif] {
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.contains(".part"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "{}: left {leftovers:?}",
            out.display()
        );
    }
}

#[test]
fn gif_timing_at_a_rate_hundredths_do_not_divide() {
    let _ = ffmpeg();
    let dir = tempfile::tempdir().unwrap();
    let (count, fps) = (30, 30);
    let gif = dir.path().join("walk.gif");
    let summary = record(
        &gif,
        RecordOptions {
            fps,
            ..RecordOptions::default()
        },
        &frames(count, 64, 48),
    );
    assert_eq!(summary.frames, count);
    assert_eq!(probe_stream(&gif).nb_read_frames, count);
    // Delays of 3 and 4 hundredths, 1 s in all (to the hundredth).
    let duration = probe_duration(&gif);
    assert!((duration - 1.0).abs() < 0.015, "{duration} s");
}

#[test]
fn webm_and_gif_replace_an_output_only_with_overwrite() {
    let _ = ffmpeg();
    let dir = tempfile::tempdir().unwrap();
    let input = frames(6, 64, 48);
    for name in ["walk.webm", "walk.gif"] {
        let out = dir.path().join(name);
        std::fs::write(&out, b"precious").unwrap();
        let e = match Recorder::start(&out, RecordOptions::default()) {
            Ok(_) => panic!("{name}: started over an existing file"),
            Err(e) => e,
        };
        assert!(matches!(e, RecordError::Exists { .. }), "{e}");
        assert_eq!(std::fs::read(&out).unwrap(), b"precious");
        // Started, but nothing recorded: the old file stays.
        let overwrite = RecordOptions {
            overwrite: true,
            ..RecordOptions::default()
        };
        Recorder::start(&out, overwrite.clone())
            .unwrap()
            .finish()
            .unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"precious", "{name}");
        record(&out, overwrite, &input);
        assert_eq!(probe_stream(&out).nb_read_frames, 6, "{name}");
        assert!(!partial_path(&out).exists(), "{name}");
    }
}

#[test]
fn gif_and_webm_refusals_come_before_any_work() {
    let start = |path: &str, opts: RecordOptions| match Recorder::start(Path::new(path), opts) {
        Ok(_) => panic!("{path}: started"),
        Err(e) => e.to_string(),
    };
    let e = start(
        "/tmp/dreamwalk-never.gif",
        RecordOptions {
            fps: 60,
            ..RecordOptions::default()
        },
    );
    assert!(e.contains("fps 60") && e.contains("at most 50"), "{e}");
    for path in ["/tmp/dreamwalk-never.gif", "/tmp/dreamwalk-never.webm"] {
        let e = start(
            path,
            RecordOptions {
                force_builtin_encoder: true,
                ..RecordOptions::default()
            },
        );
        assert!(e.contains(".mp4 only"), "{e}");
        assert!(!Path::new(path).exists() && !partial_path(Path::new(path)).exists());
    }
}

#[test]
fn without_ffmpeg_webm_and_gif_are_refused_by_name() {
    // PATH is process-wide, so this runs in a child test process.
    let dir = tempfile::tempdir().unwrap();
    run_alone(
        module_path!(),
        "record_webm_and_gif_without_ffmpeg",
        &[("PATH", dir.path()), ("DREAMWALK_TEST_DIR", dir.path())],
    );
}

#[test]
#[ignore = "run by without_ffmpeg_webm_and_gif_are_refused_by_name in a child process"]
fn record_webm_and_gif_without_ffmpeg() {
    let dir = PathBuf::from(std::env::var_os("DREAMWALK_TEST_DIR").expect("DREAMWALK_TEST_DIR"));
    for name in ["walk.webm", "walk.gif"] {
        let out = dir.join(name);
        let e = match Recorder::start(&out, RecordOptions::default()) {
            Ok(_) => panic!("{name}: started without ffmpeg"),
            Err(e) => e,
        };
        assert!(matches!(e, RecordError::NeedsFfmpeg { .. }), "{e}");
        let message = e.to_string();
        assert!(
            message.contains(name) && message.contains("ffmpeg") && message.contains(".mp4"),
            "{message}"
        );
        assert!(!out.exists() && !partial_path(&out).exists());
    }
    // The MP4 still records, with the built-in encoder.
    let mp4 = dir.join("walk.mp4");
    let summary = record(&mp4, RecordOptions::default(), &frames(3, 64, 48));
    assert!(matches!(summary.encoder, Encoder::OpenH264 { .. }));
}

#[test]
fn render_writes_the_same_frames_to_gif_webm_and_mp4() {
    let _ = ffmpeg();
    let dir = tempfile::tempdir().unwrap();
    let render = |name: &str| {
        let out = dir.path().join(name);
        let result = dreamwalk()
            .args([
                "render",
                "--prompt",
                "a red fox",
                "--prompt",
                "a lighthouse",
            ])
            .args(["--seed", "3", "--steps", "2", "--steps-between", "4"])
            .args(["--inbetween", "1", "--source", "128x64", "--size", "160x96"])
            .args(["--fps", "20", "--out"])
            .arg(&out)
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&result.stderr).into_owned();
        assert!(result.status.success(), "{name}: {log}");
        (out, log)
    };
    // 2 keyframes, 4 steps between: 5 decoded frames and 4 in-betweens.
    let expected = 9;
    let (mp4, _) = render("walk.mp4");
    let probe = probe_stream(&mp4);
    assert_eq!(probe.nb_read_frames, expected);
    let reference = decode_rgb(&mp4, 160, 96);
    let as_rgba = |rgb: &Vec<u8>| {
        let pixels = rgb
            .chunks_exact(3)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect();
        Arc::new(RgbaImage::from_pixels(160, 96, pixels).unwrap())
    };
    let reference: Vec<_> = reference.iter().map(as_rgba).collect();
    for (name, codec) in [("walk.webm", "vp9"), ("walk.gif", "gif")] {
        let (out, log) = render(name);
        assert!(log.contains(name), "{log}");
        let probe = probe_stream(&out);
        assert_eq!(probe.codec_name, codec);
        assert_eq!((probe.width, probe.height), (160, 96), "{name}");
        assert_eq!(probe.nb_read_frames, expected, "{name}");
        // The demo walk's neighbouring frames are close (~1 dB apart at its start): each
        // frame need only be nearer its own MP4 frame than theirs.
        assert_same_frames_by_index(name, &reference, &decode_rgb(&out, 160, 96), 0.0);
    }
    // Bad names and rates are refused before the model loads.
    let refused = |args: &[&str]| {
        let result = dreamwalk()
            .args(["render", "--prompt", "a", "--prompt", "b"])
            .args(args)
            .output()
            .unwrap();
        assert!(!result.status.success(), "{args:?}");
        String::from_utf8_lossy(&result.stderr).into_owned()
    };
    let avi = dir.path().join("walk.avi");
    let e = refused(&["--out", avi.to_str().unwrap()]);
    assert!(
        e.contains("walk.avi") && e.contains(".webm") && e.contains(".gif"),
        "{e}"
    );
    let e = refused(&[
        "--fps",
        "60",
        "--out",
        dir.path().join("fast.gif").to_str().unwrap(),
    ]);
    assert!(e.contains("at most 50"), "{e}");
}

// ---------------------------------------------------------------------------------------
// Y4M and PNG

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
    // It says what would do.
    for supported in [".mp4", ".webm", ".gif", ".y4m", ".png", "folder"] {
        assert!(e.to_string().contains(supported), "{supported}: {e}");
    }

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
    run_alone(
        module_path!(),
        "record_with_ffmpeg_killed",
        &[
            ("DREAMWALK_FFMPEG", &wrapper),
            ("DREAMWALK_TEST_DIR", dir.path()),
        ],
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

#[test]
fn ffmpeg_killed_mid_way_keeps_a_gif_of_the_frames_it_had() {
    let real = ffmpeg();
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("ffmpeg-wrapper");
    // Only the ffmpeg fed frames (pipe:0) is killed; the palette passes run as usual.
    write_script(
        &wrapper,
        &format!(
            "case \"$*\" in *pipe:0*) echo $$ > '{}';; esac\nexec '{}' \"$@\"\n",
            dir.path().join("ffmpeg.pid").display(),
            real.display()
        ),
    );
    run_alone(
        module_path!(),
        "record_gif_with_ffmpeg_killed",
        &[
            ("DREAMWALK_FFMPEG", &wrapper),
            ("DREAMWALK_TEST_DIR", dir.path()),
        ],
    );
}

#[test]
#[ignore = "run by ffmpeg_killed_mid_way_keeps_a_gif_of_the_frames_it_had in a child process"]
fn record_gif_with_ffmpeg_killed() {
    let dir = PathBuf::from(std::env::var_os("DREAMWALK_TEST_DIR").expect("DREAMWALK_TEST_DIR"));
    let out = dir.join("killed.gif");
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
    for _ in 0..60 {
        push(&recorder).unwrap();
    }
    // Every FFV1 frame is a keyframe, and Matroska closes a cluster at a keyframe once it
    // holds 4 KiB: the frames reach the file as they come (about 10 KiB each here).
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(partial_path(&out)).map_or(0, |m| m.len()) < 50_000 {
        assert!(Instant::now() < deadline, "ffmpeg wrote nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = std::fs::read_to_string(dir.join("ffmpeg.pid")).unwrap();
    let killed = Command::new("kill")
        .args(["-KILL", pid.trim()])
        .status()
        .unwrap();
    assert!(killed.success());
    let error = (0..10_000)
        .find_map(|_| push(&recorder).err())
        .expect("push fails once ffmpeg is dead");
    let message = error.to_string();
    eprintln!("push error: {message}");
    assert!(message.contains("killed by signal 9"), "{message}");
    assert!(recorder.finish().is_err());

    // The GIF was made from the frames the intermediate held: the first ones, in order.
    assert!(!partial_path(&out).exists());
    let probe = probe_stream(&out);
    assert_eq!(probe.codec_name, "gif");
    let kept = probe.nb_read_frames;
    eprintln!("kept {kept} of {pushed} frames");
    assert!(kept > 0 && kept < pushed, "kept {kept} of {pushed}");
    assert!(
        message.contains(&format!("{kept} frames, GIF")),
        "{message}"
    );
    let input = frames(kept, width, height);
    assert_same_frames_by_index("gif", &input, &decode_rgb(&out, width, height), 3.0);
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

    for name in ["walk.webm", "walk.gif"] {
        let out = dir.path().join(name);
        record(&out, opts.clone(), &input);
        assert_eq!(probe_comment(&out), comment, "{name}");
    }

    let y4m = dir.path().join("walk.y4m");
    record(&y4m, opts.clone(), &input);
    let bytes = std::fs::read(&y4m).unwrap();
    let (header, _) = split_header(&bytes);
    let header = String::from_utf8(header.to_vec()).unwrap();
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
        assert_eq!(
            png_texts(&file),
            vec![("Comment".to_string(), comment.clone())]
        );
    }
}
