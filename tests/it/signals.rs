//! `dreamwalk render` stopped by SIGINT / SIGTERM keeps whole, finalized outputs and exits
//! 130 / 143; an existing output is never destroyed: refused without `--overwrite`, kept by
//! a run that fails, replaced only by a finished one.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::support::ffmpeg::probe_stream;
use crate::support::images::{png_files, read_png};
use crate::support::process::dreamwalk;
use crate::support::y4m::read_y4m;

/// Frame side of these renders: small, so frames come fast and files stay small.
const SIDE: u32 = 64;

/// `dreamwalk render` of a long demo walk (80 000 frames) into `out`, in its own
/// process group (a background job of a non-interactive shell would ignore SIGINT
/// otherwise), stderr to `log`.
fn start_long_render(out: &Path, log: &Path) -> Child {
    dreamwalk()
        .args([
            "render",
            "--prompt",
            "a red fox",
            "--prompt",
            "a lighthouse",
        ])
        .args([
            "--steps",
            "2",
            "--steps-between",
            "20000",
            "--inbetween",
            "3",
        ])
        .args([
            "--source",
            "64x64",
            "--size",
            "64x64",
            "--gpu-decode",
            "off",
        ])
        .arg("--out")
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(log).unwrap())
        .process_group(0)
        .spawn()
        .expect("run dreamwalk")
}

/// Polls `ready` until it holds (panics after two minutes, or if the render ended first).
fn wait_until(child: &mut Child, log: &Path, what: &str, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ready() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the render ended ({status}) before {what}:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "no {what} after two minutes");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `signal` (`INT`, `TERM`) to the process group of `child`, as a terminal's Ctrl-C
/// does (so ffmpeg, a child of dreamwalk, would get it too if it were in that group).
fn signal_group(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{}", child.id()))
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} failed");
}

/// Waits for the render to end (two minutes at most) and returns how it ended and its log.
fn wait_end(mut child: Child, log: &Path) -> (ExitStatus, String) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, fs::read_to_string(log).unwrap_or_default());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "the render did not stop:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

/// Names in `dir` that are not `*.png`, and the `.part` files beside `out`.
fn leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".part"))
        .collect()
}

/// The render into `name` (in a fresh folder) stopped by `signal` once `ready` holds for
/// the output path; returns the folder, the output, the exit status and the log.
fn interrupted_render(
    name: &str,
    signal: &str,
    ready: impl Fn(&Path) -> bool,
) -> (tempfile::TempDir, PathBuf, ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join(name);
    let log = dir.path().join("render.log");
    let mut child = start_long_render(&out, &log);
    wait_until(&mut child, &log, "frames were written", || ready(&out));
    signal_group(&child, signal);
    let (status, log) = wait_end(child, &log);
    (dir, out, status, log)
}

fn part(out: &Path) -> PathBuf {
    dreamwalk::record::partial_path(out)
}

#[test]
fn sigint_mid_y4m_ends_on_a_frame_boundary_and_exits_130() {
    let (dir, out, status, log) = interrupted_render("walk.y4m", "INT", |out| {
        // The header and a few frames of 3 x 64 x 64 bytes.
        file_len(&part(out)) > 5 * 3 * u64::from(SIDE * SIDE)
    });
    assert_eq!(status.code(), Some(130), "{log}");
    assert!(log.contains("SIGINT"), "says why it stopped: {log}");
    let y4m = read_y4m(&out, SIDE, SIDE);
    let frames = y4m.frames.len() as u64;
    assert!(frames >= 5, "{frames} frames kept: {log}");
    let header_len = y4m.header.len() as u64 + 1;
    let frame_len = 6 + 3 * u64::from(SIDE * SIDE);
    assert_eq!(file_len(&out), header_len + frames * frame_len);
    assert!(log.contains(&format!("wrote {frames} frames")), "{log}");
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
}

#[test]
fn sigterm_mid_mp4_finalizes_it_and_exits_143() {
    let (dir, out, status, log) =
        interrupted_render("walk.mp4", "TERM", |out| file_len(&part(out)) > 4096);
    assert_eq!(status.code(), Some(143), "{log}");
    assert!(log.contains("SIGTERM"), "says why it stopped: {log}");
    let probe = probe_stream(&out);
    assert_eq!(probe.codec_name, "h264");
    assert!(probe.nb_read_frames >= 1, "{log}");
    assert!(
        log.contains(&format!("wrote {} frames", probe.nb_read_frames)),
        "the file holds every frame written: {} in {log}",
        probe.nb_read_frames
    );
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
}

#[test]
fn sigint_mid_mp4_finalizes_it_and_exits_130() {
    let (dir, out, status, log) =
        interrupted_render("walk.mp4", "INT", |out| file_len(&part(out)) > 4096);
    assert_eq!(status.code(), Some(130), "{log}");
    let probe = probe_stream(&out);
    assert!(probe.nb_read_frames >= 1, "{log}");
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
}

#[test]
fn sigint_mid_png_sequence_leaves_only_whole_consecutive_pngs() {
    let (_dir, out, status, log) = interrupted_render("frames", "INT", |out| {
        out.is_dir() && png_files(out).len() >= 5
    });
    assert_eq!(status.code(), Some(130), "{log}");
    let files = png_files(&out);
    assert!(files.len() >= 5);
    for (i, file) in files.iter().enumerate() {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(name, format!("frame_{i:06}.png"));
        assert!(file_len(file) > 0, "{name} is empty");
        let png = read_png(file);
        assert_eq!((png.width, png.height), (SIDE, SIDE), "{name}");
    }
    assert!(
        log.contains(&format!("wrote {} frames", files.len())),
        "{} in {log}",
        files.len()
    );
    assert_eq!(leftovers(&out), Vec::<String>::new());
}

#[test]
fn sigint_while_sampling_leaves_an_existing_output_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("walk.y4m");
    fs::write(&out, b"precious").unwrap();
    let log = dir.path().join("render.log");
    // A model big enough to take a while to sample: a large source, many steps.
    let mut child = dreamwalk()
        .args([
            "render",
            "--prompt",
            "a red fox",
            "--prompt",
            "a lighthouse",
        ])
        .args(["--steps", "50", "--source", "512x512", "--size", "512x512"])
        .args(["--gpu-decode", "off", "--overwrite", "--out"])
        .arg(&out)
        .stdin(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .process_group(0)
        .spawn()
        .unwrap();
    // The partial file exists once the output is open, before the first keyframe is sampled.
    wait_until(&mut child, &log, "the output was opened", || {
        part(&out).exists()
    });
    signal_group(&child, "INT");
    let (status, log) = wait_end(child, &log);
    assert_eq!(status.code(), Some(130), "{log}");
    assert_eq!(fs::read(&out).unwrap(), b"precious", "{log}");
    assert!(!part(&out).exists());
}

/// A short demo render into `out` with `extra` arguments; returns its status and stderr.
fn short_render(out: &Path, extra: &[&str]) -> (ExitStatus, String) {
    let output = dreamwalk()
        .args([
            "render",
            "--prompt",
            "a red fox",
            "--prompt",
            "a lighthouse",
        ])
        .args(["--steps", "2", "--steps-between", "3", "--inbetween", "1"])
        .args([
            "--source",
            "64x64",
            "--size",
            "64x64",
            "--gpu-decode",
            "off",
        ])
        .args(extra)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn an_existing_y4m_survives_failed_and_refused_runs_and_overwrite_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("walk.y4m");
    fs::write(&out, b"precious").unwrap();
    // A run that fails before its first frame, even with --overwrite.
    for extra in [&["--steps", "0"][..], &["--steps", "0", "--overwrite"]] {
        let (status, log) = short_render(&out, extra);
        assert!(!status.success(), "{extra:?}: {log}");
        assert_eq!(fs::read(&out).unwrap(), b"precious", "{extra:?}: {log}");
    }
    // Refused before sampling without --overwrite, naming the path and the flag.
    let (status, log) = short_render(&out, &[]);
    assert!(!status.success());
    assert!(
        log.contains("walk.y4m") && log.contains("--overwrite"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    assert_eq!(fs::read(&out).unwrap(), b"precious");
    // Replaced, whole, with it.
    let (status, log) = short_render(&out, &["--overwrite"]);
    assert!(status.success(), "{log}");
    assert_eq!(read_y4m(&out, SIDE, SIDE).frames.len(), 7);
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
}

#[test]
fn an_existing_png_folder_survives_refused_runs_and_overwrite_leaves_no_stale_frames() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("frames");
    fs::create_dir(&out).unwrap();
    for i in 0..20 {
        fs::write(out.join(format!("frame_{i:06}.png")), b"old").unwrap();
    }
    let (status, log) = short_render(&out, &["--steps", "0", "--overwrite"]);
    assert!(!status.success(), "{log}");
    assert_eq!(png_files(&out).len(), 20);
    let (status, log) = short_render(&out, &[]);
    assert!(!status.success());
    assert!(
        log.contains("frames") && log.contains("--overwrite"),
        "{log}"
    );
    assert_eq!(png_files(&out).len(), 20);
    assert_eq!(fs::read(out.join("frame_000000.png")).unwrap(), b"old");
    // Seven new frames, and none of the old sequence after them.
    let (status, log) = short_render(&out, &["--overwrite"]);
    assert!(status.success(), "{log}");
    let files = png_files(&out);
    assert_eq!(files.len(), 7, "{files:?}");
    for file in &files {
        assert_eq!(read_png(file).width, SIDE);
    }
    assert_eq!(leftovers(&out), Vec::<String>::new());
}

#[test]
fn an_existing_mp4_is_refused_without_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("walk.mp4");
    fs::write(&out, b"precious").unwrap();
    let (status, log) = short_render(&out, &[]);
    assert!(!status.success());
    assert!(
        log.contains("walk.mp4") && log.contains("--overwrite"),
        "{log}"
    );
    assert_eq!(fs::read(&out).unwrap(), b"precious");
    let (status, log) = short_render(&out, &["--overwrite"]);
    assert!(status.success(), "{log}");
    assert_eq!(probe_stream(&out).nb_read_frames, 7);
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
}

#[test]
fn a_second_sigint_aborts_at_once_and_leaves_no_partial_file_under_the_output_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("walk.y4m");
    let log = dir.path().join("render.log");
    let mut child = start_long_render(&out, &log);
    wait_until(&mut child, &log, "frames were written", || {
        file_len(&part(&out)) > 5 * 3 * u64::from(SIDE * SIDE)
    });
    signal_group(&child, "INT");
    signal_group(&child, "INT");
    let (status, log) = wait_end(child, &log);
    assert_eq!(status.code(), Some(130), "{log}");
    // Either the first signal's finish got there first (a whole file) or the output was
    // never renamed (the frames stay in the partial file).
    if out.exists() {
        assert!(!read_y4m(&out, SIDE, SIDE).frames.is_empty());
    } else {
        assert!(part(&out).exists(), "{log}");
    }
}

#[test]
fn progress_is_plain_lines_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("walk.y4m");
    let log = dir.path().join("render.log");
    // stderr is a file here: no spinner, a line every few seconds.
    let mut child = start_long_render(&out, &log);
    let log_text = || fs::read_to_string(&log).unwrap_or_default();
    wait_until(&mut child, &log, "two progress lines", || {
        log_text()
            .lines()
            .filter(|l| l.contains(" frames | decode "))
            .count()
            >= 2
    });
    signal_group(&child, "TERM");
    let (status, log) = wait_end(child, &log);
    assert_eq!(status.code(), Some(143), "{log}");
    assert!(!log.contains('\r'), "no terminal redraws in a log: {log:?}");
    let counts: Vec<u64> = log
        .lines()
        .filter_map(|l| l.split(" | ").nth(1)?.strip_suffix(" frames")?.parse().ok())
        .collect();
    assert!(counts.len() >= 2, "{log}");
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
}
