//! The CPU decoder cases, ours: TAESD and the SD 1.5 AutoencoderKL on random weights (the
//! weights do not change the work), timed per decode.

use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use dreamwalk::model::{AutoencoderKlConfig, VaeDecoder};
use dreamwalk::model::{TaesdConfig, TaesdDecoder};

use crate::cases::Case;
use crate::child::{time_runs, ChildResult};
use crate::probe::peak_rss_mb;

/// TAESD decodes of the case's latent size.
pub fn child_taesd(case: Case, warmup: usize, runs: usize) -> anyhow::Result<ChildResult> {
    let (h, w) = case.latent_hw().context("not a decoder case")?;
    // Random weights like the reference's re-init: the weights do not change the work.
    let decoder = TaesdDecoder::random(&TaesdConfig::default(), 0)?;
    let latents = Tensor::randn(0f32, 1f32, (1, 4, h, w), &Device::Cpu)?;
    let times = time_runs(case, warmup, runs, || {
        let started = Instant::now();
        let image = decoder.decode(&latents)?;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        drop(image);
        Ok(ms)
    })?;
    Ok(ChildResult {
        times_ms: times,
        peak_rss_mb: peak_rss_mb(),
        detail: serde_json::json!({ "gflop": decoder.flops(h, w) / 1e9 }),
    })
}

/// AutoencoderKL (SD 1.5 config) decodes of the case's latent size.
pub fn child_vae(case: Case, warmup: usize, runs: usize) -> anyhow::Result<ChildResult> {
    let (h, w) = case.latent_hw().context("not a decoder case")?;
    // Random weights from each layer's init hint (the diffusers default init's shapes):
    // the GroupNorms keep activations in range, and the weights do not change the work.
    let varmap = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let vae = VaeDecoder::new(vb, &AutoencoderKlConfig::stable_diffusion())?;
    let z = Tensor::randn(0f32, 1f32, (1, 4, h, w), &Device::Cpu)?;
    let times = time_runs(case, warmup, runs, || {
        let started = Instant::now();
        let image = vae.decode_raw(&z)?;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        drop(image);
        Ok(ms)
    })?;
    Ok(ChildResult {
        times_ms: times,
        peak_rss_mb: peak_rss_mb(),
        detail: serde_json::Value::Null,
    })
}
