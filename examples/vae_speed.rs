//! Times the AutoencoderKL decoder on the CPU: the SD 1.5 VAE config with random weights,
//! 1x4x64x64 latents -> 512x512 (or the size given), and prints the process's peak RSS.
//!
//! `cargo run --release --example vae_speed -- [runs] [latent_h] [latent_w]` (default 3 runs
//! after a warm-up, 64x64). Threads: rayon's default (all cores) or `RAYON_NUM_THREADS`.
//! Compare with `python3 ../shared/bench/time_decoders.py --cases sdvae_64x64`.

use dreamwalk::model::vae::{bench_decode, AutoencoderKlConfig, VaeDecoder};

/// A `kB` line of `/proc/self/status` (`VmHWM`, `VmRSS`), in MB.
fn status_mb(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn main() -> anyhow::Result<()> {
    let arg = |i: usize, default: usize| -> anyhow::Result<usize> {
        Ok(match std::env::args().nth(i) {
            Some(a) => a.parse()?,
            None => default,
        })
    };
    let (runs, h, w) = (arg(1, 3)?, arg(2, 64)?, arg(3, 64)?);
    let decoder = VaeDecoder::random(&AutoencoderKlConfig::stable_diffusion(), 0)?;
    let rss_loaded = status_mb("VmRSS:").unwrap_or(f64::NAN);
    let f = decoder.upscale_factor();
    println!(
        "AutoencoderKL decode (SD 1.5 config), {} rayon threads, {runs} runs after a warm-up",
        rayon::current_num_threads()
    );
    let t = bench_decode(&decoder, (1, h, w), runs)?;
    println!(
        "{h}x{w} -> {}x{}  min {:.3} s  median {:.3} s  {:.1} GFLOP/s ({:.0} GFLOP direct count)",
        h * f,
        w * f,
        t.min_ms / 1e3,
        t.median_ms / 1e3,
        t.gflops,
        decoder.flops(h, w) / 1e9,
    );
    println!(
        "RSS after building the decoder {rss_loaded:.0} MB, peak RSS (VmHWM) {:.0} MB",
        status_mb("VmHWM:").unwrap_or(f64::NAN)
    );
    Ok(())
}
