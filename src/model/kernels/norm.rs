//! GroupNorm over NHWC activations, with the SiLU that follows it in the VAE fused in; and
//! its statistics as a value of their own ([`GroupStats`]), so a tiled decode can gather
//! them tile by tile over the whole image and normalise every tile with the same ones.

use rayon::prelude::*;

use super::exp::silu_in_place;
use super::layout::{padded, Act, Rect};

/// Pixels per rayon task in the per-pixel passes (GroupNorm): large enough that a task's
/// overhead vanishes, small enough for many tasks per thread.
const PIXELS_PER_TASK: usize = 2048;

/// GroupNorm over NHWC activations, optionally followed by SiLU (`x * sigmoid(x)`).
///
/// Statistics are accumulated in f64 around a per-channel shift (the first pixel's value),
/// so the variance does not lose digits to a large mean; the normalised value is
/// `((x - mean_hi) - mean_lo) * (gamma / sqrt(var + eps)) + beta`, the mean split in two
/// f32s so that a mean of 300 costs no more than the rounding of `x` itself.
#[derive(Debug, Clone)]
pub(crate) struct GroupNorm {
    pub(super) channels: usize,
    groups: usize,
    eps: f64,
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

/// The statistics one GroupNorm needs of its input, per group: the count of values, their
/// mean and the sum of squared deviations from it (f64). Statistics of disjoint parts of a
/// map [`merge`](Self::merge) into those of the whole (Chan et al.'s pairwise update), so
/// tiles that each see a part of the image give the whole image's statistics.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GroupStats {
    count: Vec<f64>,
    mean: Vec<f64>,
    m2: Vec<f64>,
}

impl GroupStats {
    /// Adds the statistics of another, disjoint part of the same map.
    pub fn merge(&mut self, other: &GroupStats) {
        assert_eq!(self.count.len(), other.count.len(), "GroupStats groups");
        for g in 0..self.count.len() {
            let (na, nb) = (self.count[g], other.count[g]);
            let n = na + nb;
            if nb == 0.0 {
                continue;
            }
            let delta = other.mean[g] - self.mean[g];
            self.mean[g] += delta * nb / n;
            self.m2[g] += other.m2[g] + delta * delta * na * nb / n;
            self.count[g] = n;
        }
    }
}

/// Per-channel `(mean, scale, beta)` of one image, padded channels all zero (so they stay 0).
struct Affine {
    mean: Vec<f32>,
    /// `mean - mean as f32`, the part of the mean an f32 cannot hold.
    mean_lo: Vec<f32>,
    scale: Vec<f32>,
    beta: Vec<f32>,
}

impl GroupNorm {
    /// `gamma` and `beta` have one value per channel; `groups` must divide the channels.
    pub fn new(gamma: &[f32], beta: &[f32], groups: usize, eps: f64) -> Self {
        assert_eq!(gamma.len(), beta.len(), "GroupNorm weight and bias sizes");
        assert!(
            groups > 0 && gamma.len().is_multiple_of(groups),
            "GroupNorm groups"
        );
        Self {
            channels: gamma.len(),
            groups,
            eps,
            gamma: gamma.to_vec(),
            beta: beta.to_vec(),
        }
    }

    /// Normalises `x` in place, each image with its own statistics.
    pub fn forward_in_place(&self, x: &mut Act, silu: bool) {
        self.forward_in_place_with(x, None, silu);
    }

    /// Normalises `x` in place: with `stats` (those of the whole map `x` is a tile of; `x`
    /// one image) when given, else each image with its own.
    pub fn forward_in_place_with(&self, x: &mut Act, stats: Option<&GroupStats>, silu: bool) {
        assert_eq!(x.c, padded(self.channels), "GroupNorm channels");
        let image_len = x.h * x.w * x.c;
        let c = x.c;
        assert!(
            stats.is_none() || x.n == 1,
            "given statistics are one image's"
        );
        for image in x.data.chunks_mut(image_len) {
            let affine = match stats {
                Some(stats) => self.affine(stats, c),
                None => self.affine(&self.image_stats(image, c), c),
            };
            image
                .par_chunks_mut(PIXELS_PER_TASK * c)
                .for_each(|block| apply(block, &affine, silu));
        }
    }

    /// Writes the normalised `x` into `out` (same shape), `x` unchanged.
    pub fn forward_into(&self, x: &Act, out: &mut Act, silu: bool) {
        self.forward_into_with(x, out, None, silu);
    }

    /// [`Self::forward_into`] with the statistics given, as in
    /// [`Self::forward_in_place_with`].
    pub fn forward_into_with(
        &self,
        x: &Act,
        out: &mut Act,
        stats: Option<&GroupStats>,
        silu: bool,
    ) {
        assert_eq!(x.c, padded(self.channels), "GroupNorm channels");
        assert_eq!((x.n, x.h, x.w, x.c), (out.n, out.h, out.w, out.c));
        assert!(
            stats.is_none() || x.n == 1,
            "given statistics are one image's"
        );
        let image_len = x.h * x.w * x.c;
        let c = x.c;
        for (image, out) in x.data.chunks(image_len).zip(out.data.chunks_mut(image_len)) {
            let affine = match stats {
                Some(stats) => self.affine(stats, c),
                None => self.affine(&self.image_stats(image, c), c),
            };
            out.par_chunks_mut(PIXELS_PER_TASK * c)
                .zip(image.par_chunks(PIXELS_PER_TASK * c))
                .for_each(|(out, block)| {
                    out.copy_from_slice(block);
                    apply(out, &affine, silu)
                });
        }
    }

    /// Normalises the pixels of `src` (rows of `c` floats, the padded channel stride) into
    /// `dst` with `stats`, no SiLU: a chunk of the attention's tokens.
    pub fn normalise_rows(&self, src: &[f32], dst: &mut [f32], c: usize, stats: &GroupStats) {
        assert_eq!(c, padded(self.channels), "GroupNorm channels");
        let affine = self.affine(stats, c);
        dst.par_chunks_mut(PIXELS_PER_TASK * c)
            .zip(src.par_chunks(PIXELS_PER_TASK * c))
            .for_each(|(out, block)| {
                out.copy_from_slice(block);
                apply(out, &affine, false)
            });
    }

    /// The statistics of one whole image (NHWC values, `c` = padded channel stride).
    pub fn image_stats(&self, image: &[f32], c: usize) -> GroupStats {
        let shift: Vec<f32> = image[..c].to_vec();
        let (s1, s2) = image
            .par_chunks(PIXELS_PER_TASK * c)
            .map(|block| shifted_sums(block, &shift))
            .reduce(|| (vec![0f64; c], vec![0f64; c]), add_sums);
        self.group_stats(&s1, &s2, &shift, image.len() / c)
    }

    /// The statistics of the pixels of `rect` (in `x`'s coordinates) of `x`, one image.
    pub fn rect_stats(&self, x: &Act, rect: Rect) -> GroupStats {
        assert_eq!(x.n, 1, "statistics of one image");
        assert_eq!(x.c, padded(self.channels), "GroupNorm channels");
        assert!(
            rect.y1 <= x.h && rect.x1 <= x.w && !rect.is_empty(),
            "rect inside"
        );
        let c = x.c;
        let row = |y: usize| &x.data[(y * x.w + rect.x0) * c..][..rect.width() * c];
        let shift: Vec<f32> = row(rect.y0)[..c].to_vec();
        let (s1, s2) = (rect.y0..rect.y1)
            .into_par_iter()
            .map(|y| shifted_sums(row(y), &shift))
            .reduce(|| (vec![0f64; c], vec![0f64; c]), add_sums);
        self.group_stats(&s1, &s2, &shift, rect.area())
    }

    /// Per-group count, mean and squared deviations from per-channel sums of `x - shift`
    /// and `(x - shift)^2` over `pixels` pixels.
    fn group_stats(&self, s1: &[f64], s2: &[f64], shift: &[f32], pixels: usize) -> GroupStats {
        let per_group = self.channels / self.groups;
        let n = pixels as f64;
        let count = n * per_group as f64;
        let mut stats = GroupStats {
            count: vec![count; self.groups],
            mean: vec![0f64; self.groups],
            m2: vec![0f64; self.groups],
        };
        for g in 0..self.groups {
            let range = g * per_group..(g + 1) * per_group;
            let total: f64 = range
                .clone()
                .map(|ch| s1[ch] + n * f64::from(shift[ch]))
                .sum();
            let mean = total / count;
            // Sum of (x - mean)^2 from the sums around each channel's shift K:
            // (x - K - d)^2 summed, with d = mean - K.
            stats.m2[g] = range
                .map(|ch| {
                    let d = mean - f64::from(shift[ch]);
                    s2[ch] - 2.0 * d * s1[ch] + n * d * d
                })
                .sum();
            stats.mean[g] = mean;
        }
        stats
    }

    /// Mean and scale of every channel from its group's statistics (`c` = padded stride).
    fn affine(&self, stats: &GroupStats, c: usize) -> Affine {
        assert_eq!(
            stats.count.len(),
            self.groups,
            "GroupStats of another GroupNorm"
        );
        let per_group = self.channels / self.groups;
        let mut affine = Affine {
            mean: vec![0f32; c],
            mean_lo: vec![0f32; c],
            scale: vec![0f32; c],
            beta: vec![0f32; c],
        };
        for g in 0..self.groups {
            let mean = stats.mean[g];
            let var = (stats.m2[g] / stats.count[g]).max(0.0);
            let rstd = 1.0 / (var + self.eps).sqrt();
            for ch in g * per_group..(g + 1) * per_group {
                affine.mean[ch] = mean as f32;
                affine.mean_lo[ch] = (mean - f64::from(mean as f32)) as f32;
                affine.scale[ch] = (f64::from(self.gamma[ch]) * rstd) as f32;
                affine.beta[ch] = self.beta[ch];
            }
        }
        affine
    }
}

fn add_sums(
    (mut a1, mut a2): (Vec<f64>, Vec<f64>),
    (b1, b2): (Vec<f64>, Vec<f64>),
) -> (Vec<f64>, Vec<f64>) {
    a1.iter_mut().zip(&b1).for_each(|(a, b)| *a += b);
    a2.iter_mut().zip(&b2).for_each(|(a, b)| *a += b);
    (a1, a2)
}

/// Per-channel sums of `x - shift` and `(x - shift)^2` over the pixels of `block`: f32
/// partial sums over 64 pixels (vectorised along the channels), then f64.
fn shifted_sums(block: &[f32], shift: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let c = shift.len();
    let (mut s1, mut s2) = (vec![0f64; c], vec![0f64; c]);
    let (mut p1, mut p2) = (vec![0f32; c], vec![0f32; c]);
    for run in block.chunks(64 * c) {
        p1.fill(0.0);
        p2.fill(0.0);
        for pixel in run.chunks_exact(c) {
            for (((a1, a2), &x), &k) in p1.iter_mut().zip(&mut p2).zip(pixel).zip(shift) {
                let d = x - k;
                *a1 += d;
                *a2 += d * d;
            }
        }
        for (s, p) in s1.iter_mut().zip(&p1) {
            *s += f64::from(*p);
        }
        for (s, p) in s2.iter_mut().zip(&p2) {
            *s += f64::from(*p);
        }
    }
    (s1, s2)
}

/// `block[i] = (block[i] - mean) * scale + beta` per channel, then SiLU if asked.
fn apply(block: &mut [f32], affine: &Affine, silu: bool) {
    let c = affine.mean.len();
    for pixel in block.chunks_exact_mut(c) {
        for ((((x, &m), &lo), &s), &b) in pixel
            .iter_mut()
            .zip(&affine.mean)
            .zip(&affine.mean_lo)
            .zip(&affine.scale)
            .zip(&affine.beta)
        {
            *x = ((*x - m) - lo) * s + b;
        }
    }
    if silu {
        silu_in_place(block);
    }
}
