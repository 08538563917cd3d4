//! The AutoencoderKL decoder (the full Stable Diffusion VAE): latents to an image in [-1, 1].
//!
//! The graph is diffusers' `Decoder` (the encoder, for images used as keyframes, is in
//! [`encoder`] and loaded only when an image is encoded):
//!
//! ```text
//! post_quant_conv (1x1) -> conv_in (3x3)
//! mid block: resnet, attention (one head, all channels), resnet
//! up blocks: (layers_per_block + 1) resnets, then (not last) nearest x2 + conv 3x3
//! GroupNorm + SiLU -> conv_out (3x3)
//! resnet(x) = shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))))))
//! ```
//!
//! It runs on the CPU on NHWC activations rather than through candle's blocks, whose generic
//! convolution reaches ~13 GFLOP/s here against PyTorch's ~100: the 3x3 convolutions, the
//! GroupNorm + SiLU and the attention run in [`crate::model::kernels`] (Winograd F(4x4, 3x3),
//! nearest upsampling folded into the input gather, residual adds done in place by the
//! output transform). Memory: the 3x3 weights stay in their compact form (the Winograd form
//! is made per layer into one reused buffer), activations are taken from and given back to a
//! pool as soon as each is dead, GroupNorm + SiLU runs in place where the input is not
//! needed again, and the attention's scores are made a block of rows at a time.
//!
//! A decode whose working buffer would exceed its [`Tiling`] budget runs by tiles
//! ([`tiled`]: exact, GroupNorm statistics gathered over the whole image), so any size
//! decodes in bounded memory.

mod budget;
mod checkpoint;
mod config;
mod encoder;
mod plan;
mod resnet;
mod steps;
mod tiled;

use std::path::Path;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::{init::DEFAULT_KAIMING_NORMAL, Init, VarBuilder};

use super::tiling::Tiling;
use crate::model::kernels::{
    Act, Attention, CompactConv3x3, Conv1x1, ConvShape, GroupNorm, Pool, Sink,
};
use crate::model::{weights, ModelError, Result};

use self::plan::Chain;
use self::resnet::Resnet;

pub use self::budget::DecodePlan;
pub use self::config::AutoencoderKlConfig;
pub use self::encoder::VaeEncoder;

/// An `UpDecoderBlock2D`: resnets, then (all but the last block) nearest x2 and a conv.
#[derive(Debug)]
struct UpBlock {
    resnets: Vec<Resnet>,
    upsample: Option<CompactConv3x3>,
}

/// Buffers one decode works in. Dropped at its end: kept between decodes, buffers that
/// served one size at one layer serve another at the next decode, and the process's
/// resident memory creeps up by a few activations; fresh pages cost ~1% of a decode.
#[derive(Debug, Default)]
struct Workspace {
    pool: Pool,
    /// The current layer's Winograd weights (38 MB for a 512 -> 512 conv).
    winograd: Vec<f32>,
}

/// The AutoencoderKL decoder with its `post_quant_conv`.
#[derive(Debug)]
pub struct VaeDecoder {
    post_quant_conv: Option<Conv1x1>,
    conv_in: CompactConv3x3,
    mid_resnets: [Resnet; 2],
    mid_attention: Attention,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: CompactConv3x3,
    config: AutoencoderKlConfig,
    /// The steps after the latent level, as tiled decodes run them.
    chain: Chain,
    /// How `decode` and `decode_raw` bound their memory.
    tiling: Tiling,
}

/// diffusers' VAE uses GroupNorm eps 1e-6 everywhere (not the UNet's `norm_eps`).
const VAE_NORM_EPS: f64 = 1e-6;

/// Reads a tensor as f32 values. The hint is what candle-nn's layer constructors pass, so a
/// backend that makes weights (the demo model's) makes the same ones.
fn fetch(
    vb: &VarBuilder,
    shape: impl Into<Shape>,
    name: &str,
    hint: Init,
) -> candle_core::Result<Vec<f32>> {
    vb.get_with_hints(shape, name, hint)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()
}

/// candle-nn's bias initialisation: uniform in +-1/sqrt(fan_in).
fn bias_hint(fan_in: usize) -> Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

fn conv3x3(vb: VarBuilder, cin: usize, cout: usize) -> candle_core::Result<CompactConv3x3> {
    let weight = fetch(&vb, (cout, cin, 3, 3), "weight", DEFAULT_KAIMING_NORMAL)?;
    let bias = fetch(&vb, cout, "bias", bias_hint(cin))?;
    Ok(CompactConv3x3::new(&weight, Some(&bias), cout, cin))
}

fn conv1x1(vb: VarBuilder, cin: usize, cout: usize) -> candle_core::Result<Conv1x1> {
    let weight = fetch(&vb, (cout, cin, 1, 1), "weight", DEFAULT_KAIMING_NORMAL)?;
    let bias = fetch(&vb, cout, "bias", bias_hint(cin))?;
    Ok(Conv1x1::new(&weight, &bias, cout, cin))
}

/// A `(c, c)` linear layer; older checkpoints store it as a `(c, c, 1, 1)` convolution.
fn linear(vb: VarBuilder, c: usize) -> candle_core::Result<Conv1x1> {
    let weight = match fetch(&vb, (c, c), "weight", DEFAULT_KAIMING_NORMAL) {
        Ok(weight) => weight,
        Err(_) => fetch(&vb, (c, c, 1, 1), "weight", DEFAULT_KAIMING_NORMAL)?,
    };
    let bias = fetch(&vb, c, "bias", bias_hint(c))?;
    Ok(Conv1x1::new(&weight, &bias, c, c))
}

fn group_norm(vb: VarBuilder, groups: usize, c: usize) -> candle_core::Result<GroupNorm> {
    let gamma = fetch(&vb, c, "weight", Init::Const(1.0))?;
    let beta = fetch(&vb, c, "bias", Init::Const(0.0))?;
    Ok(GroupNorm::new(&gamma, &beta, groups, VAE_NORM_EPS))
}

/// A diffusers `vae/` folder's config (checked) and a builder over its weights file (also
/// returned, for errors).
fn open_folder(
    dir: &Path,
    device: &Device,
) -> Result<(AutoencoderKlConfig, VarBuilder<'static>, std::path::PathBuf)> {
    let config_path = dir.join("config.json");
    let cfg: AutoencoderKlConfig = weights::read_config(&config_path)?;
    if let Some((key, message)) = cfg.unsupported() {
        return Err(ModelError::Config {
            path: config_path,
            key: key.to_string(),
            message,
        });
    }
    let weights_path = weights::find_weights(dir)?;
    let vb = weights::mmap_var_builder(std::slice::from_ref(&weights_path), device)?;
    Ok((cfg, vb, weights_path))
}

/// The mid block both halves share: resnet, attention (one head, all channels), resnet.
fn mid_block(
    vb: VarBuilder,
    groups: usize,
    c: usize,
) -> candle_core::Result<([Resnet; 2], Attention)> {
    let resnet = |i: usize| Resnet::new(vb.pp("resnets").pp(i), c, c, groups);
    let resnets = [resnet(0)?, resnet(1)?];
    let attn = vb.pp("attentions").pp("0");
    // diffusers renamed the attention's layers; both namings exist in checkpoints.
    let names = match attn.contains_tensor("to_q.weight") {
        true => ["to_q", "to_k", "to_v", "to_out.0"],
        false => ["query", "key", "value", "proj_attn"],
    };
    let attention = Attention::new(
        group_norm(attn.pp("group_norm"), groups, c)?,
        linear(attn.pp(names[0]), c)?,
        linear(attn.pp(names[1]), c)?,
        linear(attn.pp(names[2]), c)?,
        linear(attn.pp(names[3]), c)?,
    );
    Ok((resnets, attention))
}

fn plain(out: &mut Act) -> Sink<'_> {
    Sink::Act {
        out,
        skip: None,
        relu: false,
    }
}

impl VaeDecoder {
    /// Builds the decoder from weights with diffusers' names (`decoder.*`, `post_quant_conv.*`)
    /// at the root of `vb`. Encoder weights, if present, are never read.
    pub fn new(vb: VarBuilder, cfg: &AutoencoderKlConfig) -> Result<Self> {
        cfg.check()?;
        Ok(Self::build(vb, cfg)?)
    }

    fn build(vb: VarBuilder, cfg: &AutoencoderKlConfig) -> candle_core::Result<Self> {
        let groups = cfg.norm_num_groups;
        let channels = &cfg.block_out_channels;
        // Checked by `unsupported`: non-empty.
        let deepest = channels[channels.len() - 1];
        let post_quant_conv = if cfg.use_post_quant_conv {
            let c = cfg.latent_channels;
            Some(conv1x1(vb.pp("post_quant_conv"), c, c)?)
        } else {
            None
        };
        let vb = vb.pp("decoder");
        let conv_in = conv3x3(vb.pp("conv_in"), cfg.latent_channels, deepest)?;
        let (mid_resnets, mid_attention) = mid_block(vb.pp("mid_block"), groups, deepest)?;
        let mut up_blocks = Vec::with_capacity(channels.len());
        let mut in_channels = deepest;
        for (index, &out_channels) in channels.iter().rev().enumerate() {
            let vb = vb.pp("up_blocks").pp(index);
            let resnets = (0..cfg.layers_per_block + 1)
                .map(|i| {
                    let cin = if i == 0 { in_channels } else { out_channels };
                    Resnet::new(vb.pp("resnets").pp(i), cin, out_channels, groups)
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            let upsample = if index + 1 < channels.len() {
                let vb = vb.pp("upsamplers").pp("0").pp("conv");
                Some(conv3x3(vb, out_channels, out_channels)?)
            } else {
                None
            };
            up_blocks.push(UpBlock { resnets, upsample });
            in_channels = out_channels;
        }
        let conv_norm_out = group_norm(vb.pp("conv_norm_out"), groups, channels[0])?;
        let conv_out = conv3x3(vb.pp("conv_out"), channels[0], cfg.out_channels)?;
        let mut decoder = Self {
            post_quant_conv,
            conv_in,
            mid_resnets,
            mid_attention,
            up_blocks,
            conv_norm_out,
            conv_out,
            config: cfg.clone(),
            chain: Chain::default(),
            tiling: Tiling::default(),
        };
        decoder.chain = decoder.build_chain();
        Ok(decoder)
    }

    /// Loads a diffusers `vae/` folder: `config.json` and its safetensors weights (fp32 or
    /// fp16). Errors name the file at fault.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let (cfg, vb, weights_path) = open_folder(dir, device)?;
        Self::build(vb, &cfg).map_err(weights::in_file(&weights_path))
    }

    /// A decoder with random weights drawn from `seed` the way candle-nn initialises layers
    /// (`N(0, 1/fan_in)` weights, `U(+-1/sqrt(fan_in))` biases, GroupNorm 1 and 0): for
    /// benchmarks without a model file (the work does not depend on the weights).
    pub fn random(cfg: &AutoencoderKlConfig, seed: u64) -> Result<Self> {
        Self::new(
            crate::model::seeded::seeded_var_builder(seed, &Device::Cpu),
            cfg,
        )
    }

    /// Multiply-adds x 2 of one decode of `h x w` latents as direct convolutions and plain
    /// matrix products do them (the usual GFLOP count, to compare implementations).
    pub fn flops(&self, h: usize, w: usize) -> f64 {
        let conv3 = |conv: &CompactConv3x3, pixels: usize| {
            2.0 * 9.0 * (conv.in_channels() * conv.out_channels() * pixels) as f64
        };
        let resnet = |r: &Resnet, pixels: usize| {
            let shortcut = match &r.shortcut {
                Some(_) => 2.0 * (r.conv1.in_channels() * r.conv1.out_channels() * pixels) as f64,
                None => 0.0,
            };
            conv3(&r.conv1, pixels) + conv3(&r.conv2, pixels) + shortcut
        };
        let mut pixels = h * w;
        let c = self.conv_in.out_channels() as f64;
        let tokens = pixels as f64;
        // q, k, v, proj, then scores and their product with v.
        let attention = 2.0 * (4.0 * tokens * c * c + 2.0 * tokens * tokens * c);
        let mut total = conv3(&self.conv_in, pixels) + attention;
        total += self
            .mid_resnets
            .iter()
            .map(|r| resnet(r, pixels))
            .sum::<f64>();
        for block in &self.up_blocks {
            total += block.resnets.iter().map(|r| resnet(r, pixels)).sum::<f64>();
            if let Some(conv) = &block.upsample {
                pixels *= 4;
                total += conv3(conv, pixels);
            }
        }
        total + conv3(&self.conv_out, pixels)
    }

    /// The configuration the decoder was built with.
    pub fn config(&self) -> &AutoencoderKlConfig {
        &self.config
    }

    /// Image pixels per latent along each side (8 for SD's VAE).
    pub fn upscale_factor(&self) -> usize {
        self.config.upscale_factor()
    }

    /// How [`Self::decode`] and [`Self::decode_raw`] bound their memory ([`Tiling::Auto`]
    /// with half the machine's memory unless set).
    pub fn tiling(&self) -> Tiling {
        self.tiling
    }

    /// Sets how [`Self::decode`] and [`Self::decode_raw`] bound their memory.
    pub fn set_tiling(&mut self, tiling: Tiling) {
        self.tiling = tiling;
    }

    /// diffusers' `vae.decode(z).sample`: `z` (B, latent_channels, h, w) in the VAE's own
    /// latent space to an image (B, out_channels, h * f, w * f), nominally in [-1, 1]
    /// (not clamped). Runs on the CPU; the image is put on `z`'s device. Tiled when
    /// [`Self::tiling`] says so.
    pub fn decode_raw(&self, z: &Tensor) -> Result<Tensor> {
        self.decode_raw_with(z, self.tiling)
    }

    /// [`Self::decode_raw`] with the memory bounded as `tiling` says. A tiled decode gives
    /// the whole-image one's values (within float rounding, ~1e-6).
    pub fn decode_raw_with(&self, z: &Tensor, tiling: Tiling) -> Result<Tensor> {
        let (batch, c, h, w) = z.dims4()?;
        if c != self.config.latent_channels {
            return Err(ModelError::Invalid(format!(
                "VAE decode: latents have {c} channels, the VAE expects {}",
                self.config.latent_channels
            )));
        }
        if batch * h * w == 0 {
            return Err(ModelError::Invalid(format!(
                "VAE decode: empty latents {:?}",
                z.dims()
            )));
        }
        tiling.check()?;
        let plan = self.plan(h, w, tiling);
        let values = z
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        // One image at a time: the activations of a 512x512 image already take ~0.5 GB.
        let mut ws = Workspace::default();
        let f = self.upscale_factor();
        let image_len = self.config.out_channels * h * f * w * f;
        let mut images = vec![0f32; batch * image_len];
        for (latents, image) in values.chunks(c * h * w).zip(images.chunks_mut(image_len)) {
            match &plan.tiles {
                None => self.decode_one(latents, (h, w), image, &mut ws),
                Some(tiles) => self.decode_one_tiled(latents, (h, w), image, tiles, &mut ws),
            }
        }
        drop(ws);
        let shape = (batch, self.config.out_channels, h * f, w * f);
        Ok(Tensor::from_vec(images, shape, &Device::Cpu)?.to_device(z.device())?)
    }

    /// Decodes one image's latents (NCHW values) into `image` (NCHW), the whole image at
    /// once.
    fn decode_one(
        &self,
        latents: &[f32],
        (h, w): (usize, usize),
        image: &mut [f32],
        ws: &mut Workspace,
    ) {
        let chunked = h * w > steps::PLAIN_ATTENTION_TOKENS;
        let mut x = self.latent_level(latents, (h, w), chunked, ws);
        for &step in &self.chain.steps {
            x = match step {
                plan::Step::Out => {
                    self.run_out(x, None, image, ws);
                    return;
                }
                step => self.run_step(step, x, [None, None], ws),
            };
        }
    }

    /// [`Self::decode`] with the memory bounded as `tiling` says.
    pub fn decode_with(&self, latents: &Tensor, tiling: Tiling) -> Result<Tensor> {
        self.decode_raw_with(&self.unscale(latents)?, tiling)
    }

    /// Decodes latents of the diffusion model (what the sampler returns), as the SD pipeline
    /// does: `decode_raw(latents / scaling_factor + shift_factor)`. NCHW, nominally in [-1, 1].
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        self.decode_raw(&self.unscale(latents)?)
    }

    /// `latents / scaling_factor + shift_factor`: the diffusion model's latents in the
    /// VAE's own space.
    fn unscale(&self, latents: &Tensor) -> Result<Tensor> {
        let shift = self.config.shift_factor.unwrap_or(0.0);
        // A true division, as the pipeline's `latents / scaling_factor` (the reciprocal
        // multiply of `affine` can differ in the last bit).
        let scale = Tensor::new(self.config.scaling_factor as f32, latents.device())?
            .to_dtype(latents.dtype())?;
        let z = latents.broadcast_div(&scale)?;
        Ok(if shift != 0.0 { (z + shift)? } else { z })
    }
}
