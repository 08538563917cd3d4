//! The CPU kernels the decoders and the UNet run on, outside candle: NHWC activations,
//! Winograd 3x3 convolutions (and nine-product ones for stride 2 and small images),
//! GroupNorm + SiLU (its statistics also gathered tile by tile, for tiled decodes), 1x1
//! convolutions on `gemm`, the VAE's attention in blocks of rows (or in chunks with an
//! online softmax, for large images), and multi-head attention with an online softmax
//! (`flash`). Decoding is the per-frame cost of a walk, and candle's generic convolution is
//! far from fast enough for it (numbers in the `conv` module).
//!
//! The public functions ([`group_norm`], [`conv3x3`], [`conv1x1`], [`attention`],
//! [`attention_chunked`], [`attention_heads`]) run the same kernels on candle tensors, so
//! tests can check them against diffusers and against plain candle arithmetic.

mod attention;
mod conv;
mod dense;
mod exp;
mod flash;
mod layout;
mod linear;
mod nchw;
mod norm;

pub(crate) use attention::Attention;
pub(crate) use conv::{CompactConv3x3, Conv3x3, ConvShape, Padding, Sink};
pub(crate) use dense::{gelu_in_place, quick_gelu_in_place, Dense};
pub(crate) use flash::{multi_head_attention, AttentionShape};
pub(crate) use layout::{padded, Act, Pool, Rect};
pub(crate) use linear::Conv1x1;
pub use nchw::{
    attention, attention_chunked, attention_heads, conv1x1, conv3x3, conv3x3_strided, group_norm,
};
pub(crate) use norm::{GroupNorm, GroupStats};
