pub mod clip;
pub mod tokenizer;

pub use clip::{ClipActivation, ClipTextConfig, ClipTextEncoder, ClipTextOutput};
pub use tokenizer::{ClipTokenizer, PadToken, MAX_TOKENS};
