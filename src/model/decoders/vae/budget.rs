//! How much memory a decode works in, and the choice it makes under a [`Tiling`]: the
//! whole image when it fits the budget, else the largest tiles and the checkpoints that
//! fit it.

use std::fmt;

use super::plan::{plan_passes, Pass, Step, TilePlan};
use super::steps::PLAIN_ATTENTION_TOKENS;
use super::VaeDecoder;
use crate::model::decoders::tiling::Tiling;
use crate::model::kernels::ConvShape;

/// Tile sides tried for [`Tiling::Auto`], largest first (latent pixels): large tiles waste
/// less work on their halos.
const AUTO_TILES: [usize; 8] = [256, 192, 128, 96, 64, 48, 32, 16];

/// How one decode runs: the whole image at once, or by tiles in passes.
#[derive(Clone, Debug)]
pub struct DecodePlan {
    /// `None`: the whole image at once.
    pub(super) tiles: Option<TilePlan>,
    /// The largest activations the decode holds at once, bytes (an estimate from the
    /// layer sizes: its working buffer).
    pub estimated_bytes: u64,
    /// The decode's multiply-adds over the whole-image decode's (1 when not tiled; the
    /// tiles' halos counted).
    pub relative_work: f64,
}

impl DecodePlan {
    /// Whether the decode runs by tiles.
    pub fn is_tiled(&self) -> bool {
        self.tiles.is_some()
    }

    /// The tile side in latent pixels, when tiled.
    pub fn tile(&self) -> Option<usize> {
        self.tiles.as_ref().map(|t| t.tile)
    }

    /// Passes over the tiles (1 for the whole image).
    pub fn passes(&self) -> usize {
        self.tiles.as_ref().map_or(1, |t| t.passes.len())
    }

    /// Whole-image checkpoints stored beyond the latent level's output.
    pub fn checkpoints(&self) -> usize {
        self.tiles.as_ref().map_or(0, |t| {
            t.passes
                .iter()
                .filter(|p| matches!(p, Pass::Checkpoint(_)))
                .count()
        })
    }
}

impl fmt::Display for DecodePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = self.estimated_bytes as f64 / (1 << 20) as f64;
        match &self.tiles {
            None => write!(f, "whole image, ~{mib:.0} MiB"),
            Some(t) => write!(
                f,
                "tiles of {0}x{0} latents, {1} passes, {2} checkpoints, ~{3:.1}x the work, \
                 ~{mib:.0} MiB",
                t.tile,
                t.passes.len(),
                self.checkpoints(),
                self.relative_work
            ),
        }
    }
}

impl VaeDecoder {
    /// How a decode of `h x w` latents runs under `tiling`, and what it holds.
    pub fn plan(&self, h: usize, w: usize, tiling: Tiling) -> DecodePlan {
        let whole = DecodePlan {
            tiles: None,
            estimated_bytes: self.whole_image_bytes(h, w),
            relative_work: 1.0,
        };
        let plan = match tiling {
            Tiling::Off => return whole,
            Tiling::Auto { budget_bytes } if whole.estimated_bytes <= budget_bytes => return whole,
            Tiling::Auto { budget_bytes } => self.auto_plan(h, w, budget_bytes),
            Tiling::Tiles { tile, budget_bytes } => {
                let image = self.image_bytes(h, w) + self.scratch_bytes();
                plan_passes(&self.chain, (h, w), tile.max(1), image, budget_bytes)
            }
        };
        let latent_px = (h * w) as f64;
        let chain_work: f64 = self.chain.work.iter().sum::<f64>() * latent_px;
        let total = self.flops(h, w);
        let relative_work = (total - chain_work + plan.work) / total;
        DecodePlan {
            // The tiles' phase (the plan counts the image and the scratch), or the latent
            // level's before it.
            estimated_bytes: plan.peak_bytes.max(
                self.latent_level_bytes(h, w, true) + self.image_bytes(h, w) + self.scratch_bytes(),
            ),
            relative_work,
            tiles: Some(plan),
        }
    }

    /// The whole-image decode's largest activations held at once, bytes (estimated from
    /// the layer sizes).
    pub fn whole_image_bytes(&self, h: usize, w: usize) -> u64 {
        let chain = &self.chain;
        let latent_px = (h * w) as u64;
        let mut peak = self.latent_level_bytes(h, w, h * w > PLAIN_ATTENTION_TOKENS);
        for (s, step) in chain.steps.iter().enumerate() {
            let scale = chain.scale[s] as u64;
            let px = latent_px * scale * scale;
            let (cin, cout) = (chain.channels[s] as u64, chain.out_channels[s] as u64);
            let live = match step {
                Step::Resnet { .. } => px * (cin + 2 * cout),
                Step::Upsample { .. } => px * cin + 4 * px * cout,
                Step::Out => px * cin,
            };
            peak = peak.max(live * 4);
        }
        peak + self.image_bytes(h, w) + self.scratch_bytes()
    }

    /// What every decode holds besides its maps: the widest layer's Winograd weights (made
    /// per call into one buffer) and each thread's transform buffers (kept between calls).
    fn scratch_bytes(&self) -> u64 {
        let widest = self.conv_in.out_channels_padded() as u64;
        let threads = rayon::current_num_threads() as u64;
        // 36 points; chunks of up to ~96 tiles of input and output channels per thread.
        36 * widest * widest * 4 + threads * 36 * 96 * 2 * widest * 4
    }

    /// The latent level's largest activations: three maps in a resnet (the stream, conv1's
    /// output, the normalised input), five in the plain attention (the stream, its
    /// normalised copy, q, k, v), three and two chunks in the chunked one.
    fn latent_level_bytes(&self, h: usize, w: usize, chunked: bool) -> u64 {
        let map = (h * w * self.conv_in.out_channels_padded() * 4) as u64;
        match chunked {
            true => 3 * map + 2 * map.min(4096 * self.conv_in.out_channels_padded() as u64 * 4),
            false => 5 * map,
        }
    }

    /// The decoded image's bytes (f32 planes).
    fn image_bytes(&self, h: usize, w: usize) -> u64 {
        let f = self.upscale_factor();
        (self.config.out_channels * h * f * w * f * 4) as u64
    }

    /// The plan of least work among the tile sizes whose buffers, with the latent level's
    /// output and the image, fit `budget` (the smallest tile when none does): larger tiles
    /// waste less on halos, smaller ones leave room for checkpoints.
    fn auto_plan(&self, h: usize, w: usize, budget: u64) -> TilePlan {
        let image = self.image_bytes(h, w) + self.scratch_bytes();
        let fixed = image + self.chain.map_bytes(0, h * w);
        let longest = h.max(w);
        let smallest = AUTO_TILES[AUTO_TILES.len() - 1].min(longest);
        AUTO_TILES
            .into_iter()
            .filter(|&tile| tile < longest)
            .filter(|&tile| fixed + self.chain.tile_bytes(tile) <= budget)
            .map(|tile| plan_passes(&self.chain, (h, w), tile, image, budget))
            .min_by(|a, b| a.work.total_cmp(&b.work))
            .unwrap_or_else(|| plan_passes(&self.chain, (h, w), smallest, image, budget))
    }
}
