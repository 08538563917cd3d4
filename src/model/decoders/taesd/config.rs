//! The `AutoencoderTiny` `config.json`, checked against what this decoder runs, and the
//! layer sequence it describes (the diffusers layer numbers weights are named by).

use serde::{Deserialize, Deserializer, Serialize};

/// An `AutoencoderTiny` `config.json` (diffusers names and defaults).
///
/// Only the decoder keys change what [`TaesdDecoder`] computes; the encoder and scaling keys
/// are kept so a config round-trips and callers can read them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TaesdConfig {
    /// Image channels the encoder takes.
    pub in_channels: usize,
    /// Image channels the decoder produces (3 for RGB).
    pub out_channels: usize,
    /// Channels of each encoder stage.
    pub encoder_block_out_channels: Vec<usize>,
    /// Channels of each decoder stage.
    pub decoder_block_out_channels: Vec<usize>,
    /// Activation; TAESD uses `relu` (the only one supported here).
    pub act_fn: String,
    /// Upsampling mode between decoder stages; `nearest` (the only one supported here).
    pub upsample_fn: String,
    /// Channels of the latents.
    pub latent_channels: usize,
    /// Upsampling factor between decoder stages.
    pub upsampling_scaling_factor: usize,
    /// Residual blocks of each encoder stage.
    pub num_encoder_blocks: Vec<usize>,
    /// Residual blocks of each decoder stage.
    pub num_decoder_blocks: Vec<usize>,
    /// Latent range used by `scale_latents` (not by decoding).
    pub latent_magnitude: f64,
    /// Latent shift used by `scale_latents` (not by decoding).
    pub latent_shift: f64,
    /// Whether pipelines should run the model in f32.
    pub force_upcast: bool,
    /// Latent scaling used by pipelines (decode itself does not apply it).
    pub scaling_factor: f64,
    /// Latent shift used by pipelines (decode itself does not apply it); `null` reads as 0.
    #[serde(deserialize_with = "null_as_zero")]
    pub shift_factor: f64,
}

fn null_as_zero<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(0.0))
}

impl Default for TaesdConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            encoder_block_out_channels: vec![64; 4],
            decoder_block_out_channels: vec![64; 4],
            act_fn: "relu".into(),
            upsample_fn: "nearest".into(),
            latent_channels: 4,
            upsampling_scaling_factor: 2,
            num_encoder_blocks: vec![1, 3, 3, 3],
            num_decoder_blocks: vec![3, 3, 3, 1],
            latent_magnitude: 3.0,
            latent_shift: 0.5,
            force_upcast: false,
            scaling_factor: 1.0,
            shift_factor: 0.0,
        }
    }
}

impl TaesdConfig {
    /// Checks that the decoder part describes a network diffusers can run and this
    /// decoder supports; the error is `(key, message)`.
    pub fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
        if self.act_fn != "relu" {
            return Err((
                "act_fn",
                format!("`{}` is not supported (only relu)", self.act_fn),
            ));
        }
        if self.upsample_fn != "nearest" {
            let message = format!("`{}` is not supported (only nearest)", self.upsample_fn);
            return Err(("upsample_fn", message));
        }
        if self.upsampling_scaling_factor == 0 {
            return Err(("upsampling_scaling_factor", "must be at least 1".into()));
        }
        if self.latent_channels == 0 {
            return Err(("latent_channels", "must be at least 1".into()));
        }
        if self.out_channels == 0 {
            return Err(("out_channels", "must be at least 1".into()));
        }
        let channels = &self.decoder_block_out_channels;
        if channels.is_empty() || channels.len() != self.num_decoder_blocks.len() {
            let message = format!(
                "{} stages, but num_decoder_blocks has {}",
                channels.len(),
                self.num_decoder_blocks.len()
            );
            return Err(("decoder_block_out_channels", message));
        }
        if channels.contains(&0) {
            return Err((
                "decoder_block_out_channels",
                "a stage has 0 channels".into(),
            ));
        }
        // DecoderTiny's conv between stages keeps the channel count, so diffusers itself
        // cannot run stages of different widths.
        if channels.windows(2).any(|w| w[0] != w[1]) {
            let message = format!("stages must all have the same width, got {channels:?}");
            return Err(("decoder_block_out_channels", message));
        }
        Ok(())
    }

    /// Image pixels per latent pixel along each side (8 for the default config).
    pub fn upscale_factor(&self) -> usize {
        let stages = self.decoder_block_out_channels.len().max(1) as u32;
        self.upsampling_scaling_factor.pow(stages - 1)
    }

    /// Every decoder tensor with its diffusers name and shape, in layer order.
    pub fn decoder_tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut shapes = Vec::new();
        let conv = |shapes: &mut Vec<(String, Vec<usize>)>, name: String, o, i, bias: bool| {
            shapes.push((format!("{name}.weight"), vec![o, i, 3, 3]));
            if bias {
                shapes.push((format!("{name}.bias"), vec![o]));
            }
        };
        for (index, layer) in self.layers().iter().enumerate() {
            let name = format!("decoder.layers.{index}");
            match *layer {
                LayerKind::Conv { cin, cout, bias } => conv(&mut shapes, name, cout, cin, bias),
                LayerKind::Block { channels } => {
                    for k in [0, 2, 4] {
                        conv(
                            &mut shapes,
                            format!("{name}.conv.{k}"),
                            channels,
                            channels,
                            true,
                        );
                    }
                }
                LayerKind::Relu | LayerKind::Upsample => {}
            }
        }
        shapes
    }

    /// The `DecoderTiny.layers` sequence, index = diffusers layer number.
    pub(super) fn layers(&self) -> Vec<LayerKind> {
        let channels = &self.decoder_block_out_channels;
        let mut layers = vec![
            LayerKind::Conv {
                cin: self.latent_channels,
                cout: channels.first().copied().unwrap_or(0),
                bias: true,
            },
            LayerKind::Relu,
        ];
        for (stage, (&width, &blocks)) in channels.iter().zip(&self.num_decoder_blocks).enumerate()
        {
            let last = stage + 1 == channels.len();
            layers.extend((0..blocks).map(|_| LayerKind::Block { channels: width }));
            if !last {
                layers.push(LayerKind::Upsample);
            }
            layers.push(LayerKind::Conv {
                cin: width,
                cout: if last { self.out_channels } else { width },
                bias: last,
            });
        }
        layers
    }
}

/// One entry of `DecoderTiny.layers`.
#[derive(Debug, Clone, Copy)]
pub(super) enum LayerKind {
    Conv { cin: usize, cout: usize, bias: bool },
    Relu,
    Block { channels: usize },
    Upsample,
}
