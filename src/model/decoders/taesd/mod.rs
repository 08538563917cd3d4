//! TAESD, the tiny autoencoder's decoder (diffusers `AutoencoderTiny`, `DecoderTiny`):
//! latents -> image, matched against diffusers, and fast on the CPU.
//!
//! Decoding is the whole per-frame cost of a latent walk, so the convolutions do not go
//! through candle: they run in [`crate::model::kernels`] (Winograd F(4x4, 3x3) on NHWC
//! activations, AVX2/FMA micro-kernel, upsampling, bias, ReLU, residual add and the output
//! mapping fused).
//! TAESD has no normalization layer, so nothing needs the whole image at once.
//!
//! The graph (diffusers names, default config):
//!
//! ```text
//! x = tanh(latents / 3) * 3
//! layers.0 conv(latent -> 64) + ReLU
//! per stage i: num_decoder_blocks[i] x Block, then (not last) nearest x2 + conv (no bias)
//! last: conv(64 -> 3, bias);  image = x * 2 - 1
//! Block(x) = relu(conv.4(relu(conv.2(relu(conv.0(x))))) + x)
//! ```

mod bands;
mod config;
mod encoder;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use parking_lot::Mutex;

use self::bands::BandOutput;
use self::config::LayerKind;
use super::tiling::Tiling;
use crate::frame::RgbaImage;
use crate::model::kernels::{Act, Conv3x3, ConvShape, Sink};
use crate::model::{weights, ModelError, Result};

pub use self::config::TaesdConfig;
pub use self::encoder::TaesdEncoder;

/// One decoder stage: residual blocks, then a convolution (on the upsampled input for all
/// stages but the last, whose convolution makes the image).
#[derive(Debug)]
struct Stage {
    blocks: Vec<[Conv3x3; 3]>,
    conv: Conv3x3,
}

/// One convolution of the decoder as loaded, in PyTorch's layout, for other backends
/// (the GPU decoder builds its own weight layout from it).
#[derive(Debug, Clone)]
pub struct ConvWeights {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// `(out_channels, in_channels, 3, 3)`, row-major.
    pub weight: Vec<f32>,
    /// `(out_channels)`; `None` for the bias-free convolutions between stages.
    pub bias: Option<Vec<f32>>,
}

/// The TAESD decoder, ready to run on the CPU.
#[derive(Debug)]
pub struct TaesdDecoder {
    config: TaesdConfig,
    first: Conv3x3,
    stages: Vec<Stage>,
    /// The same convolutions as loaded, in layer order (see [`Self::conv_weights`]).
    conv_weights: Vec<ConvWeights>,
    /// Activation buffers kept between calls: a walk decodes frame after frame at one size,
    /// and fresh buffers of ~150 MB each would cost page faults every frame.
    buffers: Mutex<Vec<Vec<f32>>>,
    /// How `decode` and `decode_rgba` bound their memory.
    tiling: Tiling,
}

/// The weight file names a folder may hold besides diffusers' `find_weights` names.
const DECODER_FILES: [&str; 2] = ["decoder.safetensors", "taesd_decoder.safetensors"];

impl TaesdDecoder {
    /// Loads a decoder from a diffusers `AutoencoderTiny` folder (`config.json` +
    /// `diffusion_pytorch_model.safetensors` or `model.safetensors`, encoder keys ignored),
    /// a folder holding `decoder.safetensors` / `taesd_decoder.safetensors`, or a single
    /// `.safetensors` file.
    ///
    /// Keys may use diffusers names (`decoder.layers.N.*`) or the original madebyollin/taesd
    /// layout (`N.*`, N = diffusers N + 1). Without a `config.json` the default config is
    /// used, with the latent and stage widths taken from the first convolution's weight
    /// (so 16-channel decoders such as TAEF1/TAESD3 load too).
    pub fn load(path: &Path) -> Result<Self> {
        let (file, tensors, config_path) = read_weights(path, &DECODER_FILES, diffusers_names)?;
        let config = match &config_path {
            Some(config_path) => {
                let config: TaesdConfig = weights::read_config(config_path)?;
                config
                    .validate()
                    .map_err(|(key, message)| ModelError::Config {
                        path: config_path.clone(),
                        key: key.into(),
                        message,
                    })?;
                config
            }
            None => inferred_config(&tensors),
        };
        Self::from_tensors(&tensors, &config).map_err(|e| match e {
            ModelError::Invalid(message) => ModelError::bad_file(&file, message),
            ModelError::Candle(e) => ModelError::bad_file(&file, e),
            other => other,
        })
    }

    /// Builds the decoder from tensors with diffusers names (`decoder.layers.N.*`, other
    /// keys ignored), e.g. weights made in code. Fails on a missing tensor, a wrong shape,
    /// or a `decoder.*` tensor the config has no place for.
    pub fn from_tensors(tensors: &HashMap<String, Tensor>, config: &TaesdConfig) -> Result<Self> {
        config
            .validate()
            .map_err(|(key, message)| ModelError::Invalid(format!("config `{key}`: {message}")))?;
        let shapes = config.decoder_tensor_shapes();
        let expected: std::collections::HashSet<&str> =
            shapes.iter().map(|(name, _)| name.as_str()).collect();
        let mut unexpected: Vec<&str> = tensors
            .keys()
            .map(String::as_str)
            .filter(|name| name.starts_with("decoder.") && !expected.contains(name))
            .collect();
        if !unexpected.is_empty() {
            unexpected.sort_unstable();
            return Err(ModelError::Invalid(format!(
                "tensors the TAESD config has no place for (wrong config, or an unsupported \
                 variant): {}",
                unexpected.join(", ")
            )));
        }
        let fetch = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let tensor = tensors
                .get(name)
                .ok_or_else(|| ModelError::Invalid(format!("missing tensor `{name}`")))?;
            if tensor.dims() != shape {
                return Err(ModelError::Invalid(format!(
                    "tensor `{name}` has shape {:?}, expected {shape:?}",
                    tensor.dims()
                )));
            }
            Ok(tensor
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?)
        };
        let conv_weights = std::cell::RefCell::new(Vec::new());
        let conv = |name: &str, cout: usize, cin: usize, bias: bool| -> Result<Conv3x3> {
            let weight = fetch(&format!("{name}.weight"), &[cout, cin, 3, 3])?;
            let bias = match bias {
                true => Some(fetch(&format!("{name}.bias"), &[cout])?),
                false => None,
            };
            let conv = Conv3x3::new(&weight, bias.as_deref(), cout, cin);
            conv_weights.borrow_mut().push(ConvWeights {
                in_channels: cin,
                out_channels: cout,
                weight,
                bias,
            });
            Ok(conv)
        };

        let layers = config.layers();
        let mut first = None;
        let mut stages = Vec::new();
        let mut blocks = Vec::new();
        for (index, layer) in layers.iter().enumerate() {
            let name = format!("decoder.layers.{index}");
            match *layer {
                LayerKind::Conv { cin, cout, bias } => {
                    let conv = conv(&name, cout, cin, bias)?;
                    if index == 0 {
                        first = Some(conv);
                    } else {
                        stages.push(Stage {
                            blocks: std::mem::take(&mut blocks),
                            conv,
                        });
                    }
                }
                LayerKind::Block { channels: c } => blocks.push([
                    conv(&format!("{name}.conv.0"), c, c, true)?,
                    conv(&format!("{name}.conv.2"), c, c, true)?,
                    conv(&format!("{name}.conv.4"), c, c, true)?,
                ]),
                LayerKind::Relu | LayerKind::Upsample => {}
            }
        }
        let first = first.ok_or_else(|| ModelError::Invalid("decoder has no layers".into()))?;
        Ok(Self {
            config: config.clone(),
            first,
            stages,
            conv_weights: conv_weights.into_inner(),
            buffers: Mutex::new(Vec::new()),
            tiling: Tiling::default(),
        })
    }

    /// A decoder with random weights, `normal(0, 0.05)` for convolution weights and
    /// `0.01 * normal(0, 1)` for biases (the fixture generator's rule), for benchmarks and
    /// demos without a model file.
    pub fn random(config: &TaesdConfig, seed: u64) -> Result<Self> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let normal = rand_distr::StandardNormal;
        let mut tensors = HashMap::new();
        for (name, shape) in config.decoder_tensor_shapes() {
            let scale = if name.ends_with(".bias") { 0.01 } else { 0.05 };
            let count = shape.iter().product();
            let values: Vec<f32> = (0..count)
                .map(|_| scale * rng.sample::<f32, _>(normal))
                .collect();
            tensors.insert(name, Tensor::from_vec(values, shape, &Device::Cpu)?);
        }
        Self::from_tensors(&tensors, config)
    }

    /// The config the decoder was built from.
    pub fn config(&self) -> &TaesdConfig {
        &self.config
    }

    /// Image pixels per latent pixel along each side (8 for the default config).
    pub fn upscale_factor(&self) -> usize {
        self.config.upscale_factor()
    }

    /// Every convolution in the order the decoder runs them (diffusers layer order): the
    /// first one, then per stage `conv.0`, `conv.2`, `conv.4` of each block followed by the
    /// stage's own convolution (after the nearest upsampling for all stages but the last,
    /// whose convolution makes the image).
    pub fn conv_weights(&self) -> &[ConvWeights] {
        &self.conv_weights
    }

    /// How [`Self::decode`] and [`Self::decode_rgba`] bound their memory ([`Tiling::Auto`]
    /// with half the machine's memory unless set).
    pub fn tiling(&self) -> Tiling {
        self.tiling
    }

    /// Sets how [`Self::decode`] and [`Self::decode_rgba`] bound their memory.
    pub fn set_tiling(&mut self, tiling: Tiling) {
        self.tiling = tiling;
    }

    /// Decodes `(B, latent_channels, h, w)` latents to `(B, out_channels, h*f, w*f)` f32
    /// images, exactly as diffusers' `AutoencoderTiny.decode(latents).sample`: the soft clamp
    /// `tanh(x / 3) * 3` on the way in, `x * 2 - 1` on the way out, no clamp of the result.
    /// In row bands when [`Self::tiling`] says so.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        self.decode_with(latents, self.tiling)
    }

    /// [`Self::decode`] with the memory bounded as `tiling` says (row bands give the
    /// whole-image values).
    pub fn decode_with(&self, latents: &Tensor, tiling: Tiling) -> Result<Tensor> {
        tiling.check()?;
        let (n, h, w) = self.check_latents(latents)?;
        let f = self.upscale_factor();
        let image_len = self.config.out_channels * h * f * w * f;
        let mut image = vec![0f32; n * image_len];
        match self.bands(h, w, tiling) {
            None => self.run(latents, Sink::Image { out: &mut image })?,
            Some(band) => {
                let outputs = image.chunks_mut(image_len).map(BandOutput::Image).collect();
                self.run_bands(latents, band, outputs)?
            }
        }
        let shape = (n, self.config.out_channels, h * f, w * f);
        Ok(Tensor::from_vec(image, shape, &Device::Cpu)?)
    }

    /// Decodes to one RGBA8 image per batch row: TAESD's native [0, 1] output (diffusers'
    /// `(image + 1) / 2`) clamped to [0, 1], times 255, rounded; alpha 255. Written by the
    /// last convolution directly, with no full-size float image in between. In row bands
    /// when [`Self::tiling`] says so.
    pub fn decode_rgba(&self, latents: &Tensor) -> Result<Vec<RgbaImage>> {
        self.decode_rgba_with(latents, self.tiling)
    }

    /// [`Self::decode_rgba`] with the memory bounded as `tiling` says.
    pub fn decode_rgba_with(&self, latents: &Tensor, tiling: Tiling) -> Result<Vec<RgbaImage>> {
        if self.config.out_channels != 3 {
            return Err(ModelError::Invalid(format!(
                "RGBA output needs a 3-channel decoder, this one has {}",
                self.config.out_channels
            )));
        }
        tiling.check()?;
        let (n, h, w) = self.check_latents(latents)?;
        let f = self.upscale_factor();
        let (height, width) = (h * f, w * f);
        let mut images = vec![vec![255u8; height * width * 4]; n];
        match self.bands(h, w, tiling) {
            None => self.run(latents, Sink::Rgba { out: &mut images })?,
            Some(band) => {
                let outputs = images
                    .iter_mut()
                    .map(|image| BandOutput::Rgba(image))
                    .collect();
                self.run_bands(latents, band, outputs)?
            }
        }
        images
            .into_iter()
            .map(|pixels| {
                RgbaImage::from_pixels(width as u32, height as u32, pixels)
                    .ok_or_else(|| ModelError::Invalid("RGBA image size".into()))
            })
            .collect()
    }

    /// Multiply-adds x 2 of one decode of `h x w` latents as a direct convolution would do
    /// them (the usual GFLOP count, to compare with other implementations).
    pub fn flops(&self, h: usize, w: usize) -> f64 {
        let per_pixel =
            |conv: &Conv3x3| 2.0 * 9.0 * (conv.in_channels() * conv.out_channels()) as f64;
        let scale = self.config.upsampling_scaling_factor;
        let mut pixels = (h * w) as f64;
        let mut total = per_pixel(&self.first) * pixels;
        for (stage, s) in self.stages.iter().enumerate() {
            let block: f64 = s.blocks.iter().flatten().map(per_pixel).sum();
            total += block * pixels;
            if stage + 1 < self.stages.len() {
                pixels *= (scale * scale) as f64;
            }
            total += per_pixel(&s.conv) * pixels;
        }
        total
    }

    fn check_latents(&self, latents: &Tensor) -> Result<(usize, usize, usize)> {
        match *latents.dims() {
            [n, c, h, w] if c == self.config.latent_channels && n * h * w > 0 => Ok((n, h, w)),
            _ => Err(ModelError::Invalid(format!(
                "TAESD latents must be (batch, {}, height, width), got {:?}",
                self.config.latent_channels,
                latents.dims()
            ))),
        }
    }

    /// The whole decoder, the last convolution writing into `sink`.
    fn run(&self, latents: &Tensor, sink: Sink<'_>) -> Result<()> {
        let (n, h, w) = self.check_latents(latents)?;
        let values = latents
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut pool = std::mem::take(&mut *self.buffers.lock());
        let mut take = || pool.pop().unwrap_or_default();
        let shape = (n, self.config.latent_channels, h, w);
        let input = Act::from_nchw(take(), &values, shape, |x| (x / 3.0).tanh() * 3.0);

        let c = self.first.out_channels_padded();
        let mut x = Act::reuse(take(), n, h, w, c);
        self.first.forward(&input, 1, relu_into(&mut x));
        let mut spare = [input.into_buffer(), take()];
        let scale = self.config.upsampling_scaling_factor;
        let mut sink = Some(sink);
        for (index, stage) in self.stages.iter().enumerate() {
            for [conv0, conv2, conv4] in &stage.blocks {
                let (nn, hh, ww, cc) = (x.n, x.h, x.w, x.c);
                let [a, b] = std::mem::take(&mut spare);
                let mut t1 = Act::reuse(a, nn, hh, ww, cc);
                let mut t2 = Act::reuse(b, nn, hh, ww, cc);
                conv0.forward(&x, 1, relu_into(&mut t1));
                conv2.forward(&t1, 1, relu_into(&mut t2));
                let sink = Sink::Act {
                    out: &mut t1,
                    skip: Some(&x),
                    relu: true,
                };
                conv4.forward(&t2, 1, sink);
                spare = [x.into_buffer(), t2.into_buffer()];
                x = t1;
            }
            if index + 1 < self.stages.len() {
                let [a, b] = std::mem::take(&mut spare);
                let c = stage.conv.out_channels_padded();
                let mut y = Act::reuse(a, x.n, x.h * scale, x.w * scale, c);
                let sink = Sink::Act {
                    out: &mut y,
                    skip: None,
                    relu: false,
                };
                stage.conv.forward(&x, scale, sink);
                spare = [x.into_buffer(), b];
                x = y;
            } else if let Some(sink) = sink.take() {
                stage.conv.forward(&x, 1, sink);
            }
        }
        let mut pool = self.buffers.lock();
        pool.push(x.into_buffer());
        pool.extend(spare);
        Ok(())
    }
}

/// Maps a file's keys to diffusers' names, or says why it cannot.
pub(super) type RenameKeys =
    fn(HashMap<String, Tensor>) -> std::result::Result<HashMap<String, Tensor>, String>;

/// The weights of a TAESD folder or file: the file (diffusers' names first, then `extra`
/// names in a folder), its tensors renamed by `rename` (errors name the file), and the
/// folder's `config.json` when there is one.
pub(super) fn read_weights(
    path: &Path,
    extra: &[&str],
    rename: RenameKeys,
) -> Result<(PathBuf, HashMap<String, Tensor>, Option<PathBuf>)> {
    let (file, config_path) = if path.is_dir() {
        let file = weights_file(path, extra)?;
        let config = path.join("config.json");
        (file, config.is_file().then_some(config))
    } else if path.is_file() {
        (path.to_path_buf(), None)
    } else {
        return Err(ModelError::Missing {
            path: path.to_path_buf(),
        });
    };
    let tensors = candle_core::safetensors::load(&file, &Device::Cpu)
        .map_err(|e| ModelError::bad_file(&file, format!("not a valid safetensors file: {e}")))?;
    let tensors = rename(tensors).map_err(|e| ModelError::bad_file(&file, e))?;
    Ok((file, tensors, config_path))
}

/// The weights file of a folder: diffusers' names first, then `extra`.
fn weights_file(dir: &Path, extra: &[&str]) -> Result<PathBuf> {
    weights::find_weights(dir).or_else(|_| {
        extra
            .iter()
            .map(|name| dir.join(name))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                let message = format!(
                    "no TAESD weights (looked for diffusion_pytorch_model.safetensors, \
                     model.safetensors, {})",
                    extra.join(", ")
                );
                ModelError::bad_file(dir, message)
            })
    })
}

fn relu_into(out: &mut Act) -> Sink<'_> {
    Sink::Act {
        out,
        skip: None,
        relu: true,
    }
}

/// Renames the original madebyollin/taesd keys (`N.*`, a `Sequential` starting with a
/// parameter-less `Clamp`) to diffusers' `decoder.layers.(N-1).*`; diffusers-named files
/// pass through.
fn diffusers_names(
    tensors: HashMap<String, Tensor>,
) -> std::result::Result<HashMap<String, Tensor>, String> {
    if tensors.keys().any(|k| k.starts_with("decoder.layers.")) {
        return Ok(tensors);
    }
    let original = regex::Regex::new(r"^(\d+)\.(.+)$").map_err(|e| e.to_string())?;
    let mut renamed = HashMap::new();
    for (name, tensor) in tensors {
        let Some(caps) = original.captures(&name) else {
            continue;
        };
        let index: usize = caps[1].parse().map_err(|_| format!("bad key `{name}`"))?;
        if index == 0 {
            return Err(format!(
                "`{name}`: layer 0 of the original TAESD has no weights"
            ));
        }
        renamed.insert(format!("decoder.layers.{}.{}", index - 1, &caps[2]), tensor);
    }
    if renamed.is_empty() {
        return Err(
            "no TAESD decoder tensors (expected `decoder.layers.*` or the original \
                    `1.weight`, `3.conv.0.weight`, ...)"
                .into(),
        );
    }
    Ok(renamed)
}

/// The default config, with the latent and stage widths read from the first convolution.
fn inferred_config(tensors: &HashMap<String, Tensor>) -> TaesdConfig {
    let mut config = TaesdConfig::default();
    if let Some(&[cout, cin, 3, 3]) = tensors.get("decoder.layers.0.weight").map(Tensor::dims) {
        config.latent_channels = cin;
        config.decoder_block_out_channels = vec![cout; config.num_decoder_blocks.len()];
    }
    config
}
