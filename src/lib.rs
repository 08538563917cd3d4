//! dreamwalk: a real-time latent-traversal viewer for Stable Diffusion.
//!
//! The data path, one module per stage (see ARCHITECTURE.md):
//! prompts -> [`model`] (endpoints) -> [`walk`] (latent path) -> decode -> [`pipeline`]
//! (in-betweens, ordered ring buffer) -> [`upscale`] / [`gpu`] -> display ([`app`]) / [`record`].

pub mod frame;
pub mod gpu;
pub mod model;
