//! The text side: CLIP's BPE tokenizer and the CLIP text encoder that turns a prompt into
//! the embedding the UNet's cross-attention reads.

pub mod clip;
pub mod tokenizer;

pub use clip::{ClipActivation, ClipTextConfig, ClipTextEncoder, ClipTextOutput};
pub use tokenizer::{ClipTokenizer, PadToken, MAX_TOKENS};
