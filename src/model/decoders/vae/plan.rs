//! What a tiled decode runs: the decoder's steps after its latent level (the [`Chain`]),
//! the region of each step a tile needs, and the plan of passes over the tiles: which
//! whole-image checkpoints to keep within the memory budget (chosen by dynamic programming
//! over the chain, least work first), so the passes that gather GroupNorm statistics
//! recompute as little as the budget allows.

use crate::model::kernels::Rect;

/// One step of the decoder after its latent level, which ends just before the first
/// upsampler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Nearest x2, then the up block's 3x3 convolution.
    Upsample { block: usize },
    /// Resnet `index` of up block `block`.
    Resnet { block: usize, index: usize },
    /// `conv_norm_out` + SiLU, then `conv_out`: the image.
    Out,
}

/// Where a GroupNorm reads its input: the input of a step (a resnet's `norm1`,
/// `conv_norm_out`), or the middle of a resnet (`norm2`, on `conv1`'s output).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Barrier {
    pub step: usize,
    pub middle: bool,
}

/// The steps after the latent level, with their sizes and work.
#[derive(Clone, Debug, Default)]
pub(super) struct Chain {
    pub steps: Vec<Step>,
    /// Image pixels per latent pixel along a side at each step's input, then at the output
    /// (one more entry than `steps`).
    pub scale: Vec<usize>,
    /// Padded channels of the stream at each step's input.
    pub channels: Vec<usize>,
    /// Padded channels each step writes (the image's for `Out`).
    pub out_channels: Vec<usize>,
    /// FLOPs of each step per latent pixel, and of a resnet's first half (`conv1`).
    pub work: Vec<f64>,
    pub first_half_work: Vec<f64>,
}

impl Chain {
    /// The GroupNorms in the order the decoder meets them.
    pub fn barriers(&self) -> Vec<Barrier> {
        let mut barriers = Vec::new();
        for (step, kind) in self.steps.iter().enumerate() {
            match kind {
                Step::Resnet { .. } => {
                    barriers.push(Barrier {
                        step,
                        middle: false,
                    });
                    barriers.push(Barrier { step, middle: true });
                }
                Step::Out => barriers.push(Barrier {
                    step,
                    middle: false,
                }),
                Step::Upsample { .. } => {}
            }
        }
        barriers
    }

    /// Whether step `step` starts with a GroupNorm on its input.
    pub fn has_input_barrier(&self, step: usize) -> bool {
        matches!(self.steps[step], Step::Resnet { .. } | Step::Out)
    }

    /// The region of each step's input a tile needs so that the values at `target` are
    /// right on `owned` (latent pixels), for a latent map of `latent_hw`. Entry `s` is the
    /// input region of step `s` (in that map's pixels) for `s` in `root..=last`, where `last` is
    /// the step `target` lies in (for [`Point::Image`], `Out`); `None` before `root`.
    pub fn regions(
        &self,
        root: usize,
        target: Point,
        owned: Rect,
        latent_hw: (usize, usize),
    ) -> Vec<Option<Rect>> {
        let hw = |s: usize| (latent_hw.0 * self.scale[s], latent_hw.1 * self.scale[s]);
        let mut regions = vec![None; self.steps.len()];
        // The input region of the step the target lies in.
        let (last, need) = match target {
            Point::Input(s) => (s, owned.scaled(self.scale[s])),
            // conv1 reads one pixel around each output.
            Point::Middle(s) => (s, owned.scaled(self.scale[s]).grown(1, hw(s))),
            Point::Image => {
                let out = self.steps.len() - 1;
                (out, owned.scaled(self.scale[out]).grown(1, hw(out)))
            }
        };
        regions[last] = Some(need);
        let mut need = need;
        for s in (root..last).rev() {
            need = match self.steps[s] {
                // Two 3x3 convolutions.
                Step::Resnet { .. } => need.grown(2, hw(s)),
                Step::Upsample { .. } => upsample_source(need, hw(s)),
                Step::Out => unreachable!("Out is the last step"),
            };
            regions[s] = Some(need);
        }
        regions
    }

    /// The input region of every step for a tile of `tile` latent pixels far from the
    /// image's edges (its halos whole), in a pass from the latent level to the image.
    pub fn inner_tile_regions(&self, tile: usize) -> Vec<Option<Rect>> {
        let margin = 64;
        let side = tile + 2 * margin;
        let owned = Rect {
            y0: margin,
            y1: margin + tile,
            x0: margin,
            x1: margin + tile,
        };
        self.regions(0, Point::Image, owned, (side, side))
    }

    /// The largest buffers one tile of `tile` latent pixels holds at once, in bytes: the
    /// live maps of the heaviest step, or, where steps of different sizes alternate, the
    /// five buffers the workspace's pool keeps grown to the largest map.
    pub fn tile_bytes(&self, tile: usize) -> u64 {
        let regions = self.inner_tile_regions(tile);
        let mut peak = 0u64;
        let mut largest = 0u64;
        for (s, region) in regions.iter().enumerate() {
            let Some(region) = region else { continue };
            let px = region.area() as u64;
            let (cin, cout) = (self.channels[s] as u64, self.out_channels[s] as u64);
            // The previous step's output while it is cropped to this step's region.
            let before = match s {
                0 => 0,
                _ => regions[s - 1].map_or(0, |r| r.area() as u64) * cin,
            };
            let live = match self.steps[s] {
                // Input (or its crop), h1, and the normalised input or the skip path.
                Step::Resnet { .. } => px * (cin + 2 * cout) + before,
                Step::Upsample { .. } => px * cin + 4 * px * cout + before,
                Step::Out => px * cin + before + px * cout,
            };
            let output = match self.steps[s] {
                Step::Upsample { .. } => 4 * px * cout,
                _ => px * cout,
            };
            peak = peak.max(live * 4);
            largest = largest.max(px * cin * 4).max(output * 4);
        }
        peak.max(5 * largest)
    }

    /// Per step, the pixels the tiles of `tile` latent pixels compute over those of the
    /// image: every boundary between two tiles adds a halo on each side.
    pub fn halo_factors(&self, tile: usize, (h, w): (usize, usize)) -> Vec<f64> {
        let regions = self.inner_tile_regions(tile);
        (0..self.steps.len())
            .map(|s| {
                let Some(region) = regions[s] else {
                    return 1.0;
                };
                let scale = self.scale[s];
                // The halo on one side of a tile, in this step's pixels.
                let halo = region.height().saturating_sub(tile * scale) as f64 / 2.0;
                let axis = |len: usize| {
                    let tiles = len.div_ceil(tile.max(1)) as f64;
                    1.0 + (tiles - 1.0) * 2.0 * halo / (len * scale) as f64
                };
                axis(h) * axis(w)
            })
            .collect()
    }

    /// Bytes of the stream at the input of `step` over a whole latent map of `latent_px`.
    pub fn map_bytes(&self, step: usize, latent_px: usize) -> u64 {
        let scale = self.scale[step] as u64;
        latent_px as u64 * scale * scale * self.channels[step] as u64 * 4
    }
}

/// The region of the low-resolution map (`hw` its size) that nearest x2 then a 3x3
/// convolution read to make `need` (in the high-resolution map).
pub(super) fn upsample_source(need: Rect, (h, w): (usize, usize)) -> Rect {
    // Output rows y0..y1 read upsampled rows y0-1..y1+1, i.e. source rows (y0-1)/2 up to
    // (y1+1)/2 rounded up, within the map.
    let lo = |a: usize| a.saturating_sub(1) / 2;
    let hi = |b: usize, len: usize| (b + 1).min(2 * len).div_ceil(2);
    Rect {
        y0: lo(need.y0),
        y1: hi(need.y1, h),
        x0: lo(need.x0),
        x1: hi(need.x1, w),
    }
}

/// Where a pass over the tiles stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Point {
    /// The stream at the input of a step: a barrier's statistics, or a checkpoint.
    Input(usize),
    /// The middle of a resnet (`conv1`'s output): `norm2`'s statistics.
    Middle(usize),
    /// The decoded image.
    Image,
}

/// What making one convolution's Winograd weights costs, per float made, in the FLOPs of
/// convolution that take as long (measured: ~10 ms for 512 -> 512 channels, 9.4 M floats,
/// against ~100 GFLOP/s of convolution).
const WEIGHT_TRANSFORM: f64 = 100.0;

/// One pass over all tiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pass {
    /// Gather the statistics of a GroupNorm.
    Stats(Barrier),
    /// Store the stream at the input of a step as the next checkpoint (and gather the
    /// statistics of that step's first GroupNorm on the way).
    Checkpoint(usize),
    /// Decode the image.
    Image,
}

/// The passes of a tiled decode, in order, and what they cost.
#[derive(Clone, Debug)]
pub(super) struct TilePlan {
    pub tile: usize,
    pub passes: Vec<Pass>,
    /// FLOPs of all passes over the whole image, halos counted.
    pub work: f64,
    /// The largest activations held at once, bytes (estimated).
    pub peak_bytes: u64,
}

/// The plan of least work whose checkpoints, with a tile's buffers, the latent level's
/// output and the image, fit `budget_bytes`. Checkpoint 0 is the latent level's output,
/// always kept; without room for more, every GroupNorm's statistics take one pass from it.
pub(super) fn plan_passes(
    chain: &Chain,
    latent_hw: (usize, usize),
    tile: usize,
    fixed_bytes: u64,
    budget_bytes: u64,
) -> TilePlan {
    let n = chain.steps.len();
    let latent_px = latent_hw.0 * latent_hw.1;
    let tile_bytes = chain.tile_bytes(tile);
    let barriers = chain.barriers();
    let halo = chain.halo_factors(tile, latent_hw);
    let tiles = (latent_hw.0.div_ceil(tile.max(1)) * latent_hw.1.div_ceil(tile.max(1))) as f64;
    // Every tile's every convolution makes its Winograd weights anew (36 x cin x cout
    // floats written; ~1 GFLOP of convolution's time for 512 -> 512 channels): what makes
    // small tiles dear.
    let transform = |cin: usize, cout: usize| WEIGHT_TRANSFORM * 36.0 * (cin * cout) as f64;
    let (cin, cout) = (&chain.channels, &chain.out_channels);
    let per_tile = |s: usize, first_half: bool| match (chain.steps[s], first_half) {
        (Step::Resnet { .. }, false) => transform(cin[s], cout[s]) + transform(cout[s], cout[s]),
        _ => transform(cin[s], cout[s]),
    };
    // Work of running steps from..to (exclusive) over the whole image, halos included.
    let run = |from: usize, to: usize| {
        (from..to)
            .map(|s| chain.work[s] * halo[s] * latent_px as f64 + tiles * per_tile(s, false))
            .sum::<f64>()
    };
    let stats_work = |root: usize, b: Barrier| {
        let half = match b.middle {
            true => {
                chain.first_half_work[b.step] * halo[b.step] * latent_px as f64
                    + tiles * per_tile(b.step, true)
            }
            false => 0.0,
        };
        run(root, b.step) + half
    };
    // The barriers a segment from checkpoint `root` to `next` (n: the image) must gather
    // first: those after the root's own input barrier (gathered when it was stored) and
    // before `next`'s (gathered by the checkpoint pass).
    let between = |root: usize, next: usize| -> Vec<Barrier> {
        barriers
            .iter()
            .copied()
            .filter(|b| {
                *b > Barrier {
                    step: root,
                    middle: false,
                } || (root == 0 && b.step == 0)
            })
            .filter(|b| {
                next == n
                    || *b
                        < Barrier {
                            step: next,
                            middle: false,
                        }
            })
            .collect()
    };
    let root_bytes = |s: usize| chain.map_bytes(s, latent_px);
    // A checkpoint pass frees the old checkpoint's rows as it goes past them, and makes the
    // new one a row of tiles at a time: the two overlap over a row of tiles and its halo.
    let regions = chain.inner_tile_regions(tile);
    let overlap = |s: usize| {
        let scale = chain.scale[s];
        let halo = regions[s].map_or(0, |r| r.height().saturating_sub(tile * scale) / 2);
        ((tile + 2 * halo.div_ceil(scale)) as f64 / latent_hw.0.max(1) as f64).min(1.0)
    };
    // best[s]: least work to have checkpoint s stored with everything before it known.
    let mut best: Vec<Option<(f64, usize, u64)>> = vec![None; n + 1];
    best[0] = Some((0.0, 0, fixed_bytes + root_bytes(0) + tile_bytes));
    for next in 1..=n {
        for root in 0..next {
            let Some((so_far, _, peak_so_far)) = best[root] else {
                continue;
            };
            // Checkpoints only where a step reads the stream (not mid-way through Out).
            let (old, stored) = (
                root_bytes(root),
                if next < n { root_bytes(next) } else { 0 },
            );
            let both = old.max(stored) + (old.min(stored) as f64 * overlap(root)) as u64;
            let peak = fixed_bytes + both + tile_bytes;
            // Going straight from the latent level to the image is always allowed: it is
            // the least memory there is.
            if peak > budget_bytes && !(root == 0 && next == n) {
                continue;
            }
            let segment: f64 = between(root, next)
                .iter()
                .map(|&b| stats_work(root, b))
                .sum::<f64>()
                + run(root, next);
            let total = so_far + segment;
            if best[next].is_none_or(|(w, _, _)| total < w) {
                best[next] = Some((total, root, peak.max(peak_so_far)));
            }
        }
    }
    // Walk back from the image to the latent level.
    let mut roots = vec![n];
    while let Some(&at) = roots.last() {
        if at == 0 {
            break;
        }
        let (_, from, _) = best[at].expect("a reached step has a way there");
        roots.push(from);
    }
    roots.reverse();
    let mut passes = Vec::new();
    for pair in roots.windows(2) {
        let (root, next) = (pair[0], pair[1]);
        passes.extend(between(root, next).into_iter().map(Pass::Stats));
        passes.push(match next < n {
            true => Pass::Checkpoint(next),
            false => Pass::Image,
        });
    }
    let (work, _, peak_bytes) = best[n].expect("the image is always reached");
    TilePlan {
        tile,
        passes,
        work,
        peak_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SD VAE's shape after its latent level: 512 channels at 1x..2x, 256 at 4x, 128
    /// at 8x, three resnets per block.
    fn sd_chain() -> Chain {
        let mut steps = vec![Step::Upsample { block: 0 }];
        let mut scale = vec![1];
        let mut channels = vec![512];
        let mut out_channels = vec![512];
        let widths = [512, 512, 256, 128];
        let mut s = 2;
        let mut c = 512;
        for (block, &width) in widths.iter().enumerate().skip(1) {
            for index in 0..3 {
                steps.push(Step::Resnet { block, index });
                scale.push(s);
                channels.push(c);
                out_channels.push(width);
                c = width;
            }
            if block < 3 {
                steps.push(Step::Upsample { block });
                scale.push(s);
                channels.push(c);
                out_channels.push(c);
                s *= 2;
            }
        }
        steps.push(Step::Out);
        scale.push(s);
        channels.push(c);
        out_channels.push(8);
        scale.push(s);
        let work = (0..steps.len()).map(|i| (i + 1) as f64).collect();
        let first_half_work = (0..steps.len()).map(|i| (i + 1) as f64 / 2.0).collect();
        Chain {
            steps,
            scale,
            channels,
            out_channels,
            work,
            first_half_work,
        }
    }

    #[test]
    fn without_room_every_barrier_takes_a_pass_from_the_latent_level() {
        let chain = sd_chain();
        let plan = plan_passes(&chain, (64, 64), 16, 0, 0);
        let stats = plan
            .passes
            .iter()
            .filter(|p| matches!(p, Pass::Stats(_)))
            .count();
        assert_eq!(stats, chain.barriers().len());
        assert_eq!(plan.passes.last(), Some(&Pass::Image));
        assert!(!plan.passes.iter().any(|p| matches!(p, Pass::Checkpoint(_))));
    }

    #[test]
    fn with_room_checkpoints_cut_the_work_and_cover_every_barrier_once() {
        let chain = sd_chain();
        let tight = plan_passes(&chain, (64, 64), 16, 0, 0);
        let roomy = plan_passes(&chain, (64, 64), 16, 0, u64::MAX);
        assert!(
            roomy.work < tight.work / 2.0,
            "{} vs {}",
            roomy.work,
            tight.work
        );
        // Each barrier is gathered exactly once: by a stats pass or by the checkpoint pass
        // of the step it starts.
        let mut gathered: Vec<Barrier> = roomy
            .passes
            .iter()
            .filter_map(|p| match *p {
                Pass::Stats(b) => Some(b),
                Pass::Checkpoint(s) if chain.has_input_barrier(s) => Some(Barrier {
                    step: s,
                    middle: false,
                }),
                _ => None,
            })
            .collect();
        gathered.sort();
        assert_eq!(gathered, chain.barriers());
    }

    #[test]
    fn regions_grow_by_the_receptive_field() {
        let chain = sd_chain();
        let owned = Rect {
            y0: 10,
            y1: 20,
            x0: 0,
            x1: 5,
        };
        let regions = chain.regions(0, Point::Input(1), owned, (64, 64));
        // Resnet 1 reads the upsampler's output at 2x: rows 20..40, columns 0..10.
        assert_eq!(
            regions[1],
            Some(Rect {
                y0: 20,
                y1: 40,
                x0: 0,
                x1: 10
            })
        );
        // The upsampler reads rows (20-1)/2 = 9 .. ceil(41/2) = 21 of the latent map.
        assert_eq!(
            regions[0],
            Some(Rect {
                y0: 9,
                y1: 21,
                x0: 0,
                x1: 6
            })
        );
    }
}
