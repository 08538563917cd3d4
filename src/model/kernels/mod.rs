pub(crate) mod conv;
pub mod vae;

pub use vae::{attention, conv1x1, conv3x3, group_norm};
