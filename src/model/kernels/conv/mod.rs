//! 3x3 convolutions (stride 1, padding 1) on the CPU, fast enough for per-frame decoding.
//!
//! candle's generic conv2d reaches ~13 GFLOP/s on our 2-core target; the TAESD decoder needs
//! ~320 GFLOP (direct-convolution count) for a 576x1024 image. So the decoder's convolutions
//! run here instead:
//!
//! * **Winograd F(4x4, 3x3)**: each 4x4 output tile is `A^T [(G g G^T) . (B^T d B)] A`, 36
//!   multiplies per input/output channel pair instead of 144. The channel mixing becomes 36
//!   small GEMMs (tiles x c_in times c_in x c_out) per chunk of tiles, run by an AVX2/FMA
//!   micro-kernel (a portable kernel otherwise). In f32 this stays ~1e-6 from a direct
//!   convolution relative to the values' size (measured against the diffusers fixtures).
//! * **NHWC activations** with channels padded to a multiple of 8 (one AVX register), so the
//!   tile transforms run 8 channels at a time.
//! * **Fused steps**: nearest-neighbour upsampling is folded into the input gather (the
//!   upsampled image is never stored); bias, ReLU, the residual add, and the final image
//!   mapping (to diffusers' [-1, 1] floats or to RGBA8) are done in the output transform.
//! * **Row bands in parallel**: one band per row of tiles (4 output rows), spread over the
//!   rayon pool; each thread keeps its transform buffers (a few hundred KiB, sized to stay
//!   in L2) between bands and calls.
//!
//! Files by concern: `pack` (weight transform and packing), `plan` (how a call splits its
//! work), `run` (the band driver), `winograd` (the tile transforms), `gemm` and `avx2` (the
//! micro-kernel), `sink` (what the output transform writes), `isa` (CPU feature detection).

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2;
mod direct;
mod gemm;
mod isa;
mod pack;
mod plan;
mod run;
mod sink;
#[cfg(test)]
mod tests;
mod winograd;

use self::pack::{compact_to_winograd, compact_weights, winograd_weights, Channels};
use self::plan::Plan;
use self::run::run;
use self::winograd::TILE;
use crate::model::kernels::layout::Act;

pub(crate) use self::direct::Padding;
pub(crate) use self::sink::Sink;

/// A 3x3 convolution (stride 1, padding 1) with its weights pre-transformed for Winograd.
#[derive(Debug, Clone)]
pub(crate) struct Conv3x3 {
    channels: Channels,
    /// `G g G^T` per point, packed for the micro-kernel: `[point][column block][cin_p][width]`
    /// where the column blocks are 16 output channels wide (the last one 8 when `cout_p` is
    /// an odd multiple of 8).
    u: Vec<f32>,
}

/// What the models need to know of a convolution's shape.
pub(crate) trait ConvShape {
    fn channels(&self) -> &Channels;

    /// Output channels (unpadded).
    fn out_channels(&self) -> usize {
        self.channels().cout
    }

    /// Input channels (unpadded).
    fn in_channels(&self) -> usize {
        self.channels().cin
    }

    /// Padded output channels: the channel stride of the activation this conv writes.
    fn out_channels_padded(&self) -> usize {
        self.channels().cout_p
    }
}

impl ConvShape for Conv3x3 {
    fn channels(&self) -> &Channels {
        &self.channels
    }
}

impl ConvShape for CompactConv3x3 {
    fn channels(&self) -> &Channels {
        &self.channels
    }
}

impl Conv3x3 {
    /// From PyTorch-layout weights `(cout, cin, 3, 3)` and an optional bias `(cout)`.
    pub fn new(weight: &[f32], bias: Option<&[f32]>, cout: usize, cin: usize) -> Self {
        assert_eq!(weight.len(), cout * cin * 9, "conv weight size");
        let channels = Channels::new(cin, cout, bias);
        let u = winograd_weights(weight, &channels);
        Self { channels, u }
    }

    /// Runs the convolution on `input` upsampled (nearest) by `upsample`, into `sink`.
    pub fn forward(&self, input: &Act, upsample: usize, sink: Sink<'_>) {
        let weights = self.channels.packed(&self.u);
        let tiles_h = (input.h * upsample).div_ceil(TILE);
        run(
            &weights,
            Plan::narrow(self.channels.cin_p, tiles_h),
            input,
            upsample,
            sink,
        );
    }
}

/// A 3x3 convolution (stride 1, padding 1) that keeps its weights as they are (9 floats
/// per channel pair) and makes the Winograd weights per call, in a buffer the caller
/// reuses.
///
/// For wide layers: the SD VAE's 3x3 weights take 190 MB, their Winograd form 4x that; the
/// transform costs ~1% of the convolution it feeds (512 -> 512 channels on a 64x64 image).
#[derive(Debug, Clone)]
pub(crate) struct CompactConv3x3 {
    channels: Channels,
    /// Weights as `[cin_p][ky * 3 + kx][cout_p]`, zero-padded, so the transform runs over
    /// consecutive output channels.
    weight: Vec<f32>,
}

impl CompactConv3x3 {
    /// From PyTorch-layout weights `(cout, cin, 3, 3)` and an optional bias `(cout)`.
    pub fn new(weight: &[f32], bias: Option<&[f32]>, cout: usize, cin: usize) -> Self {
        assert_eq!(weight.len(), cout * cin * 9, "conv weight size");
        let channels = Channels::new(cin, cout, bias);
        let weight = compact_weights(weight, &channels);
        Self { channels, weight }
    }

    /// Runs the convolution on `input` upsampled (nearest) by `upsample`, into `sink`;
    /// `u` holds the Winograd weights during the call (`36 * cin_p * cout_p` floats).
    pub fn forward(&self, input: &Act, upsample: usize, sink: Sink<'_>, u: &mut Vec<f32>) {
        compact_to_winograd(&self.weight, &self.channels, u);
        let weights = self.channels.packed(u);
        let tiles_h = (input.h * upsample).div_ceil(TILE);
        let tiles_w = (input.w * upsample).div_ceil(TILE);
        let plan = Plan::wide(self.channels.cin_p, tiles_h, tiles_w, input.n);
        run(&weights, plan, input, upsample, sink);
    }

    /// Runs the convolution at `stride` with `padding` as nine matrix products (no weight
    /// transform: for stride 2 and for images with few Winograd tiles) into `out`
    /// (`conv + bias`, padded channels zero); `gathered` is scratch the caller keeps.
    pub fn forward_direct(
        &self,
        input: &Act,
        stride: usize,
        padding: Padding,
        out: &mut Act,
        gathered: &mut Vec<f32>,
    ) {
        direct::conv_direct(
            &self.weight,
            &self.channels,
            input,
            (stride, padding),
            out,
            gathered,
        );
    }
}
