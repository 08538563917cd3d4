//! The CPU decoder cases, ours: TAESD and the SD 1.5 AutoencoderKL on random weights (the
//! weights do not change the work), timed per decode, each with its working buffer: the
//! peak of live heap bytes during the decodes over those live before the first (the
//! weights, the latents), as the bench's counting allocator sees them, beside the
//! decoder's own estimate.

use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use dreamwalk::model::{AutoencoderKlConfig, VaeDecoder};
use dreamwalk::model::{TaesdConfig, TaesdDecoder};

use crate::cases::Case;
use crate::child::{time_runs, ChildResult};
use crate::probe::peak_rss_mb;

const MIB: f64 = (1 << 20) as f64;

/// TAESD decodes of the case's latent size.
pub fn child_taesd(case: Case, warmup: usize, runs: usize) -> anyhow::Result<ChildResult> {
    let (h, w) = case.latent_hw().context("not a decoder case")?;
    // Random weights like the reference's re-init: the weights do not change the work.
    let decoder = TaesdDecoder::random(&TaesdConfig::default(), 0)?;
    let latents = Tensor::randn(0f32, 1f32, (1, 4, h, w), &Device::Cpu)?;
    // From before the first decode: TAESD keeps its activation buffers between calls.
    let base = crate::alloc::start();
    let times = time_runs(case, warmup, runs, || {
        let started = Instant::now();
        let image = decoder.decode(&latents)?;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        drop(image);
        Ok(ms)
    })?;
    let working = crate::alloc::peak_since(base);
    Ok(ChildResult {
        times_ms: times,
        peak_rss_mb: peak_rss_mb(),
        detail: serde_json::json!({
            "gflop": decoder.flops(h, w) / 1e9,
            "working_mb": working as f64 / MIB,
            "estimated_mb": decoder.whole_image_bytes(h, w) as f64 / MIB,
        }),
    })
}

/// AutoencoderKL (SD 1.5 config) decodes of the case's latent size, tiled as the case says.
pub fn child_vae(case: Case, warmup: usize, runs: usize) -> anyhow::Result<ChildResult> {
    let (h, w) = case.latent_hw().context("not a decoder case")?;
    // Random weights from each layer's init hint (the diffusers default init's shapes):
    // the GroupNorms keep activations in range, and the weights do not change the work.
    let config = AutoencoderKlConfig::stable_diffusion();
    let mut vae = match case.is_tiled_vae() {
        // Seeded weights, not kept twice (a VarMap would hold a second copy, 200 MB, in
        // the RSS the tiled cases are judged on).
        true => VaeDecoder::random(&config, 0)?,
        false => {
            let varmap = candle_nn::VarMap::new();
            let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
            VaeDecoder::new(vb, &config)?
        }
    };
    let tiling = case.vae_tiling();
    vae.set_tiling(tiling);
    let plan = vae.plan(h, w, tiling);
    eprintln!("{case}: {plan}");
    let z = Tensor::randn(0f32, 1f32, (1, 4, h, w), &Device::Cpu)?;
    let base = crate::alloc::start();
    let times = time_runs(case, warmup, runs, || {
        let started = Instant::now();
        let image = vae.decode_raw(&z)?;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        drop(image);
        Ok(ms)
    })?;
    let working = crate::alloc::peak_since(base);
    Ok(ChildResult {
        times_ms: times,
        peak_rss_mb: peak_rss_mb(),
        detail: serde_json::json!({
            "gflop": vae.flops(h, w) / 1e9,
            "working_mb": working as f64 / MIB,
            "estimated_mb": plan.estimated_bytes as f64 / MIB,
            "plan": plan.to_string(),
        }),
    })
}
