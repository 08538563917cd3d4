//! The arguments, as clap parses them, and what they become in the library's types.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use super::values::{
    DecoderArg, EasingArg, FitArg, GpuDecodeArg, GpuPrecisionArg, InterpArg, LoopArg,
    PredictionArg, UpscaleArg,
};
use crate::app::ViewerOptions;
use crate::audio::Soundtrack;
use crate::model::lora::{parse_lora_arg, LoraSpec};
use crate::model::{
    DecoderKind, EndpointRequest, Engine, ImageKeyframe, Keyframe, SingleFileOptions,
};
use crate::pipeline::{check_laps, Inbetweens, Settings, MAX_IMAGE_SIDE};
use crate::record::RecordOptions;
use crate::usecase::{FrameRange, ModelSource, RenderJob, SegmentError};
use crate::walk::WalkSettings;

/// Walk the latent space of Stable Diffusion between prompts, in real time.
#[derive(Parser, Debug)]
#[command(name = "dreamwalk", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub viewer: ViewerArgs,
}

impl Cli {
    /// Parses the process's arguments as [`Parser::parse`] does (exiting on `--help` or an
    /// error), keeping the walk order of `render`'s `--prompt` and `--keyframe` as given:
    /// see [`Self::try_parse_in_order_from`].
    pub fn parse_in_order() -> Self {
        match Self::try_parse_in_order_from(std::env::args_os()) {
            Ok(cli) => cli,
            Err(e) => e.exit(),
        }
    }

    /// Parses `args` (the program name first). clap keeps each option's values apart, so
    /// `render`'s `--prompt` and `--keyframe` values are put back into one list in the order
    /// they were given ([`RenderArgs::keyframes`], the prompts emptied), from their
    /// positions on the command line.
    pub fn try_parse_in_order_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Self::command().try_get_matches_from(args)?;
        let mut cli = Self::from_arg_matches(&matches)?;
        if let (Some(Command::Render(render)), Some(("render", sub))) =
            (&mut cli.command, matches.subcommand())
        {
            let at = |id: &str| sub.indices_of(id).map(Vec::from_iter).unwrap_or_default();
            render.put_in_order(&at("prompts"), &at("keyframes"));
        }
        Ok(cli)
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Render a walk headless to a PNG sequence or a video file.
    Render(Box<RenderArgs>),
    /// Make a picture 4x larger with the Stable Diffusion x4 upscaler (--model required).
    Upscale(super::upscale::UpscaleArgs),
    /// Make one video of a walk's segments (`render --frames`), without encoding again.
    Join(super::join::JoinArgs),
}

/// Which weights to run.
#[derive(Args, Debug, Clone, Default)]
pub struct ModelArgs {
    /// A diffusers model folder, a Hugging Face id found in the local cache (e.g.
    /// stabilityai/sd-turbo), or a single-file checkpoint (.safetensors in the original
    /// layout, as A1111 and Civitai share them). Without it, the built-in demo model runs.
    #[arg(long, global = true)]
    pub model: Option<String>,
    /// A TAESD decoder: a folder (diffusers AutoencoderTiny) or a .safetensors file.
    #[arg(long, global = true)]
    pub taesd: Option<PathBuf>,
    /// For a single-file checkpoint (--model FILE.safetensors): a diffusers model folder
    /// whose configs and tokenizer describe it (default: the SD 1.x / 2.x configs its keys
    /// show, with a tokenizer from the Hugging Face cache).
    #[arg(long, global = true, value_name = "DIR")]
    pub config: Option<PathBuf>,
    /// For a single-file checkpoint: what its UNet predicts (default: the config's, else
    /// epsilon; SD 2.x 768 px models predict v).
    #[arg(long, global = true, value_enum)]
    pub prediction: Option<PredictionArg>,
    /// A LoRA merged into the model's weights, at a strength (default 1; kohya/A1111 or
    /// diffusers/PEFT files). Repeat for several.
    #[arg(long = "lora", global = true, value_name = "FILE[:STRENGTH]", value_parser = parse_lora_arg)]
    pub loras: Vec<LoraSpec>,
}

impl ModelArgs {
    /// Where the weights come from.
    pub fn source(&self) -> ModelSource {
        ModelSource {
            model: self.model.clone(),
            taesd: self.taesd.clone(),
            single_file: SingleFileOptions {
                config: self.config.clone(),
                prediction: self.prediction.map(Into::into),
            },
            loras: self.loras.clone(),
        }
    }
}

/// Options of the window (`dreamwalk` without a subcommand).
#[derive(Args, Debug, Clone)]
pub struct ViewerArgs {
    /// Start playing as soon as the model is loaded.
    #[arg(long)]
    pub play: bool,
    /// Save a PNG of the window (and a JSON with the picture's rectangle) once frames have
    /// played for `--screenshot-after` seconds, then close. Implies --play.
    #[arg(long, value_name = "PNG")]
    pub screenshot: Option<PathBuf>,
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    pub screenshot_after: f64,
    /// Record what plays to this file (.mp4, .webm, .gif, .y4m, .png or a folder) from the
    /// start.
    /// Implies --play. Closing the window (or Ctrl-C) finishes the file.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Where keyframes are sampled and TAESD decodes: `auto` on the GPU when it is a
    /// hardware adapter (a software one such as lavapipe is slower than the CPU), `on` on
    /// any adapter, `off` never.
    #[arg(long, value_enum, default_value_t = GpuDecodeArg::Auto)]
    pub gpu: GpuDecodeArg,
    /// Where TAESD decodes, when it should differ from `--gpu` (same values).
    #[arg(long, value_enum)]
    pub gpu_decode: Option<GpuDecodeArg>,
    /// What keyframes sampled on the GPU keep their weights in (f16 needs shader-f16).
    #[arg(long, value_enum, default_value_t = GpuPrecisionArg::Auto)]
    pub gpu_precision: GpuPrecisionArg,
    /// Decoded (source) frame size, sides multiples of the model's size multiple (8 x the
    /// UNet's down-sampling: 32 for the demo model, 64 for SD 1.5/2.1/Turbo) (default: the
    /// model's, 1024x576 for the demo model).
    #[arg(long, value_name = "WxH")]
    pub source: Option<Size>,
    /// Listen for OSC control messages on this UDP address (e.g. 127.0.0.1:9000): play,
    /// pause, position, speed, seed, a keyframe's prompt or mix weight (README lists the
    /// addresses). A port in use is refused before the window opens.
    #[arg(long, value_name = "IP:PORT")]
    pub osc: Option<std::net::SocketAddr>,
}

impl ViewerArgs {
    /// How the window starts. The source size is checked against the model once it loads.
    pub fn options(&self, model: &ModelArgs) -> anyhow::Result<ViewerOptions> {
        if !(0.0..=3600.0).contains(&self.screenshot_after) {
            bail!("--screenshot-after must be between 0 and 3600 seconds");
        }
        if let Some(path) = &self.record {
            // The name, ffmpeg for .webm/.gif, an existing file: refused before the window
            // opens (the frame rate is checked when recording starts, as it is the walk's).
            crate::record::check_output(path, &RecordOptions::default())?;
        }
        Ok(ViewerOptions {
            model: model.source(),
            autoplay: self.play || self.screenshot.is_some() || self.record.is_some(),
            record: self.record.clone(),
            screenshot: self
                .screenshot
                .clone()
                .map(|path| (path, Duration::from_secs_f64(self.screenshot_after))),
            gpu_decode: self.gpu_decode.unwrap_or(self.gpu).into(),
            gpu_sampling: self.gpu.into(),
            gpu_precision: self.gpu_precision.into(),
            gpu: None,
            source: self.source.map(Size::pair),
            osc: self.osc,
        })
    }
}

/// `WIDTHxHEIGHT`, e.g. `1024x576`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    pub width: u32,
    pub height: u32,
}

impl Size {
    /// (width, height), as the library takes sizes.
    pub fn pair(self) -> (u32, u32) {
        (self.width, self.height)
    }
}

impl std::str::FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a size: write WIDTHxHEIGHT, e.g. 1024x576");
        let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
        let (width, height) = (w.trim().parse::<u32>(), h.trim().parse::<u32>());
        match (width, height) {
            (Ok(width), Ok(height)) if width > 0 && height > 0 => {
                if width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
                    return Err(format!(
                        "`{s}` is larger than {MAX_IMAGE_SIDE} pixels on a side"
                    ));
                }
                Ok(Size { width, height })
            }
            _ => Err(bad()),
        }
    }
}

/// One `--keyframe`: `image:PATH` or `prompt:TEXT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyframeArg {
    Prompt(String),
    Image(PathBuf),
}

/// Reads `image:PATH` or `prompt:TEXT`.
fn parse_keyframe_arg(value: &str) -> Result<KeyframeArg, String> {
    if let Some(path) = value.strip_prefix("image:") {
        if path.is_empty() {
            return Err("`image:` needs a file: image:PATH".into());
        }
        return Ok(KeyframeArg::Image(PathBuf::from(path)));
    }
    if let Some(prompt) = value.strip_prefix("prompt:") {
        return Ok(KeyframeArg::Prompt(prompt.to_string()));
    }
    Err(format!(
        "`{value}`: write image:PATH (a PNG, JPEG or WebP picture) or prompt:TEXT"
    ))
}

#[derive(Args, Debug, Clone)]
pub struct RenderArgs {
    /// A keyframe prompt; give two or more keyframes (prompts and --keyframe), in walk order.
    #[arg(long = "prompt", required_unless_present = "keyframes")]
    pub prompts: Vec<String>,
    /// A keyframe, in walk order among the --prompt ones: `image:PATH` (a PNG, JPEG or WebP
    /// picture, fitted to the source size as --fit says) or `prompt:TEXT`.
    #[arg(long = "keyframe", value_name = "image:PATH|prompt:TEXT", value_parser = parse_keyframe_arg)]
    pub keyframes: Vec<KeyframeArg>,
    /// How an image keyframe of another shape meets the source size.
    #[arg(long, value_enum, default_value_t = FitArg::Crop)]
    pub fit: FitArg,
    /// img2img strength of image keyframes, 0 to 1: 0 uses the encoded picture as it is;
    /// above 0 it is re-noised and denoised with --image-prompt over that share of --steps
    /// (diffusers' img2img), so it takes the model's look.
    #[arg(long, default_value_t = 0.0, value_name = "0..1")]
    pub strength: f64,
    /// The prompt image keyframes are denoised with when --strength is above 0.
    #[arg(long, default_value = "", value_name = "TEXT")]
    pub image_prompt: String,
    /// The negative prompt.
    #[arg(long, default_value = "")]
    pub negative: String,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Give keyframe i the seed `seed + i` (default: all keyframes start from one noise).
    #[arg(long)]
    pub seed_per_keyframe: bool,
    /// Sampler steps per keyframe (default: the model's; 1-4 suit SD-Turbo).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale, -100 to 100 (1 or less: off).
    #[arg(long, allow_negative_numbers = true)]
    pub guidance: Option<f64>,
    /// Walk positions between two keyframes.
    #[arg(long, default_value_t = 24)]
    pub steps_between: usize,
    /// In-between frames per decoded frame: 0 to 15, or `auto`.
    #[arg(long, default_value = "3")]
    pub inbetween: Inbetweens,
    /// Walk positions per keyframe pair sampled for real (blended prompts, slerped noise,
    /// the model's sampler) instead of slerped, placed where the decoded frames differ
    /// most; the slerp fills the rest between them. Below --steps-between.
    #[arg(long, value_name = "N", default_value_t = 0, conflicts_with = "audio")]
    pub diffuse: usize,
    #[arg(long, value_enum, default_value_t = InterpArg::Slerp)]
    pub interp: InterpArg,
    #[arg(long, value_enum, default_value_t = EasingArg::Linear)]
    pub ease: EasingArg,
    #[arg(long = "loop", value_enum, default_value_t = LoopArg::Once)]
    pub loop_mode: LoopArg,
    /// Laps of a ping-pong or endless loop to render (1 to 1000000).
    #[arg(long, default_value_t = 1)]
    pub laps: u64,
    /// Output frame size.
    #[arg(long, default_value = "3840x2160")]
    pub size: Size,
    /// Decoded (source) size, sides multiples of the model's size multiple (8 x the UNet's
    /// down-sampling: 32 for the demo model, 64 for SD 1.5/2.1/Turbo) (default: 1024x576 for
    /// the demo model, the model's native size otherwise).
    #[arg(long)]
    pub source: Option<Size>,
    /// Which decoder turns latents into pixels (default: the model's fastest available,
    /// TAESD when it has one, else its full VAE).
    #[arg(long, value_enum)]
    pub decoder: Option<DecoderArg>,
    /// Where keyframes are sampled and TAESD decodes: `auto` on a hardware GPU when there
    /// is one (a software adapter such as lavapipe is slower than the CPU), `on` on any
    /// adapter, `off` never.
    #[arg(long, value_enum, default_value_t = GpuDecodeArg::Auto)]
    pub gpu: GpuDecodeArg,
    /// Where TAESD decodes, when it should differ from `--gpu` (same values).
    #[arg(long, value_enum)]
    pub gpu_decode: Option<GpuDecodeArg>,
    /// What keyframes sampled on the GPU keep their weights in (f16 needs shader-f16).
    #[arg(long, value_enum, default_value_t = GpuPrecisionArg::Auto)]
    pub gpu_precision: GpuPrecisionArg,
    /// CPU bicubic to `--size`, or none (frames stay at the source size).
    #[arg(long, value_enum, default_value_t = UpscaleArg::Cpu)]
    pub upscale: UpscaleArg,
    /// Frames per second of the output video.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=240))]
    pub fps: u32,
    /// Output: a folder (PNG sequence), or a file .mp4 / .webm / .gif / .y4m (.webm and .gif
    /// need ffmpeg; a .gif at most 50 fps).
    #[arg(long)]
    pub out: PathBuf,
    /// Start every keyframe from the tensor `init_latents` of this safetensors file.
    #[arg(long)]
    pub init_latents: Option<PathBuf>,
    /// Also save the keyframe latents (`keyframe_0`, `keyframe_1`, ...) to this file.
    #[arg(long)]
    pub save_latents: Option<PathBuf>,
    /// Quality for .mp4 (H.264 crf; lower is better, 18 is visually lossless); .webm scales
    /// it to VP9's 0..63.
    #[arg(long, default_value_t = 18, value_parser = clap::value_parser!(u8).range(0..=51))]
    pub crf: u8,
    /// Size of the recorded video when it should differ from the frames.
    #[arg(long)]
    pub record_size: Option<Size>,
    /// Replace an existing --out (a file, or a folder's PNGs). The old output stays until
    /// the new one is finished. Without it, an existing output is refused before sampling.
    #[arg(long)]
    pub overwrite: bool,
    /// A sound track (WAV, FLAC, MP3 or Ogg Vorbis) that times the walk: its onsets set how
    /// far each frame goes, its length the walk's (one lap of a loop), and it is muxed into
    /// an .mp4 (AAC) or .webm (Opus). Every frame is decoded at its own place (no
    /// in-betweens); --loop still says the path.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["inbetween", "laps", "steps_between"])]
    pub audio: Option<PathBuf>,
    #[command(flatten)]
    pub hires: super::hires::HiresArgs,
    /// Render only output frames FIRST..LAST of the walk (0-based, both included; FIRST..
    /// runs to the end), byte-identical to the same frames of the whole render: one segment
    /// of a walk split over many machines. A PNG folder names them by these indices, so the
    /// segments may share it; `dreamwalk join` makes one video of .mp4 segments. Needs a
    /// fixed --inbetween (not auto).
    #[arg(long, value_name = "FIRST..LAST")]
    pub frames: Option<FrameRange>,
}

impl RenderArgs {
    /// `--decoder`, else the model's fastest (TAESD when it has one, else its VAE).
    pub fn decoder(&self, engine: &dyn Engine) -> DecoderKind {
        match self.decoder {
            Some(decoder) => decoder.into(),
            None => DecoderKind::fastest(&engine.decoders()).unwrap_or_default(),
        }
    }

    /// Moves the `--prompt` values into [`Self::keyframes`] among the `--keyframe` ones, by
    /// their positions on the command line (`prompt_at[i]` is where prompt `i` was given).
    fn put_in_order(&mut self, prompt_at: &[usize], keyframe_at: &[usize]) {
        if prompt_at.len() != self.prompts.len() || keyframe_at.len() != self.keyframes.len() {
            return;
        }
        let prompts = self.prompts.drain(..).map(KeyframeArg::Prompt);
        let mut placed: Vec<(usize, KeyframeArg)> = prompt_at
            .iter()
            .copied()
            .zip(prompts)
            .chain(keyframe_at.iter().copied().zip(self.keyframes.drain(..)))
            .collect();
        placed.sort_by_key(|(at, _)| *at);
        self.keyframes = placed.into_iter().map(|(_, keyframe)| keyframe).collect();
    }

    /// The keyframes in walk order, pictures read (an unreadable one is an error naming
    /// it). Parsed by [`Cli::try_parse_in_order_from`], `--prompt` and `--keyframe` keep
    /// their order; otherwise the prompts come first.
    pub fn read_keyframes(&self) -> anyhow::Result<Vec<Keyframe>> {
        let given = self.prompts.iter().cloned().map(KeyframeArg::Prompt);
        given
            .chain(self.keyframes.iter().cloned())
            .enumerate()
            .map(|(i, keyframe)| {
                Ok(match keyframe {
                    KeyframeArg::Prompt(prompt) => Keyframe::Prompt(prompt),
                    KeyframeArg::Image(path) => {
                        let pixels = crate::model::read_image(&path)
                            .with_context(|| format!("image keyframe {}", i + 1))?;
                        Keyframe::Image(ImageKeyframe {
                            fit: self.fit.into(),
                            strength: self.strength,
                            prompt: self.image_prompt.clone(),
                            ..ImageKeyframe::new(path, Arc::new(pixels))
                        })
                    }
                })
            })
            .collect()
    }

    /// How `--out` is written (the model adds its name to the comment later).
    pub fn record_options(&self) -> RecordOptions {
        RecordOptions {
            fps: self.fps,
            size: self.record_size.map(Size::pair),
            crf: self.crf,
            overwrite: self.overwrite,
            audio: self.audio.clone(),
            // The end of `FIRST..` is known once the walk is counted: until then, any frame
            // from FIRST on is the segment's.
            segment: self
                .frames
                .map(|range| range.first..=range.last.unwrap_or(u64::MAX)),
            ..Default::default()
        }
    }

    /// Refuses `--frames` with `--inbetween auto` before anything loads (the rest of the
    /// range is checked against the walk's length when the render starts).
    pub fn check_frames(&self) -> Result<(), SegmentError> {
        match self.frames {
            Some(range) if self.audio.is_none() && self.inbetween == Inbetweens::Auto => {
                Err(SegmentError::AutoInbetweens { range })
            }
            _ => Ok(()),
        }
    }

    /// `--audio`, read and analysed (refused by name when it cannot time the walk:
    /// unreadable, not audio, silent, shorter than two frames), before the model loads.
    pub fn read_audio(&self) -> anyhow::Result<Option<Soundtrack>> {
        let Some(path) = &self.audio else {
            return Ok(None);
        };
        let soundtrack = Soundtrack::read(path)?;
        soundtrack.frames(self.fps)?;
        Ok(Some(soundtrack))
    }

    /// The render these arguments describe on `engine` (whose defaults fill what was not
    /// given) with `keyframes` ([`Self::read_keyframes`], read before the model loads so a
    /// bad picture is refused at once) and `audio` ([`Self::read_audio`]), checked before
    /// anything is opened or sampled.
    pub fn job(
        &self,
        engine: &dyn Engine,
        keyframes: Vec<Keyframe>,
        audio: Option<Soundtrack>,
    ) -> anyhow::Result<RenderJob> {
        check_laps(self.laps)?;
        let defaults = engine.defaults();
        let init_latents = match &self.init_latents {
            None => None,
            Some(path) => Some(crate::model::load_init_latents(path)?),
        };
        let settings = Settings {
            endpoints: EndpointRequest {
                keyframes,
                negative: self.negative.clone(),
                seed: self.seed,
                seed_per_keyframe: self.seed_per_keyframe,
                steps: self.steps.unwrap_or(defaults.steps),
                guidance: self.guidance.unwrap_or(defaults.guidance),
                image_size: self.source.map_or(defaults.image_size, Size::pair),
                init_latents,
            },
            walk: WalkSettings {
                steps_between: self.steps_between,
                interp: self.interp.into(),
                easing: self.ease.into(),
                loop_mode: self.loop_mode.into(),
            },
            decoder: self.decoder(engine),
            // A sound track places every frame itself.
            inbetweens: match audio {
                Some(_) => Inbetweens::Fixed(0),
                None => self.inbetween,
            },
            target_fps: f64::from(self.fps),
            upscale: self.upscale.into(),
            output_size: self.size.pair(),
            diffuse: self.diffuse,
        };
        settings.validate(engine)?;
        Ok(RenderJob {
            settings,
            laps: self.laps,
            out: self.out.clone(),
            record: self.record_options(),
            save_latents: self.save_latents.clone(),
            audio,
            frames: self.frames,
        })
    }
}
