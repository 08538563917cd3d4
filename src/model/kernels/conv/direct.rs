//! 3x3 convolutions as nine matrix products, one per kernel tap, on `gemm`: for stride 2,
//! and for small images, where a call has too few Winograd tiles to pay for transforming
//! the weights (the UNet's 16x16 and 8x8 levels carry 1280-channel layers whose Winograd
//! weights are 236 MB per layer, written anew each call).
//!
//! Tap `(ky, kx)` gathers, for every output pixel, the input pixel it reads through that
//! tap (zeros outside the image): a `pixels x cin_p` matrix, copied a pixel's channels at
//! a time. Its product with the tap's `cin_p x cout_p` slice of the compact weights is
//! added to the output, which starts as the bias.

use super::pack::Channels;
use crate::model::kernels::layout::Act;
use crate::model::kernels::linear::{matmul, Mat};

/// Zero padding of a 3x3 convolution: rows / columns added before and after the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Padding {
    pub before: usize,
    pub after: usize,
}

impl Padding {
    /// The same padding on every side.
    pub const fn same(p: usize) -> Self {
        Self {
            before: p,
            after: p,
        }
    }

    /// Output length of a side of `len` input values at `stride`.
    pub fn out_len(self, len: usize, stride: usize) -> usize {
        (len + self.before + self.after).saturating_sub(3) / stride + 1
    }
}

/// `out = conv(input) + bias` with `stride` and `padding`, the weights in the compact
/// layout `[cin_p][ky * 3 + kx][cout_p]`; `gathered` is scratch the caller keeps.
pub(super) fn conv_direct(
    compact: &[f32],
    channels: &Channels,
    input: &Act,
    (stride, padding): (usize, Padding),
    out: &mut Act,
    gathered: &mut Vec<f32>,
) {
    let (cin_p, cout_p) = (channels.cin_p, channels.cout_p);
    assert_eq!(input.c, cin_p, "conv input channels");
    let (oh, ow) = (
        padding.out_len(input.h, stride),
        padding.out_len(input.w, stride),
    );
    assert_eq!(
        (out.n, out.h, out.w, out.c),
        (input.n, oh, ow, cout_p),
        "conv output size"
    );
    let pixels = input.n * oh * ow;
    for row in out.data.chunks_exact_mut(cout_p) {
        row.copy_from_slice(&channels.bias);
    }
    gathered.clear();
    gathered.resize(pixels * cin_p, 0.0);
    for ky in 0..3 {
        for kx in 0..3 {
            gather_tap(input, (ky, kx), (stride, padding), (oh, ow), gathered);
            let lhs = Mat {
                data: gathered,
                rs: cin_p,
                cs: 1,
            };
            // Rows ci of the tap's slice are 9 * cout_p apart in the compact layout.
            let rhs = Mat {
                data: &compact[(ky * 3 + kx) * cout_p..],
                rs: 9 * cout_p,
                cs: 1,
            };
            matmul(
                (pixels, cout_p, cin_p),
                &mut out.data,
                cout_p,
                true,
                lhs,
                rhs,
                true,
            );
        }
    }
}

/// For every output pixel, the input pixel tap `(ky, kx)` reads (zeros where that falls
/// in the padding), into `gathered` (`pixels x c`).
fn gather_tap(
    input: &Act,
    (ky, kx): (usize, usize),
    (stride, padding): (usize, Padding),
    (oh, ow): (usize, usize),
    gathered: &mut [f32],
) {
    let c = input.c;
    let source = |o: usize, k: usize, len: usize| {
        (o * stride + k)
            .checked_sub(padding.before)
            .filter(|&i| i < len)
    };
    for b in 0..input.n {
        let image = &input.data[b * input.h * input.w * c..][..input.h * input.w * c];
        for oy in 0..oh {
            let rows = &mut gathered[((b * oh + oy) * ow) * c..][..ow * c];
            let Some(iy) = source(oy, ky, input.h) else {
                rows.fill(0.0);
                continue;
            };
            for (ox, pixel) in rows.chunks_exact_mut(c).enumerate() {
                match source(ox, kx, input.w) {
                    Some(ix) => pixel.copy_from_slice(&image[(iy * input.w + ix) * c..][..c]),
                    None => pixel.fill(0.0),
                }
            }
        }
    }
}
