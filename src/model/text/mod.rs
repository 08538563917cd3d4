//! The text side: CLIP's BPE tokenizer, the CLIP text encoder that turns a prompt into
//! the embedding the UNet's cross-attention reads, and prompt mixes (`mix`: a weighted
//! blend of several prompts' embeddings).

pub mod clip;
pub mod mix;
pub mod tokenizer;

pub use clip::{ClipActivation, ClipTextConfig, ClipTextEncoder, ClipTextOutput};
pub use mix::{MixError, MixPart, PromptMix};
pub use tokenizer::{ClipTokenizer, PadToken, MAX_TOKENS};
