//! The guided sampling loop over tiles: at every step each tile's prediction is made on
//! its own crop of the latent, the predictions are blended with the layout's weights into
//! one for the whole latent, and the scheduler steps the whole latent with it. Because a
//! scheduler's step is linear in the model output, this is MultiDiffusion's average of the
//! tiles' own steps.
//!
//! After each step a tile's predicted clean latents are measured with Immerkaer's estimator
//! ([`super::noise`]); a tile whose estimate is below the threshold stops refining: its
//! clean estimate is kept, and from then on its output is the one that implies that clean
//! estimate ([`Scheduler::output_for_original`]), so the sampler carries it there without
//! another UNet call.

use candle_core::Tensor;

use super::layout::{TileLayout, TileRect};
use super::noise::noise_estimate;
use crate::model::schedulers::{guided_prediction, Scheduler};
use crate::model::{ModelError, Result};

/// When a tile stops refining.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NoiseStop {
    /// A tile whose predicted clean latents' noise estimate is below this stops.
    pub threshold: f64,
    /// Steps every tile runs before it may stop. The first predictions of the clean latents
    /// are smooth everywhere (the model has not committed to any detail yet), so their
    /// estimates are low even where detail is still to come.
    pub min_steps: usize,
}

impl NoiseStop {
    /// A stop at `threshold` once half of `steps` (rounded up) have run.
    pub fn after_half(threshold: f64, steps: usize) -> Self {
        Self {
            threshold,
            min_steps: steps.div_ceil(2),
        }
    }

    /// Checks the values a person gives; the error names the value.
    pub fn validate(&self) -> Result<()> {
        if !self.threshold.is_finite() || self.threshold < 0.0 {
            return Err(ModelError::Invalid(format!(
                "noise threshold {}: give a number of at least 0",
                self.threshold
            )));
        }
        Ok(())
    }
}

/// What happened to one tile.
#[derive(Clone, Debug, PartialEq)]
pub struct TileReport {
    /// Where the tile lies in the latent.
    pub rect: TileRect,
    /// Steps the UNet ran on this tile (each one UNet call, a batch of two with guidance).
    pub steps_run: usize,
    /// The noise estimate of its predicted clean latents after the last step it ran
    /// (`None` for a tile under 3 x 3).
    pub noise: Option<f64>,
    /// The estimate after each step it ran, in order (empty for a tile under 3 x 3).
    pub noise_history: Vec<f64>,
}

/// Where a tiled loop stands after a step, for progress displays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TiledStep {
    /// Steps done (1 after the first).
    pub step: usize,
    /// Steps in all.
    pub steps: usize,
    /// UNet tile calls run so far.
    pub calls_run: usize,
    /// Tile calls skipped so far because their tile had stopped refining.
    pub calls_skipped: usize,
    /// Tile calls a run without stopping makes: tiles x steps.
    pub calls_total: usize,
    /// Tiles still refining.
    pub tiles_refining: usize,
}

/// The result of a tiled loop: the latents and what each tile did.
#[derive(Clone, Debug)]
pub struct TiledOutcome {
    /// The denoised latents of the whole latent.
    pub latents: Tensor,
    /// One report per tile of the layout, in its order.
    pub tiles: Vec<TileReport>,
    /// Steps in all.
    pub steps: usize,
}

impl TiledOutcome {
    /// UNet tile calls made.
    pub fn calls_run(&self) -> usize {
        self.tiles.iter().map(|t| t.steps_run).sum()
    }

    /// UNet tile calls a run without stopping would have made (tiles x steps).
    pub fn calls_total(&self) -> usize {
        self.tiles.len() * self.steps
    }

    /// Tile calls saved by tiles that stopped refining.
    pub fn calls_saved(&self) -> usize {
        self.calls_total() - self.calls_run()
    }
}

/// [`crate::model::schedulers::denoise`] over the tiles of `layout`: `init_latents` (B, C,
/// H, W) unit-variance noise with (H, W) the layout's size, scaled by the scheduler's
/// `init_noise_sigma`; `predict(tile, input, t)` is the model on a tile's crop of the model
/// input (doubled into a batch of 2B with guidance, as `denoise` does), and pairs it with
/// that tile's crop of any spatial conditioning. With `noise_stop`, a tile that has run its
/// `min_steps` and whose predicted clean latents' noise estimate is below its `threshold`
/// stops refining (see the module docs). `on_step` is called after every step.
///
/// With one tile covering the latent this is `denoise` exactly: the same inputs, the same
/// guidance arithmetic, the same steps.
pub fn denoise_tiled(
    scheduler: &dyn Scheduler,
    init_latents: &Tensor,
    guidance_scale: f64,
    layout: &TileLayout,
    noise_stop: Option<NoiseStop>,
    mut predict: impl FnMut(&TileRect, &Tensor, f64) -> Result<Tensor>,
    mut on_step: impl FnMut(&TiledStep),
) -> Result<TiledOutcome> {
    let (_, _, h, w) = init_latents.dims4()?;
    if layout.latent_hw() != (h, w) {
        return Err(ModelError::Invalid(format!(
            "tile layout for a {:?} latent, but the latents are {h}x{w}",
            layout.latent_hw()
        )));
    }
    if let Some(stop) = &noise_stop {
        stop.validate()?;
    }
    let tiles = layout.tiles();
    let steps = scheduler.num_steps();
    let mut reports: Vec<TileReport> = tiles
        .iter()
        .map(|&rect| TileReport {
            rect,
            steps_run: 0,
            noise: None,
            noise_history: Vec::new(),
        })
        .collect();
    // A stopped tile's kept clean latents.
    let mut kept: Vec<Option<Tensor>> = vec![None; tiles.len()];
    let mut calls_skipped = 0;
    // An f32 widened to f64, as `denoise` scales.
    let mut x = init_latents.affine(f64::from(scheduler.init_noise_sigma() as f32), 0.0)?;
    for (step_index, &t) in scheduler.timesteps().iter().enumerate() {
        let input = scheduler.scale_model_input(&x, step_index)?;
        let mut outputs = Vec::with_capacity(tiles.len());
        for (k, rect) in tiles.iter().enumerate() {
            let sample = crop(&x, rect)?;
            let output = match &kept[k] {
                Some(original) => {
                    calls_skipped += 1;
                    scheduler.output_for_original(original, step_index, &sample)?
                }
                None => {
                    let tile_input = crop(&input, rect)?;
                    let mut tile_predict = |x: &Tensor, t: f64| predict(rect, x, t);
                    let output =
                        guided_prediction(&tile_input, t, guidance_scale, &mut tile_predict)?;
                    let original = scheduler.predicted_original(&output, step_index, &sample)?;
                    let report = &mut reports[k];
                    report.steps_run += 1;
                    report.noise = noise_estimate(&original)?;
                    report.noise_history.extend(report.noise);
                    let quiet = matches!(
                        (report.noise, noise_stop),
                        (Some(noise), Some(stop))
                            if noise < stop.threshold && report.steps_run >= stop.min_steps
                    );
                    if quiet && step_index + 1 < steps {
                        kept[k] = Some(original);
                    }
                    output
                }
            };
            outputs.push(output);
        }
        let output = match outputs.len() {
            1 => outputs.remove(0),
            _ => blend(layout, &outputs, &x)?,
        };
        x = scheduler.step(&output, step_index, &x)?;
        let calls_run = reports.iter().map(|r| r.steps_run).sum();
        on_step(&TiledStep {
            step: step_index + 1,
            steps,
            calls_run,
            calls_skipped,
            calls_total: tiles.len() * steps,
            tiles_refining: kept.iter().filter(|k| k.is_none()).count(),
        });
    }
    Ok(TiledOutcome {
        latents: x,
        tiles: reports,
        steps,
    })
}

/// The tile's part of `x` (B, C, H, W), contiguous (the whole of `x` when it covers it).
pub fn crop(x: &Tensor, rect: &TileRect) -> Result<Tensor> {
    Ok(x.narrow(2, rect.y, rect.height)?
        .narrow(3, rect.x, rect.width)?
        .contiguous()?)
}

/// The tiles' outputs summed with their normalised weights into one of `like`'s shape.
fn blend(layout: &TileLayout, outputs: &[Tensor], like: &Tensor) -> Result<Tensor> {
    let (batch, channels, h, w) = like.dims4()?;
    let mut sum = vec![0f32; batch * channels * h * w];
    for (k, (rect, output)) in layout.tiles().iter().zip(outputs).enumerate() {
        let values = output.flatten_all()?.to_vec1::<f32>()?;
        let weights = layout.weights(k);
        let tile_plane = rect.height * rect.width;
        if values.len() != batch * channels * tile_plane {
            return Err(ModelError::Invalid(format!(
                "the prediction for tile {k} ({rect}) has shape {:?}",
                output.dims()
            )));
        }
        for (plane, tile_values) in values.chunks_exact(tile_plane).enumerate() {
            let base = plane * h * w;
            for (r, (row, row_weights)) in tile_values
                .chunks_exact(rect.width)
                .zip(weights.chunks_exact(rect.width))
                .enumerate()
            {
                let at = base + (rect.y + r) * w + rect.x;
                for ((s, v), wt) in sum[at..at + rect.width]
                    .iter_mut()
                    .zip(row)
                    .zip(row_weights)
                {
                    *s += v * wt;
                }
            }
        }
    }
    Ok(Tensor::from_vec(
        sum,
        (batch, channels, h, w),
        like.device(),
    )?)
}
