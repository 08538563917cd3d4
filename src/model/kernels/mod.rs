//! The CPU kernels the decoders run on, outside candle: NHWC activations, Winograd 3x3
//! convolutions, GroupNorm + SiLU, 1x1 convolutions on `gemm`, and the VAE's attention in
//! blocks of rows. Decoding is the per-frame cost of a walk, and candle's generic
//! convolution is far from fast enough for it (numbers in the `conv` module).
//!
//! The public functions ([`group_norm`], [`conv3x3`], [`conv1x1`], [`attention`]) run the
//! same kernels on NCHW tensors, so tests can check them against diffusers.

mod attention;
mod conv;
mod exp;
mod layout;
mod linear;
mod nchw;
mod norm;

pub(crate) use attention::Attention;
pub(crate) use conv::{CompactConv3x3, Conv3x3, ConvShape, Sink};
pub(crate) use layout::{padded, Act, Pool};
pub(crate) use linear::Conv1x1;
pub use nchw::{attention, conv1x1, conv3x3, group_norm};
pub(crate) use norm::GroupNorm;
