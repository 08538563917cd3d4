//! dreamwalk: a real-time latent-traversal viewer for Stable Diffusion.
//!
//! The data path, one module per stage (see ARCHITECTURE.md):
//! prompts -> [`model`] (endpoints) -> [`walk`] (latent path) -> decode -> [`pipeline`]
//! (in-betweens, ordered ring buffer) -> [`upscale`] -> display / [`record`].

pub mod app;
pub mod audio;
pub mod cli;
pub mod frame;
pub mod gpu;
pub mod model;
pub mod pipeline;
pub mod record;
pub mod upscale;
pub mod usecase;
pub mod walk;
