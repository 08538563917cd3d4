//! TAESD's encoder (diffusers `AutoencoderTiny.encode`, `EncoderTiny`): an image in [-1, 1]
//! to latents, for images used as keyframes. It runs once per image, on the decoder's
//! kernels; its stride-2 convolutions are stride-1 ones sampled at every second pixel
//! ([`Act::subsample`]), four times the work of a strided kernel on three of its fifteen
//! layers, which is small next to sampling a keyframe.
//!
//! ```text
//! x = (image + 1) / 2                      (EncoderTiny.forward: TAESD works in [0, 1])
//! layers.0 conv(in -> c0, bias)            (no activation after it)
//! per stage i: (i > 0) conv stride 2 (no bias), then num_encoder_blocks[i] x Block
//! last: conv(c -> latent_channels, bias)   (raw latents: no clamp, no scaling)
//! Block(x) = relu(conv.4(relu(conv.2(relu(conv.0(x))))) + x)
//! ```

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::{read_weights, TaesdConfig};
use crate::model::kernels::{Act, Conv3x3, ConvShape, Sink};
use crate::model::{weights, ModelError, Result};

/// One encoder stage: a stride-2 convolution (all stages but the first), then blocks.
#[derive(Debug)]
struct Stage {
    down: Option<Conv3x3>,
    blocks: Vec<[Conv3x3; 3]>,
}

/// The TAESD encoder, ready to run on the CPU.
#[derive(Debug)]
pub struct TaesdEncoder {
    config: TaesdConfig,
    first: Conv3x3,
    stages: Vec<Stage>,
    last: Conv3x3,
}

/// The weight file names a folder may hold besides diffusers' `find_weights` names.
const ENCODER_FILES: [&str; 2] = ["encoder.safetensors", "taesd_encoder.safetensors"];

impl TaesdEncoder {
    /// Loads the encoder from a diffusers `AutoencoderTiny` folder (`config.json` + weights,
    /// decoder keys ignored), a folder holding `encoder.safetensors` /
    /// `taesd_encoder.safetensors`, or a single `.safetensors` file. Keys may use diffusers
    /// names (`encoder.layers.N.*`) or the original madebyollin/taesd encoder layout (`N.*`,
    /// the same N).
    pub fn load(path: &Path) -> Result<Self> {
        let (file, tensors, config_path) = read_weights(path, &ENCODER_FILES, diffusers_names)?;
        let config = match &config_path {
            Some(config_path) => weights::read_config(config_path)?,
            None => inferred_config(&tensors),
        };
        Self::from_tensors(&tensors, &config).map_err(|e| match e {
            ModelError::Invalid(message) => ModelError::bad_file(&file, message),
            ModelError::Candle(e) => ModelError::bad_file(&file, e),
            other => other,
        })
    }

    /// Builds the encoder from tensors with diffusers names (`encoder.layers.N.*`, other keys
    /// ignored). Fails on a missing tensor or a wrong shape.
    pub fn from_tensors(tensors: &HashMap<String, Tensor>, config: &TaesdConfig) -> Result<Self> {
        let channels = &config.encoder_block_out_channels;
        if channels.is_empty()
            || channels.len() != config.num_encoder_blocks.len()
            || channels.contains(&0)
        {
            return Err(ModelError::Invalid(format!(
                "config: encoder_block_out_channels {channels:?} and num_encoder_blocks {:?} \
                 must be non-empty, non-zero and of one length",
                config.num_encoder_blocks
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
        let conv = |index: usize, suffix: &str, cout: usize, cin: usize, bias: bool| {
            let name = format!("encoder.layers.{index}{suffix}");
            let weight = fetch(&format!("{name}.weight"), &[cout, cin, 3, 3])?;
            let bias = match bias {
                true => Some(fetch(&format!("{name}.bias"), &[cout])?),
                false => None,
            };
            Ok::<_, ModelError>(Conv3x3::new(&weight, bias.as_deref(), cout, cin))
        };
        let mut index = 0;
        let first = conv(index, "", channels[0], config.in_channels, true)?;
        index += 1;
        let mut stages = Vec::with_capacity(channels.len());
        for (stage, (&width, &count)) in channels.iter().zip(&config.num_encoder_blocks).enumerate()
        {
            let down = if stage > 0 {
                index += 1;
                Some(conv(index - 1, "", width, width, false)?)
            } else {
                None
            };
            let mut blocks = Vec::with_capacity(count);
            for _ in 0..count {
                blocks.push([
                    conv(index, ".conv.0", width, width, true)?,
                    conv(index, ".conv.2", width, width, true)?,
                    conv(index, ".conv.4", width, width, true)?,
                ]);
                index += 1;
            }
            stages.push(Stage { down, blocks });
        }
        let deepest = channels[channels.len() - 1];
        let last = conv(index, "", config.latent_channels, deepest, true)?;
        Ok(Self {
            config: config.clone(),
            first,
            stages,
            last,
        })
    }

    /// Image pixels per latent pixel along each side (8 for the default config).
    pub fn downscale_factor(&self) -> usize {
        1 << (self.stages.len() - 1)
    }

    /// The config the encoder was built from.
    pub fn config(&self) -> &TaesdConfig {
        &self.config
    }

    /// Encodes `(B, in_channels, H, W)` images in [-1, 1] to `(B, latent_channels, ceil(H/f),
    /// ceil(W/f))` latents, exactly as diffusers' `AutoencoderTiny.encode(image).latents`
    /// (no clamp, no scaling).
    pub fn encode(&self, image: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = image.dims4()?;
        if c != self.config.in_channels || n * h * w == 0 {
            return Err(ModelError::Invalid(format!(
                "TAESD encoder input must be (batch, {}, height, width), got {:?}",
                self.config.in_channels,
                image.dims()
            )));
        }
        let values = image
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let input = Act::from_nchw(Vec::new(), &values, (n, c, h, w), |v| (v + 1.0) / 2.0);
        let mut x = Act::reuse(Vec::new(), n, h, w, self.first.out_channels_padded());
        self.first.forward(&input, 1, act(&mut x, None, false));
        for stage in &self.stages {
            if let Some(down) = &stage.down {
                let mut full = Act::reuse(Vec::new(), x.n, x.h, x.w, down.out_channels_padded());
                down.forward(&x, 1, act(&mut full, None, false));
                x = full.subsample(0, x.into_buffer());
            }
            for [conv0, conv2, conv4] in &stage.blocks {
                let (nn, hh, ww, cc) = (x.n, x.h, x.w, x.c);
                let mut t1 = Act::reuse(Vec::new(), nn, hh, ww, cc);
                let mut t2 = Act::reuse(Vec::new(), nn, hh, ww, cc);
                conv0.forward(&x, 1, act(&mut t1, None, true));
                conv2.forward(&t1, 1, act(&mut t2, None, true));
                conv4.forward(&t2, 1, act(&mut t1, Some(&x), true));
                x = t1;
            }
        }
        let latent_channels = self.config.latent_channels;
        let mut latents = vec![0f32; x.n * latent_channels * x.h * x.w];
        self.last.forward(&x, 1, Sink::Planes { out: &mut latents });
        Ok(Tensor::from_vec(
            latents,
            (x.n, latent_channels, x.h, x.w),
            &Device::Cpu,
        )?)
    }
}

fn act<'a>(out: &'a mut Act, skip: Option<&'a Act>, relu: bool) -> Sink<'a> {
    Sink::Act { out, skip, relu }
}

/// Renames the original madebyollin/taesd encoder keys (`N.*`) to diffusers'
/// `encoder.layers.N.*` (the same N); diffusers-named files pass through.
fn diffusers_names(
    tensors: HashMap<String, Tensor>,
) -> std::result::Result<HashMap<String, Tensor>, String> {
    if tensors.keys().any(|k| k.starts_with("encoder.layers.")) {
        return Ok(tensors);
    }
    let renamed: HashMap<String, Tensor> = tensors
        .into_iter()
        .filter(|(name, _)| {
            name.split('.')
                .next()
                .is_some_and(|n| n.parse::<usize>().is_ok())
        })
        .map(|(name, tensor)| (format!("encoder.layers.{name}"), tensor))
        .collect();
    if renamed.is_empty() {
        return Err(
            "no TAESD encoder tensors (expected `encoder.layers.*` or the original \
             `0.weight`, `1.conv.0.weight`, ...)"
                .into(),
        );
    }
    Ok(renamed)
}

/// The default config, with the input, latent and stage widths read from the first and last
/// convolutions.
fn inferred_config(tensors: &HashMap<String, Tensor>) -> TaesdConfig {
    let mut config = TaesdConfig::default();
    if let Some(&[cout, cin, 3, 3]) = tensors.get("encoder.layers.0.weight").map(Tensor::dims) {
        config.in_channels = cin;
        config.encoder_block_out_channels = vec![cout; config.num_encoder_blocks.len()];
    }
    let last = (0..64)
        .rev()
        .find_map(|i| tensors.get(&format!("encoder.layers.{i}.weight")));
    if let Some(&[latent, _, 3, 3]) = last.map(Tensor::dims) {
        config.latent_channels = latent;
    }
    config
}
