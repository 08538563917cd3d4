//! What `/proc` says about the machine and this process: CPU, cores, memory, load average,
//! peak and current resident memory.

use std::time::{Duration, Instant};

use serde::Serialize;

/// Where the figures were taken.
#[derive(Clone, Debug, Serialize)]
pub struct MachineInfo {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    /// 1-minute load average before and after the run: how busy the cores were.
    pub load_before: Option<f64>,
    pub load_after: Option<f64>,
}

impl MachineInfo {
    pub fn probe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).trim().to_string())
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        let memory_gib = proc_kb("/proc/meminfo", "MemTotal").unwrap_or(0) as f64 / 1048576.0;
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib,
            load_before: load_average(),
            load_after: None,
        }
    }
}

/// The 1-minute load average.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A `kB` field of a /proc status-like file.
fn proc_kb(path: &str, key: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix(key)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
}

/// This process's peak resident memory so far, MiB.
pub fn peak_rss_mb() -> Option<f64> {
    proc_kb("/proc/self/status", "VmHWM").map(|kb| kb as f64 / 1024.0)
}

/// Samples this process's resident memory every 20 ms on a thread, until finished.
pub struct RssSampler {
    stop: crossbeam_channel::Sender<()>,
    thread: std::thread::JoinHandle<Vec<(f64, f64)>>,
}

impl RssSampler {
    pub fn start() -> Self {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut samples = Vec::new();
            loop {
                if let Some(kb) = proc_kb("/proc/self/status", "VmRSS") {
                    samples.push((started.elapsed().as_secs_f64(), kb as f64 / 1024.0));
                }
                match stopped.recv_timeout(Duration::from_millis(20)) {
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
                    _ => return samples,
                }
            }
        });
        Self { stop, thread }
    }

    /// (seconds since start, MiB) samples.
    pub fn finish(self) -> Vec<(f64, f64)> {
        let _ = self.stop.send(());
        self.thread.join().unwrap_or_default()
    }
}
