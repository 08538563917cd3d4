//! `render --hires x4`'s arguments, and what they become in the library's
//! [`HiresSource`].

use clap::{Args, ValueEnum};

use super::values::TilingArg;
use crate::model::decoders::Tiling as DecodeTiling;
use crate::model::tiled::NoiseStop;
use crate::model::x4::HiresOptions;
use crate::usecase::HiresSource;

/// Which high-resolution pipeline a walk runs through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HiresArg {
    /// The SD x4 upscaler: keyframes upscaled once, frames decoded at 4x by its VAE.
    X4,
}

/// A walk in the x4 upscaler's latent space, frames 4x the source size.
#[derive(Args, Debug, Clone)]
pub struct HiresArgs {
    /// Upscale each keyframe once with the SD x4 upscaler and walk between the upscaled
    /// latents: every frame is decoded at 4x --source by the upscaler's VAE, by tiles
    /// within --hires-decode-gib (minutes per 4K frame on a CPU).
    #[arg(long, value_enum)]
    pub hires: Option<HiresArg>,
    /// The x4 upscaler: a diffusers folder, or its Hugging Face id in the local cache.
    #[arg(long, value_name = "DIR|ID", default_value = HiresSource::DEFAULT_MODEL, requires = "hires")]
    pub hires_model: String,
    /// The x4 sampler's steps per keyframe.
    #[arg(long, default_value_t = HiresOptions::default().steps, requires = "hires")]
    pub hires_steps: usize,
    /// The x4 sampler's guidance scale (1 or less: off).
    #[arg(long, default_value_t = HiresOptions::default().guidance, requires = "hires", allow_negative_numbers = true)]
    pub hires_guidance: f64,
    /// Noise added to each keyframe's picture before upscaling, 0 to the model's
    /// max_noise_level (350): more lets the upscaler invent more detail.
    #[arg(long, default_value_t = HiresOptions::default().noise_level, requires = "hires")]
    pub hires_noise_level: usize,
    /// How the x4 latent is cut into tiles while denoising.
    #[arg(long, value_enum, default_value_t = TilingArg::Blended, requires = "hires")]
    pub hires_tiling: TilingArg,
    /// Tile side for --hires-tiling blended, in source pixels.
    #[arg(long, default_value_t = 128, value_name = "PIXELS", requires = "hires")]
    pub hires_tile: usize,
    /// Least overlap of neighbouring blended tiles, in source pixels.
    #[arg(long, default_value_t = 32, value_name = "PIXELS", requires = "hires")]
    pub hires_tile_overlap: usize,
    /// A tile whose noise estimate falls below this stops refining (after half the steps).
    #[arg(long, value_name = "SIGMA", requires = "hires")]
    pub hires_noise_threshold: Option<f64>,
    /// Memory a frame's x4 VAE decode may work in, in GiB (default: half the machine's).
    #[arg(long, value_name = "GIB", requires = "hires")]
    pub hires_decode_gib: Option<f64>,
}

impl HiresArgs {
    /// The x4 pipeline these arguments ask for, `None` without `--hires`.
    pub fn source(&self) -> anyhow::Result<Option<HiresSource>> {
        let Some(HiresArg::X4) = self.hires else {
            return Ok(None);
        };
        let decode = match self.hires_decode_gib {
            None => DecodeTiling::default(),
            Some(gib) if gib.is_finite() && gib > 0.0 => DecodeTiling::Auto {
                budget_bytes: (gib * (1u64 << 30) as f64) as u64,
            },
            Some(gib) => anyhow::bail!("--hires-decode-gib {gib}: give a size above 0"),
        };
        Ok(Some(HiresSource {
            model: self.hires_model.clone(),
            options: HiresOptions {
                steps: self.hires_steps,
                guidance: self.hires_guidance,
                noise_level: self.hires_noise_level,
                tiling: self
                    .hires_tiling
                    .tiling(self.hires_tile, self.hires_tile_overlap),
                noise_stop: self
                    .hires_noise_threshold
                    .map(|threshold| NoiseStop::after_half(threshold, self.hires_steps)),
                decode,
            },
        }))
    }
}
