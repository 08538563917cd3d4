//! `upscale`, a picture made 4x larger by the Stable Diffusion x4 upscaler, optionally over
//! blended tiles, with an optional map of what each tile did. Everything a person gives is
//! checked before the weights load: the picture (format, size, channels), the output names,
//! the sampler values and the noise level against the model's `max_noise_level`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::frame::RgbaImage;
use crate::model::tiled::{describe_tiles, noise_map, NoiseStop, TiledStep, Tiling};
use crate::model::x4::{
    read_low_res, read_max_noise_level, unit_tensor, LowResPicture, X4Noise, X4Request, X4Upscaler,
};
use crate::model::{ModelError, Result};
use crate::record::write_png;

/// One upscale.
#[derive(Clone, Debug, PartialEq)]
pub struct UpscaleJob {
    /// The x4 upscaler: a diffusers folder or a Hugging Face id in the local cache.
    pub model: String,
    /// The picture to upscale (PNG, JPEG or WebP).
    pub image: PathBuf,
    /// What the picture shows.
    pub prompt: String,
    /// The negative prompt.
    pub negative: String,
    /// Sampler steps.
    pub steps: usize,
    /// Classifier-free guidance scale.
    pub guidance: f64,
    /// Noise added to the picture, 0 to the model's `max_noise_level`.
    pub noise_level: usize,
    /// Seed of the initial latents and of the picture's noise.
    pub seed: u64,
    /// How the latent is cut into tiles.
    pub tiling: Tiling,
    /// When a tile stops refining (`None`: every tile runs every step).
    pub noise_stop: Option<NoiseStop>,
    /// The output PNG.
    pub out: PathBuf,
    /// Where to write the per-tile map of steps and noise (a PNG of the output's size).
    pub noise_map: Option<PathBuf>,
    /// Replace existing outputs.
    pub overwrite: bool,
}

/// What an upscale is about to do, for its first lines.
#[derive(Clone, Debug, PartialEq)]
pub struct UpscaleHeader {
    /// The model's name.
    pub model: String,
    /// The picture read.
    pub image: PathBuf,
    /// Its size, and the output's.
    pub input_size: (u32, u32),
    pub output_size: (u32, u32),
    /// The tiling asked for, and the tiles it makes.
    pub tiling: Tiling,
    pub tiles: usize,
    pub steps: usize,
    /// What was changed to make the picture RGB.
    pub conversions: Vec<String>,
}

impl std::fmt::Display for UpscaleHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for note in &self.conversions {
            writeln!(f, "{}: {note}", self.image.display())?;
        }
        write!(
            f,
            "{} | {} {}x{} -> {}x{} | {} steps | {} ({} tile{})",
            self.model,
            self.image.display(),
            self.input_size.0,
            self.input_size.1,
            self.output_size.0,
            self.output_size.1,
            self.steps,
            self.tiling,
            self.tiles,
            if self.tiles == 1 { "" } else { "s" }
        )
    }
}

/// How an upscale reports while it runs.
pub trait UpscaleProgress {
    /// Once the model is loaded, before the first step.
    fn started(&mut self, _header: &UpscaleHeader) {}
    /// After every sampler step.
    fn stepped(&mut self, _step: &TiledStep) {}
}

/// Reports nothing.
impl UpscaleProgress for () {}

/// What a finished upscale made.
#[derive(Clone, Debug, PartialEq)]
pub struct UpscaleSummary {
    pub out: PathBuf,
    pub size: (u32, u32),
    /// UNet tile calls made, and those a run without the noise stop makes.
    pub calls_run: usize,
    pub calls_total: usize,
    pub noise_map: Option<PathBuf>,
    pub elapsed: Duration,
}

impl UpscaleSummary {
    /// Tile calls the noise stop saved.
    pub fn calls_saved(&self) -> usize {
        self.calls_total - self.calls_run
    }
}

impl std::fmt::Display for UpscaleSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "wrote {} ({}x{}) in {:.1} s; UNet tile calls {} of {} ({} saved by the noise stop)",
            self.out.display(),
            self.size.0,
            self.size.1,
            self.elapsed.as_secs_f64(),
            self.calls_run,
            self.calls_total,
            self.calls_saved()
        )?;
        if let Some(map) = &self.noise_map {
            write!(f, "; tile map {}", map.display())?;
        }
        Ok(())
    }
}

/// Checks `job` without loading the weights (only `model_index.json` is read, for
/// `max_noise_level`) and reads its picture: every refusal a person can cause, before any
/// work. The errors name the file or the value.
pub fn check_upscale(job: &UpscaleJob) -> Result<LowResPicture> {
    check_output(&job.out, job.overwrite)?;
    if let Some(map) = &job.noise_map {
        check_output(map, job.overwrite)?;
        if map == &job.out {
            return Err(ModelError::Invalid(format!(
                "the noise map and the output are the same file {}",
                map.display()
            )));
        }
    }
    if let Some(stop) = &job.noise_stop {
        stop.validate()?;
    }
    let picture = read_low_res(&job.image)?;
    let max_noise_level = read_max_noise_level(&job.model)?;
    crate::model::x4::check_settings(
        job.steps,
        job.guidance,
        job.noise_level,
        max_noise_level,
        job.tiling,
    )?;
    Ok(picture)
}

/// An output PNG: a `.png` name in a folder that exists, not there already unless
/// `overwrite`.
fn check_output(path: &Path, overwrite: bool) -> Result<()> {
    let is_png = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if !is_png {
        return Err(ModelError::Invalid(format!(
            "{}: upscales are written as PNG: give a name ending in .png",
            path.display()
        )));
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent.filter(|p| !p.is_dir()) {
        return Err(ModelError::Missing {
            path: parent.to_path_buf(),
        });
    }
    if path.exists() && !overwrite {
        return Err(ModelError::Invalid(format!(
            "{} exists: pass --overwrite to replace it",
            path.display()
        )));
    }
    Ok(())
}

/// Upscales `job.image` with the model `job.model`: checks ([`check_upscale`]), loads the
/// model, runs, writes the PNG (and the map).
pub fn upscale(job: &UpscaleJob, progress: &mut dyn UpscaleProgress) -> Result<UpscaleSummary> {
    let picture = check_upscale(job)?;
    let upscaler = X4Upscaler::load(&job.model)?;
    upscale_with(&upscaler, job, &picture, progress)
}

/// [`upscale`] with a loaded model and a picture already read and checked.
pub fn upscale_with(
    upscaler: &X4Upscaler,
    job: &UpscaleJob,
    picture: &LowResPicture,
    progress: &mut dyn UpscaleProgress,
) -> Result<UpscaleSummary> {
    let started = Instant::now();
    let image = unit_tensor(&picture.image)?;
    let request = X4Request {
        image,
        prompt: job.prompt.clone(),
        negative: job.negative.clone(),
        steps: job.steps,
        guidance: job.guidance,
        noise_level: job.noise_level,
        noise: X4Noise::Seed(job.seed),
        tiling: job.tiling,
        noise_stop: job.noise_stop,
    };
    let (w, h) = (picture.image.width, picture.image.height);
    let scale = upscaler.scale() as u32;
    let layout = crate::model::tiled::TileLayout::new(job.tiling, (h as usize, w as usize))?;
    progress.started(&UpscaleHeader {
        model: upscaler.name().to_string(),
        image: job.image.clone(),
        input_size: (w, h),
        output_size: (w * scale, h * scale),
        tiling: job.tiling,
        tiles: layout.tiles().len(),
        steps: job.steps,
        conversions: picture.conversions.clone(),
    });
    let output = upscaler.upscale(&request, |step| progress.stepped(step))?;
    let upscaled = output.to_rgba()?;
    let comment = format!(
        "dreamwalk upscale | {} | {} | prompt: {} | negative: {} | {} steps, guidance {}, \
         noise level {}, seed {} | {}",
        upscaler.name(),
        job.image.display(),
        job.prompt,
        job.negative,
        job.steps,
        job.guidance,
        job.noise_level,
        job.seed,
        job.tiling
    );
    write(&job.out, &upscaled, &comment)?;
    if let Some(path) = &job.noise_map {
        let map = noise_map(
            &output.layout,
            &output.outcome.tiles,
            output.outcome.steps,
            upscaler.scale(),
        );
        let stop = match &job.noise_stop {
            Some(stop) => format!(
                "tiles stop refining below noise {} after {} steps",
                stop.threshold, stop.min_steps
            ),
            None => "no noise stop".to_string(),
        };
        let legend = format!(
            "dreamwalk tile map of {}: red = share of the steps run, green = last noise \
             estimate / the largest, blue = tile borders; {stop}\n{}",
            job.out.display(),
            describe_tiles(&output.outcome.tiles, output.outcome.steps)
        );
        write(path, &map, &legend)?;
    }
    Ok(UpscaleSummary {
        out: job.out.clone(),
        size: (upscaled.width, upscaled.height),
        calls_run: output.outcome.calls_run(),
        calls_total: output.outcome.calls_total(),
        noise_map: job.noise_map.clone(),
        elapsed: started.elapsed(),
    })
}

fn write(path: &Path, image: &RgbaImage, comment: &str) -> Result<()> {
    write_png(path, image, Some(comment))
        .map_err(|e| ModelError::bad_file(path, format!("cannot write the PNG: {e}")))
}
