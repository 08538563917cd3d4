//! The VAE's resnet block (no time embedding), in two halves: a tiled decode stops between
//! them to gather `norm2`'s statistics over the whole image, and runs either half with
//! statistics it was given instead of the tile's own.
//!
//! ```text
//! resnet(x) = shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))))))
//! ```

use candle_nn::VarBuilder;

use super::{conv1x1, conv3x3, group_norm, plain, Workspace};
use crate::model::kernels::{Act, CompactConv3x3, Conv1x1, ConvShape, GroupNorm, GroupStats, Sink};

/// One resnet of the VAE.
#[derive(Debug)]
pub(super) struct Resnet {
    pub(super) norm1: GroupNorm,
    pub(super) conv1: CompactConv3x3,
    pub(super) norm2: GroupNorm,
    pub(super) conv2: CompactConv3x3,
    /// The 1x1 convolution of the skip path, where the channel count changes.
    pub(super) shortcut: Option<Conv1x1>,
}

impl Resnet {
    pub(super) fn new(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        groups: usize,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            norm1: group_norm(vb.pp("norm1"), groups, cin)?,
            conv1: conv3x3(vb.pp("conv1"), cin, cout)?,
            norm2: group_norm(vb.pp("norm2"), groups, cout)?,
            conv2: conv3x3(vb.pp("conv2"), cout, cout)?,
            shortcut: match cin != cout {
                true => Some(conv1x1(vb.pp("conv_shortcut"), cin, cout)?),
                false => None,
            },
        })
    }

    /// The whole block, each GroupNorm with its input's own statistics.
    ///
    /// Peak: three activations of the output width (plus the input's extra width with a
    /// shortcut).
    pub(super) fn forward(&self, x: Act, ws: &mut Workspace) -> Act {
        let (base, h1) = self.first_half(x, None, ws);
        self.second_half(base, h1, None, ws)
    }

    /// `(skip, h1)`: the skip path (`x`, or `shortcut(x)`) and `h1 = conv1(silu(norm1(x)))`,
    /// `norm1` with `stats` when given (those of the whole map `x` is a tile of).
    pub(super) fn first_half(
        &self,
        x: Act,
        stats: Option<&GroupStats>,
        ws: &mut Workspace,
    ) -> (Act, Act) {
        let (n, h, w) = (x.n, x.h, x.w);
        let cp = self.conv1.out_channels_padded();
        let mut h1 = Act::reuse(ws.pool.take(n * h * w * cp), n, h, w, cp);
        match &self.shortcut {
            Some(shortcut) => {
                let mut skip = Act::reuse(ws.pool.take(n * h * w * cp), n, h, w, cp);
                shortcut.forward(&x, &mut skip);
                // x is dead after norm1: normalise it in place.
                let mut x = x;
                self.norm1.forward_in_place_with(&mut x, stats, true);
                self.conv1.forward(&x, 1, plain(&mut h1), &mut ws.winograd);
                ws.pool.give(x.into_buffer());
                (skip, h1)
            }
            None => {
                let mut normed = Act::reuse(ws.pool.take(x.data.len()), n, h, w, x.c);
                self.norm1.forward_into_with(&x, &mut normed, stats, true);
                self.conv1
                    .forward(&normed, 1, plain(&mut h1), &mut ws.winograd);
                ws.pool.give(normed.into_buffer());
                (x, h1)
            }
        }
    }

    /// `skip + conv2(silu(norm2(h1)))`, written into `skip`; `norm2` with `stats` when given.
    pub(super) fn second_half(
        &self,
        skip: Act,
        mut h1: Act,
        stats: Option<&GroupStats>,
        ws: &mut Workspace,
    ) -> Act {
        let mut out = skip;
        self.norm2.forward_in_place_with(&mut h1, stats, true);
        // The residual add is the output transform's: `out += conv2(h1) + bias`.
        let sink = Sink::AddTo { out: &mut out };
        self.conv2.forward(&h1, 1, sink, &mut ws.winograd);
        ws.pool.give(h1.into_buffer());
        out
    }

    /// Multiply-adds x 2 per pixel of the two 3x3 convolutions and the shortcut (the usual
    /// FLOP count).
    pub(super) fn flops_per_pixel(&self) -> f64 {
        let (cin, cout) = (self.conv1.in_channels(), self.conv1.out_channels());
        let shortcut = match &self.shortcut {
            Some(_) => 2.0 * (cin * cout) as f64,
            None => 0.0,
        };
        2.0 * 9.0 * (cin * cout + cout * cout) as f64 + shortcut
    }
}
