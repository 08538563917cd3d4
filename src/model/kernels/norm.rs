//! GroupNorm over NHWC activations, with the SiLU that follows it in the VAE fused in.

use rayon::prelude::*;

use super::exp::silu_in_place;
use super::layout::{padded, Act};

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

    /// Normalises `x` in place.
    pub fn forward_in_place(&self, x: &mut Act, silu: bool) {
        assert_eq!(x.c, padded(self.channels), "GroupNorm channels");
        let image_len = x.h * x.w * x.c;
        let c = x.c;
        for image in x.data.chunks_mut(image_len) {
            let affine = self.affine(image, c);
            image
                .par_chunks_mut(PIXELS_PER_TASK * c)
                .for_each(|block| apply(block, &affine, silu));
        }
    }

    /// Writes the normalised `x` into `out` (same shape), `x` unchanged.
    pub fn forward_into(&self, x: &Act, out: &mut Act, silu: bool) {
        assert_eq!(x.c, padded(self.channels), "GroupNorm channels");
        assert_eq!((x.n, x.h, x.w, x.c), (out.n, out.h, out.w, out.c));
        let image_len = x.h * x.w * x.c;
        let c = x.c;
        for (image, out) in x.data.chunks(image_len).zip(out.data.chunks_mut(image_len)) {
            let affine = self.affine(image, c);
            out.par_chunks_mut(PIXELS_PER_TASK * c)
                .zip(image.par_chunks(PIXELS_PER_TASK * c))
                .for_each(|(out, block)| {
                    out.copy_from_slice(block);
                    apply(out, &affine, silu)
                });
        }
    }

    /// Mean and scale of every channel of one image (`c` = padded channel stride).
    fn affine(&self, image: &[f32], c: usize) -> Affine {
        let pixels = image.len() / c;
        let shift: Vec<f32> = image[..c].to_vec();
        let (s1, s2) = image
            .par_chunks(PIXELS_PER_TASK * c)
            .map(|block| shifted_sums(block, &shift))
            .reduce(
                || (vec![0f64; c], vec![0f64; c]),
                |(mut a1, mut a2), (b1, b2)| {
                    a1.iter_mut().zip(&b1).for_each(|(a, b)| *a += b);
                    a2.iter_mut().zip(&b2).for_each(|(a, b)| *a += b);
                    (a1, a2)
                },
            );
        let per_group = self.channels / self.groups;
        let n = pixels as f64;
        let mut affine = Affine {
            mean: vec![0f32; c],
            mean_lo: vec![0f32; c],
            scale: vec![0f32; c],
            beta: vec![0f32; c],
        };
        for g in 0..self.groups {
            let range = g * per_group..(g + 1) * per_group;
            let count = n * per_group as f64;
            let total: f64 = range
                .clone()
                .map(|ch| s1[ch] + n * f64::from(shift[ch]))
                .sum();
            let mean = total / count;
            // Sum of (x - mean)^2 from the sums around each channel's shift K:
            // (x - K - d)^2 summed, with d = mean - K.
            let m2: f64 = range
                .clone()
                .map(|ch| {
                    let d = mean - f64::from(shift[ch]);
                    s2[ch] - 2.0 * d * s1[ch] + n * d * d
                })
                .sum();
            let var = (m2 / count).max(0.0);
            let rstd = 1.0 / (var + self.eps).sqrt();
            for ch in range {
                affine.mean[ch] = mean as f32;
                affine.mean_lo[ch] = (mean - f64::from(mean as f32)) as f32;
                affine.scale[ch] = (f64::from(self.gamma[ch]) * rstd) as f32;
                affine.beta[ch] = self.beta[ch];
            }
        }
        affine
    }
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
