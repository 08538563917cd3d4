//! Times the TAESD decoder on the CPU: random weights (default config, normal(0, 0.05) like
//! the fixture), 72x128 latents (576x1024 image) and 64x64 latents (512x512).
//!
//! `cargo run --release --example taesd_speed -- [runs]` (default 5 runs after a warm-up).

use dreamwalk::model::taesd::{bench_decode, TaesdConfig, TaesdDecoder};

fn main() -> anyhow::Result<()> {
    let runs: usize = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => 5,
    };
    let decoder = TaesdDecoder::random(&TaesdConfig::default(), 0)?;
    println!(
        "TAESD decode, default config, {} rayon threads, {runs} runs",
        rayon::current_num_threads()
    );
    for (h, w) in [(72, 128), (64, 64)] {
        let f = decoder.upscale_factor();
        let gflop = decoder.flops(h, w) / 1e9;
        for rgba in [false, true] {
            let t = bench_decode(&decoder, (1, h, w), runs, rgba)?;
            println!(
                "{h}x{w} -> {}x{} {:<5} min {:7.1} ms  median {:7.1} ms  {:6.1} GFLOP/s ({gflop:.0} GFLOP direct-conv count)",
                h * f,
                w * f,
                if rgba { "rgba" } else { "f32" },
                t.min_ms,
                t.median_ms,
                t.gflops,
            );
        }
    }
    Ok(())
}
