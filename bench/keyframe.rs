//! The keyframe cases, ours: one UNet call or one text-encoder call at the real
//! architectures' sizes, on seeded random weights (the weights do not change the work), with
//! the inputs `time_unet.py` gives PyTorch (unit-normal latents and context, timestep 999;
//! 77 token ids).

use std::time::Instant;

use anyhow::Context;
use candle_core::{Device, Tensor};
use dreamwalk::model::single_file::builtin;
use dreamwalk::model::text::ClipTextEncoder;
use dreamwalk::model::UNet2DConditionModel;
use rand::{Rng, SeedableRng};

use crate::cases::Case;
use crate::child::{time_runs, ChildResult};
use crate::probe::peak_rss_mb;

/// Seed of the random weights.
const WEIGHTS_SEED: u64 = 0;

/// One UNet call per run, or one text-encoder call.
pub fn child_keyframe(case: Case, warmup: usize, runs: usize) -> anyhow::Result<ChildResult> {
    let work = case.keyframe_work().context("not a keyframe case")?;
    let dev = Device::Cpu;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut normal = |shape: &[usize]| -> anyhow::Result<Tensor> {
        let count = shape.iter().product();
        let values: Vec<f32> = (0..count)
            .map(|_| rng.sample::<f32, _>(rand_distr::StandardNormal))
            .collect();
        Ok(Tensor::from_vec(values, shape, &dev)?)
    };
    let built = Instant::now();
    let (times, detail) = if work.unet {
        // SD-Turbo / SD 2.1: linear projections; SD 1.5: 1x1 convolutions.
        let cfg = builtin::unet(work.sd2, work.sd2);
        let unet = UNet2DConditionModel::seeded(&cfg, WEIGHTS_SEED)?;
        let build_s = built.elapsed().as_secs_f64();
        let (h, w) = work.latent_hw;
        let context_width = if work.sd2 { 1024 } else { 768 };
        let sample = normal(&[work.batch, 4, h, w])?;
        let context = normal(&[work.batch, 77, context_width])?;
        let times = time_runs(case, warmup, runs, || {
            let started = Instant::now();
            let out = unet.forward(&sample, 999.0, &context)?;
            let ms = started.elapsed().as_secs_f64() * 1e3;
            drop(out);
            Ok(ms)
        })?;
        (times, serde_json::json!({ "build_s": build_s }))
    } else {
        let cfg = builtin::text_encoder(work.sd2);
        let encoder = ClipTextEncoder::seeded(&cfg, WEIGHTS_SEED)?;
        let build_s = built.elapsed().as_secs_f64();
        let ids: Vec<u32> = (0..77).map(|_| rng.random_range(0..49407)).collect();
        let ids = Tensor::from_vec(ids, (1, 77), &dev)?;
        let times = time_runs(case, warmup, runs, || {
            let started = Instant::now();
            let out = encoder.forward(&ids)?;
            let ms = started.elapsed().as_secs_f64() * 1e3;
            drop(out);
            Ok(ms)
        })?;
        (times, serde_json::json!({ "build_s": build_s }))
    };
    Ok(ChildResult {
        times_ms: times,
        peak_rss_mb: peak_rss_mb(),
        detail,
    })
}
