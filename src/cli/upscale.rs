//! `dreamwalk upscale`: its arguments, and what they become in the library's
//! [`UpscaleJob`].

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;

use super::args::ModelArgs;
use super::values::TilingArg;
use crate::model::tiled::NoiseStop;
use crate::usecase::UpscaleJob;

/// Make a picture 4x larger with the Stable Diffusion x4 upscaler.
#[derive(Args, Debug, Clone)]
pub struct UpscaleArgs {
    /// The picture (PNG, JPEG or WebP, 8 to 4096 pixels on a side; greyscale is made RGB,
    /// transparency is refused).
    #[arg(long, value_name = "IN.png")]
    pub image: PathBuf,
    /// What the picture shows: it guides the details the upscaler adds.
    #[arg(long, default_value = "")]
    pub prompt: String,
    /// The negative prompt.
    #[arg(long, default_value = "")]
    pub negative: String,
    /// The upscaled PNG (4x the picture's size).
    #[arg(long, value_name = "OUT.png")]
    pub out: PathBuf,
    /// Sampler steps.
    #[arg(long, default_value_t = 25)]
    pub steps: usize,
    /// Classifier-free guidance scale (1 or less: off).
    #[arg(long, default_value_t = 9.0, allow_negative_numbers = true)]
    pub guidance: f64,
    /// Noise added to the picture before upscaling, 0 to the model's max_noise_level
    /// (350): more lets the model invent more detail.
    #[arg(long, default_value_t = 20)]
    pub noise_level: usize,
    /// Seed of the initial latents and of the picture's noise.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// How the latent is cut into tiles for denoising.
    #[arg(long, value_enum, default_value_t = TilingArg::Blended)]
    pub tiling: TilingArg,
    /// Tile side for --tiling blended, in picture pixels (the latent is the picture's
    /// size): a picture no larger is one tile.
    #[arg(long, default_value_t = 128, value_name = "PIXELS")]
    pub tile: usize,
    /// Least overlap of neighbouring blended tiles, in picture pixels (at most half a tile).
    #[arg(long, default_value_t = 32, value_name = "PIXELS")]
    pub tile_overlap: usize,
    /// A tile whose predicted clean latents' noise estimate (Immerkaer) falls below this
    /// stops refining, saving its UNet calls (default: every tile runs every step).
    #[arg(long, value_name = "SIGMA")]
    pub noise_threshold: Option<f64>,
    /// Steps every tile runs before --noise-threshold may stop it (default: half of
    /// --steps, rounded up: the first predictions are smooth everywhere).
    #[arg(long, value_name = "N", requires = "noise_threshold")]
    pub noise_min_steps: Option<usize>,
    /// Also write a map of the tiles (PNG of the output's size): red the share of the
    /// steps each ran, green its last noise estimate, blue the borders; the figures are in
    /// its comment.
    #[arg(long, value_name = "FILE.png")]
    pub noise_map: Option<PathBuf>,
    /// Replace existing output files.
    #[arg(long)]
    pub overwrite: bool,
}

impl UpscaleArgs {
    /// The job these arguments describe with the model `model` names. The x4 upscaler has
    /// no built-in demo (random weights would only turn a picture into noise): `--model`
    /// is required.
    pub fn job(&self, model: &ModelArgs) -> anyhow::Result<UpscaleJob> {
        let Some(name) = &model.model else {
            bail!(
                "upscale needs the x4 upscaler's weights: give --model DIR (a diffusers folder \
                 of stabilityai/stable-diffusion-x4-upscaler) or its Hugging Face id once \
                 downloaded (huggingface-cli download stabilityai/stable-diffusion-x4-upscaler)"
            );
        };
        let unused = [
            ("--taesd", model.taesd.is_some()),
            ("--config", model.config.is_some()),
            ("--prediction", model.prediction.is_some()),
            ("--lora", !model.loras.is_empty()),
        ];
        if let Some((flag, _)) = unused.iter().find(|(_, given)| *given) {
            bail!("{flag} is not used by upscale (it applies to walk models)");
        }
        let tiling = self.tiling.tiling(self.tile, self.tile_overlap);
        Ok(UpscaleJob {
            model: name.clone(),
            image: self.image.clone(),
            prompt: self.prompt.clone(),
            negative: self.negative.clone(),
            steps: self.steps,
            guidance: self.guidance,
            noise_level: self.noise_level,
            seed: self.seed,
            tiling,
            noise_stop: self.noise_threshold.map(|threshold| NoiseStop {
                threshold,
                min_steps: self
                    .noise_min_steps
                    .unwrap_or(NoiseStop::after_half(threshold, self.steps).min_steps),
            }),
            out: self.out.clone(),
            noise_map: self.noise_map.clone(),
            overwrite: self.overwrite,
        })
    }
}
