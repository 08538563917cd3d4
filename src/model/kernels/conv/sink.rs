//! Where a convolution's output goes, and how that output is cut into the row bands the
//! threads write.

use super::winograd::TILE;
use crate::model::kernels::layout::Act;

/// Where a convolution's output goes, and what is fused into writing it.
pub(crate) enum Sink<'a> {
    /// An activation of the output size: `relu?(conv + bias (+ skip))`.
    Act {
        out: &'a mut Act,
        skip: Option<&'a Act>,
        relu: bool,
    },
    /// An activation of the output size that the result is added to, in place:
    /// `out += conv + bias` (a residual connection without a second buffer).
    AddTo { out: &'a mut Act },
    /// The decoded image as diffusers returns it, NCHW: `(conv + bias) * 2 - 1`.
    Image { out: &'a mut [f32] },
    /// NCHW planes of the unpadded output channels: `conv + bias`, nothing else.
    Planes { out: &'a mut [f32] },
    /// One RGBA8 image per batch row: `round(clamp(conv + bias, 0, 1) * 255)`, alpha 255.
    Rgba { out: &'a mut [Vec<u8>] },
}

/// The part of a sink that one row of tiles writes.
pub(super) enum BandOut<'a> {
    Act(&'a mut [f32]),
    Planes(Vec<&'a mut [f32]>),
    Rgba(&'a mut [u8]),
}

/// Which kind of [`Sink`] a band writes, for the epilogue.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum OutKind {
    Act,
    AddTo,
    Image,
    Planes,
    Rgba,
}

/// Cuts one image's rows (`row_len` values per pixel row, `out_h` rows) at the bands'
/// tile-row boundaries.
pub(super) fn split_rows<'a, T>(
    mut rows: &'a mut [T],
    bands: &[(usize, usize)],
    row_len: usize,
    out_h: usize,
) -> Vec<&'a mut [T]> {
    bands
        .iter()
        .map(|&(ty0, count)| {
            let pixel_rows = ((ty0 + count) * TILE).min(out_h) - ty0 * TILE;
            let (band, rest) = std::mem::take(&mut rows).split_at_mut(pixel_rows * row_len);
            rows = rest;
            band
        })
        .collect()
}

/// The row bands of an NHWC output activation, per image.
pub(super) fn act_bands<'a>(
    out: &'a mut Act,
    (n, out_h, out_w, cout_p): (usize, usize, usize, usize),
    rows: &[(usize, usize)],
) -> Vec<BandOut<'a>> {
    assert_eq!(
        (out.n, out.h, out.w, out.c),
        (n, out_h, out_w, cout_p),
        "conv output size"
    );
    out.data
        .chunks_mut(out_h * out_w * cout_p)
        .flat_map(|image| split_rows(image, rows, out_w * cout_p, out_h))
        .map(BandOut::Act)
        .collect()
}

/// Splits NCHW images (`n` images of `cout` planes of `out_h x out_w`) into the bands' row
/// ranges.
pub(super) fn planes<'a>(
    out: &'a mut [f32],
    (n, cout, out_h, out_w): (usize, usize, usize, usize),
    rows: &[(usize, usize)],
) -> Vec<BandOut<'a>> {
    let plane_px = out_h * out_w;
    assert_eq!(out.len(), n * cout * plane_px, "image size");
    let mut bands = Vec::new();
    for image in out.chunks_mut(cout * plane_px) {
        let mut per_band: Vec<Vec<&mut [f32]>> =
            (0..rows.len()).map(|_| Vec::with_capacity(cout)).collect();
        for plane in image.chunks_mut(plane_px) {
            for (part, band) in split_rows(plane, rows, out_w, out_h)
                .into_iter()
                .zip(&mut per_band)
            {
                band.push(part);
            }
        }
        bands.extend(per_band.into_iter().map(BandOut::Planes));
    }
    bands
}
