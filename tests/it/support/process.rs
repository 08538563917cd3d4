//! Processes: the `dreamwalk` and `dreamwalk-bench` binaries, and one test of this binary run alone in a child
//! process (for a test that changes process-wide state, like an environment variable).

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

/// The `dreamwalk` binary cargo built for these tests.
pub const DREAMWALK: &str = env!("CARGO_BIN_EXE_dreamwalk");

/// A command running the `dreamwalk` binary.
pub fn dreamwalk() -> Command {
    Command::new(DREAMWALK)
}

/// A command running the `dreamwalk-bench` binary.
pub fn dreamwalk_bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dreamwalk-bench"))
}

/// Set in the child process `run_alone` starts.
const ALONE: &str = "DREAMWALK_TEST_ALONE";

/// Whether this process is a child that `run_alone` started to run one test.
pub fn running_alone() -> bool {
    std::env::var_os(ALONE).is_some()
}

/// Runs the test `name` of `module` (its `module_path!()`), ignored or not, alone in a
/// child process of this test binary with `envs` set, and asserts that it ran and passed.
pub fn run_alone(module: &str, name: &str, envs: &[(&str, &Path)]) {
    let module = module.split_once("::").map_or("", |(_, path)| path);
    let test = format!("{module}::{name}");
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &test,
            "--include-ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .envs(envs.iter().map(|&(key, value)| (key, value.as_os_str())))
        .env(ALONE, OsStr::new(&test))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "child test failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("1 passed"),
        "the child ran the test:\n{stdout}"
    );
}

/// Writes an executable shell script.
pub fn write_script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}
