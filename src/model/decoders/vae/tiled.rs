//! The decode by tiles: any image size in memory bounded by the tile (plus the latent
//! level's few maps), with the values of the whole-image decode.
//!
//! **What must stay whole.** Every GroupNorm normalises with the mean and variance of its
//! whole input map. Tiles that use their own statistics (diffusers' `tiled_decode`) shift
//! each tile's tone; the multidiffusion Tiled VAE gathers the statistics over all tiles, but
//! keeps every tile's activations meanwhile, i.e. the whole image's. Here nothing at image
//! resolution is ever whole:
//!
//! * **The latent level** (everything before the first upsampler: conv_in, the mid block,
//!   up block 0's resnets) runs on the whole latent map as the plain decode does. Its maps
//!   are 1/64 of the image's pixels, and the attention needs k and v of every token anyway
//!   (exact attention has no other way): it runs in chunks with an online softmax
//!   ([`Attention::forward_chunked`](crate::model::kernels::Attention)), so the stream, k
//!   and v are its only whole maps. Its output `X0` is the first checkpoint.
//! * **The steps after it** (upsamplers, resnets, `conv_norm_out`, `conv_out`: the
//!   [`Chain`](super::plan::Chain)) run on square tiles of the latent grid, each tile cut from the last
//!   checkpoint with the halo its receptive field needs (each 3x3 convolution reads one
//!   pixel around, an upsampler half of that in its source) and cropped again before
//!   every step, so no pixel outside what the target needs is computed.
//! * **Statistics by passes.** A GroupNorm's statistics are known once every tile has
//!   reached it, and the next layer cannot start before. So a pass over all tiles runs from
//!   the checkpoint up to the first GroupNorm not yet known and gathers its statistics over
//!   each tile's own pixels (count, mean and squared deviations in f64, merged across tiles
//!   exactly as over one map, [`GroupStats::merge`]); the next pass runs one GroupNorm
//!   further with it. The last pass decodes the image. Every tile of every pass normalises
//!   with the whole image's statistics, so the result is the plain decode's up to float
//!   rounding (tested within 1e-3; ~2e-5 seen on outputs of magnitude ~2).
//! * **Checkpoints buy back the recomputation.** With only `X0` kept, each of the SD VAE's
//!   19 GroupNorms after the latent level costs a pass from `X0` (a 4K decode does ~10x
//!   the whole decode's work). Storing the stream at a later step as a whole-image
//!   checkpoint (gathering the statistics of that step's first GroupNorm on the way) lets
//!   later passes start there; [`plan_passes`](super::plan::plan_passes) picks the tile
//!   size and the checkpoints of least work among those that fit the memory budget (4K
//!   within 2.5 GiB: seven, ~3.7x). A checkpoint is kept in bands of rows
//!   ([`Checkpoint`]): the pass that makes the next one frees the old one's rows as it goes
//!   past them, so the two are held together only over a row of tiles. With a small
//!   budget none is kept, and the memory is the tile's.
//!
//! Tiles run one after another, each step's convolutions spread over the threads as in the
//! plain decode (a tile holds hundreds to thousands of Winograd tiles).

use super::checkpoint::Checkpoint;
use super::plan::{Pass, Point, Step, TilePlan};
use super::{VaeDecoder, Workspace};
use crate::model::decoders::tiling::split;
use crate::model::kernels::{Act, GroupStats, Rect};

/// Every GroupNorm's statistics gathered so far: `[input, middle]` per step.
type Known = Vec<[Option<GroupStats>; 2]>;

impl VaeDecoder {
    /// Decodes one image's latents (NCHW values) into `image` (NCHW) by tiles, as `plan`
    /// says.
    pub(super) fn decode_one_tiled(
        &self,
        latents: &[f32],
        (h, w): (usize, usize),
        image: &mut [f32],
        plan: &TilePlan,
        ws: &mut Workspace,
    ) {
        let x0 = self.latent_level(latents, (h, w), true, ws);
        // The latent level's buffers are not the tiles' sizes: let them go.
        ws.pool.clear();
        let rows = split(h, plan.tile);
        let columns = split(w, plan.tile);
        let tiles_of =
            |(y0, y1): (usize, usize)| columns.iter().map(move |&(x0, x1)| Rect { y0, y1, x0, x1 });
        let chain = &self.chain;
        let mut known: Known = vec![[None, None]; chain.steps.len()];
        let mut root = Checkpoint::split(0, x0, &rows);
        for &pass in &plan.passes {
            match pass {
                Pass::Stats(barrier) => {
                    let point = match barrier.middle {
                        true => Point::Middle(barrier.step),
                        false => Point::Input(barrier.step),
                    };
                    let norm = self.norm_at(chain.steps[barrier.step], barrier.middle);
                    let scale = chain.scale[barrier.step];
                    let mut total: Option<GroupStats> = None;
                    for tile in rows.iter().flat_map(|&row| tiles_of(row)) {
                        let (act, rect) = self.run_tile(&root, point, tile, (h, w), &known, ws);
                        let stats = norm.rect_stats(&act, tile.scaled(scale).within(&rect));
                        merge(&mut total, stats);
                        ws.pool.give(act.into_buffer());
                    }
                    known[barrier.step][usize::from(barrier.middle)] = total;
                }
                Pass::Checkpoint(step) => {
                    let scale = chain.scale[step];
                    let (mw, c) = (w * scale, chain.channels[step]);
                    let mut next = Checkpoint::new(step, mw, c);
                    let norm = match chain.has_input_barrier(step) {
                        true => Some(self.norm_at(chain.steps[step], false)),
                        false => None,
                    };
                    let point = Point::Input(step);
                    let mut total: Option<GroupStats> = None;
                    for (i, &row) in rows.iter().enumerate() {
                        let band_rows = (row.1 - row.0) * scale;
                        let mut band = Act::reuse(Vec::new(), 1, band_rows, mw, c);
                        for tile in tiles_of(row) {
                            let (act, rect) = self.run_tile(&root, point, tile, (h, w), &known, ws);
                            let owned = tile.scaled(scale);
                            let at = (owned.y0 - row.0 * scale, owned.x0);
                            act.copy_to(owned.within(&rect), &mut band, at);
                            if let Some(norm) = norm {
                                merge(&mut total, norm.rect_stats(&act, owned.within(&rect)));
                            }
                            ws.pool.give(act.into_buffer());
                        }
                        next.push_band(row.0 * scale, band);
                        // The rows of the old checkpoint above what the next row of tiles
                        // reads are needed no more.
                        if let Some(&below) = rows.get(i + 1) {
                            let first = Rect {
                                y0: below.0,
                                y1: below.1,
                                x0: 0,
                                x1: columns[0].1,
                            };
                            let regions = chain.regions(root.step, point, first, (h, w));
                            if let Some(need) = regions[root.step] {
                                root.free_above(need.y0);
                            }
                        }
                    }
                    known[step][0] = total;
                    root = next;
                }
                Pass::Image => {
                    for tile in rows.iter().flat_map(|&row| tiles_of(row)) {
                        self.image_tile(&root, tile, (h, w), &known, image, ws);
                    }
                }
            }
        }
        ws.pool.clear();
    }

    /// Runs one tile (`owned`, latent pixels) from the checkpoint to `point`: returns the
    /// tile's activation there (at `Image`: the input of `Out`) and the rectangle of the map
    /// it covers, which holds the tile's own pixels (scaled) with their values right.
    fn run_tile(
        &self,
        root: &Checkpoint,
        point: Point,
        owned: Rect,
        latent_hw: (usize, usize),
        known: &Known,
        ws: &mut Workspace,
    ) -> (Act, Rect) {
        let chain = &self.chain;
        let regions = chain.regions(root.step, point, owned, latent_hw);
        let last = match point {
            Point::Input(s) | Point::Middle(s) => s,
            Point::Image => chain.steps.len() - 1,
        };
        let region = |s: usize| regions[s].expect("regions cover the root to the target");
        let mut rect = region(root.step);
        let len = rect.area() * chain.channels[root.step];
        let mut x = root.crop(rect, ws.pool.take(len));
        for (s, gathered) in known.iter().enumerate().take(last + 1).skip(root.step) {
            let need = region(s);
            if need != rect {
                let cropped = x.crop(need.within(&rect), ws.pool.take(need.area() * x.c));
                ws.pool
                    .give(std::mem::replace(&mut x, cropped).into_buffer());
                rect = need;
            }
            if s == last {
                break;
            }
            let step = chain.steps[s];
            let stats = [0, 1].map(|half| match step {
                Step::Resnet { .. } => Some(
                    gathered[half]
                        .as_ref()
                        .expect("the plan gathers a GroupNorm's statistics before using them"),
                ),
                _ => None,
            });
            x = self.run_step(step, x, stats, ws);
            if let Step::Upsample { .. } = step {
                rect = rect.scaled(2);
            }
        }
        match point {
            Point::Input(_) | Point::Image => (x, rect),
            Point::Middle(s) => {
                let resnet = self.resnet(chain.steps[s]);
                let stats = known[s][0]
                    .as_ref()
                    .expect("norm1 is gathered before norm2");
                let (skip, h1) = resnet.first_half(x, Some(stats), ws);
                ws.pool.give(skip.into_buffer());
                (h1, rect)
            }
        }
    }

    /// Decodes one tile (`owned`, latent pixels) from the checkpoint into its part of
    /// `image` (NCHW, the whole image).
    fn image_tile(
        &self,
        root: &Checkpoint,
        owned: Rect,
        (h, w): (usize, usize),
        known: &Known,
        image: &mut [f32],
        ws: &mut Workspace,
    ) {
        let chain = &self.chain;
        let out = chain.steps.len() - 1;
        let (x, rect) = self.run_tile(root, Point::Image, owned, (h, w), known, ws);
        let channels = self.config.out_channels;
        let (th, tw) = (rect.height(), rect.width());
        let mut planes = ws.pool.take(channels * th * tw);
        planes.resize(channels * th * tw, 0.0);
        let stats = known[out][0]
            .as_ref()
            .expect("conv_norm_out is gathered first");
        self.run_out(x, Some(stats), &mut planes, ws);
        let scale = chain.scale[out];
        let (ih, iw) = (h * scale, w * scale);
        let owned = owned.scaled(scale);
        let from = owned.within(&rect);
        for ch in 0..channels {
            let plane = &planes[ch * th * tw..][..th * tw];
            let target = &mut image[ch * ih * iw..][..ih * iw];
            for (y, ty) in (owned.y0..owned.y1).zip(from.y0..) {
                target[y * iw + owned.x0..][..owned.width()]
                    .copy_from_slice(&plane[ty * tw + from.x0..][..owned.width()]);
            }
        }
        ws.pool.give(planes);
    }
}

/// Adds a tile's statistics to those gathered so far.
fn merge(total: &mut Option<GroupStats>, stats: GroupStats) {
    match total {
        Some(total) => total.merge(&stats),
        None => *total = Some(stats),
    }
}
