//! The x4 upscaler cases, ours: a picture upscaled 4x with the real x4 architecture (the
//! UNet of `stabilityai/stable-diffusion-x4-upscaler`: 7 input channels, a class-embedded
//! noise level, 1024-wide context; its 3-block VAE) on seeded random weights, the latent
//! denoised in blended tiles of 128 and decoded by tiles within a budget. One sampler step
//! per run (every further step is the same work again: the per-step time is reported), so
//! a run is the denoising step plus the 4x decode. Judged on peak RSS (≤ 6 GiB): memory
//! must follow the tile, not the picture (two sizes).

use std::time::Instant;

use anyhow::Context;
use candle_core::{Device, Tensor};
use dreamwalk::model::decoders::{AutoencoderKlConfig, Tiling as DecodeTiling, VaeDecoder};
use dreamwalk::model::schedulers::{PredictionType, Sampler, SamplerKind, SchedulerConfig};
use dreamwalk::model::sd::seeded_noise;
use dreamwalk::model::tiled::{crop, denoise_tiled, TileLayout, Tiling};
use dreamwalk::model::{UNet2DConditionModel, UNetConfig};

use crate::cases::Case;
use crate::child::{time_runs, ChildResult};
use crate::probe::peak_rss_mb;

/// `unet/config.json` of the real x4 upscaler (the keys that set the architecture).
const X4_UNET: &str = r#"{
  "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [256, 512, 512, 1024],
  "center_input_sample": false, "cross_attention_dim": 1024,
  "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
  "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 7,
  "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
  "num_class_embeds": 1000, "only_cross_attention": [true, true, true, false], "out_channels": 4,
  "sample_size": 128,
  "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
  "upcast_attention": false, "use_linear_projection": true
}"#;

/// `vae/config.json` of the real x4 upscaler.
const X4_VAE: &str = r#"{
  "act_fn": "silu", "block_out_channels": [128, 256, 512],
  "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
  "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
  "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
  "norm_num_groups": 32, "sample_size": 256, "scaling_factor": 0.08333
}"#;

/// Seed of the random weights.
const WEIGHTS_SEED: u64 = 0;

/// The x4 pipeline's default guidance (both halves in one batch-2 call per tile).
const GUIDANCE: f64 = 9.0;

/// The decode's activation budget: 3 GiB, leaving room for the weights (1.9 GB of UNet,
/// 0.2 GB of VAE) and the process within the 6 GiB target.
const DECODE_BUDGET: u64 = 3 << 30;

/// One tiled denoising step of a picture of the case's size, then its 4x decode.
pub fn child_x4(case: Case, warmup: usize, runs: usize) -> anyhow::Result<ChildResult> {
    let (h, w) = case.x4_hw().context("not an x4 case")?;
    let built = Instant::now();
    let unet_config: UNetConfig = serde_json::from_str(X4_UNET)?;
    let unet = UNet2DConditionModel::seeded(&unet_config, WEIGHTS_SEED)?;
    let vae_config: AutoencoderKlConfig = serde_json::from_str(X4_VAE)?;
    let vae = VaeDecoder::random(&vae_config, WEIGHTS_SEED)?;
    let build_s = built.elapsed().as_secs_f64();
    let dev = Device::Cpu;
    let low_res = seeded_noise(1, &[1, 3, h, w], &dev)?;
    let init = seeded_noise(2, &[1, 4, h, w], &dev)?;
    let context = seeded_noise(3, &[2, 77, 1024], &dev)?;
    let labels = Tensor::from_vec(vec![20f32; 2], 2, &dev)?;
    let scheduler = SchedulerConfig::stable_diffusion(PredictionType::VPrediction);
    let sampler = Sampler::new(&scheduler, SamplerKind::default_for(&scheduler), 1)?;
    let layout = TileLayout::new(
        Tiling::Blended {
            tile: 128,
            overlap: 32,
        },
        (h, w),
    )?;
    let tiling = DecodeTiling::Auto {
        budget_bytes: DECODE_BUDGET,
    };
    let plan = vae.plan(h, w, tiling);
    eprintln!(
        "{case}: {} tiles of 128; decode {plan}",
        layout.tiles().len()
    );
    let mut step_ms = Vec::new();
    let mut decode_ms = Vec::new();
    let times = time_runs(case, warmup, runs, || {
        let started = Instant::now();
        let outcome = denoise_tiled(
            &sampler,
            &init,
            GUIDANCE,
            &layout,
            None,
            |rect, x, t| {
                let low = crop(&low_res, rect)?;
                let input = Tensor::cat(&[x, &Tensor::cat(&[&low, &low], 0)?], 1)?;
                unet.forward_with_class_labels(&input, t, &context, Some(&labels))
            },
            |_| {},
        )?;
        let denoised = started.elapsed().as_secs_f64() * 1e3;
        let image = vae.decode_with(&outcome.latents, tiling)?;
        let total = started.elapsed().as_secs_f64() * 1e3;
        drop(image);
        step_ms.push(denoised);
        decode_ms.push(total - denoised);
        Ok(total)
    })?;
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    Ok(ChildResult {
        times_ms: times,
        peak_rss_mb: peak_rss_mb(),
        detail: serde_json::json!({
            "build_s": build_s,
            "tiles": layout.tiles().len(),
            "step_ms": min(&step_ms),
            "decode_ms": min(&decode_ms),
            "decode_plan": plan.to_string(),
            "output": format!("{}x{}", w * 4, h * 4),
        }),
    })
}
