//! Tiled denoising for any UNet (the x4 upscaler's and text-to-image's): the latent is cut
//! into overlapping tiles ([`layout`]), each step the UNet predicts each tile on its own and
//! the predictions are blended with smooth weights ([`denoise`]: MultiDiffusion), so the
//! UNet never sees more than a tile and memory stays bounded whatever the image size. A
//! tile whose predicted clean latents look clean ([`noise`]: Immerkaer's estimator) stops
//! refining and saves its UNet calls; [`map`] draws what each tile did, and [`seams`]
//! measures how visible the lines between tiles are.

pub mod denoise;
pub mod layout;
pub mod map;
pub mod noise;
pub mod seams;

pub use denoise::{crop, denoise_tiled, NoiseStop, TileReport, TiledOutcome, TiledStep};
pub use layout::{TileLayout, TileRect, Tiling};
pub use map::{describe_tiles, noise_map};
pub use noise::{immerkaer_sigma, noise_estimate};
pub use seams::seam_ratio;
