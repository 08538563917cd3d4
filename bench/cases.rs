//! The bench's cases. Each case's name is written once, in its `#[value(name)]`: the
//! command line, the child protocol, the JSON and the table all go through [`Case::name`].

use clap::ValueEnum;
use dreamwalk::model::Tiling;

/// What one bench case measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum)]
pub enum Case {
    /// TAESD decode, 72x128 latents -> 576x1024, f32 (vs PyTorch `AutoencoderTiny.decode`).
    #[value(name = "taesd_72x128")]
    Taesd72x128,
    /// TAESD decode, 64x64 latents -> 512x512.
    #[value(name = "taesd_64x64")]
    Taesd64x64,
    /// AutoencoderKL (SD 1.5 config) decode, 64x64 latents -> 512x512, with peak memory.
    #[value(name = "sdvae_64x64")]
    Sdvae64x64,
    /// AutoencoderKL (SD 1.5 config) decode, 72x128 latents -> 576x1024 (slow; not run
    /// unless asked for).
    #[value(name = "sdvae_72x128")]
    Sdvae72x128,
    /// AutoencoderKL (SD 1.5 config) decode of 270x480 latents (a 3840x2160 image) by
    /// tiles, within a budget of 2.5 GiB of activations (target: peak RSS ≤ 3 GiB), vs
    /// PyTorch's untiled `AutoencoderKL.decode` of the same (`bench/time_vae_untiled.py`,
    /// which fails where it would need more than half the machine's memory). Slow (the
    /// GroupNorms' statistics take passes over the tiles): not run unless asked for.
    #[value(name = "sdvae_270x480_tiled")]
    Sdvae270x480Tiled,
    /// The same at 135x240 latents (1920x1080): beside the 4K case, the peak stays within
    /// the budget whatever the image; the time is what grows.
    #[value(name = "sdvae_135x240_tiled")]
    Sdvae135x240Tiled,
    /// The post-decode path: 3 in-betweens + bicubic 1024x576 -> 3840x2160, through the
    /// real pipeline fed pre-made decoded frames (vs the original app's numpy + OpenCV).
    #[value(name = "4k_path")]
    FourKPath,
    /// Peak RSS of `dreamwalk render` of 4K frames on the demo model, for each of
    /// `--rss-frames` frame counts: it must not grow with the length (the longest render's
    /// second half peaks within two 4K frames of its first half).
    #[value(name = "render_rss")]
    RenderRss,
    /// TAESD on the GPU (WGSL, the viewer's decoder on a hardware adapter): `--gpu-latent`
    /// latents (default 72x128 -> 576x1024) decoded into the upscaler's source texture,
    /// in decodes/s (target ≥ 30). Not run unless asked for: on a software adapter it takes
    /// minutes per decode.
    #[value(name = "gpu_taesd")]
    GpuTaesd,
    /// The viewer's GPU present: upload a 1024x576 frame and bicubic it to 3840x2160 in the
    /// WGSL shader, in frames/s (target ≥ 60). Not run unless asked for.
    #[value(name = "gpu_4k")]
    Gpu4k,
    /// The viewer's whole GPU path per decoded frame: TAESD into a frame that stays on the
    /// GPU, then its 3 in-betweens and itself drawn to 3840x2160 by the present shader
    /// (blending as it reads), nothing read back; in shown frames/s (target ≥ 60). Not run
    /// unless asked for.
    #[value(name = "gpu_walk")]
    GpuWalk,
    /// One SD-Turbo / SD 2.1 UNet call (865M parameters, linear projections, 1024-wide
    /// context), batch 1, 64x64 latents (512x512), seeded random weights at the real size
    /// (vs `time_unet.py`). Not run unless asked for.
    #[value(name = "unet_turbo_64x64")]
    UnetTurbo64x64,
    /// The same at 72x128 latents (576x1024, the original app's size).
    #[value(name = "unet_turbo_72x128")]
    UnetTurbo72x128,
    /// One SD 1.5 UNet call with guidance (batch 2: both halves in one call), 64x64.
    #[value(name = "unet_sd15_64x64_cfg")]
    UnetSd1564x64Cfg,
    /// The same at 72x128 latents.
    #[value(name = "unet_sd15_72x128_cfg")]
    UnetSd1572x128Cfg,
    /// The SD 2.x text encoder (OpenCLIP ViT-H text, 23 layers, 1024 wide), 77 tokens.
    #[value(name = "clip_sd2")]
    ClipSd2,
    /// The SD 1.5 text encoder (CLIP ViT-L/14 text, 12 layers, 768 wide), 77 tokens.
    #[value(name = "clip_sd15")]
    ClipSd15,
    /// The SD x4 upscaler at full size (seeded random weights) on a 540x960 picture: one
    /// denoising step over blended tiles of 128, then the 4x decode to 2160x3840 by tiles
    /// (target: peak RSS ≤ 6 GiB). No reference: diffusers' pipeline cannot run the
    /// untiled 540x960 latent here. Slow (tens of minutes): not run unless asked for.
    #[value(name = "x4_540x960")]
    X4_540x960,
    /// The same on a 270x480 picture (to 1080x1920): beside the 4K case, the peak follows
    /// the tile, not the picture.
    #[value(name = "x4_270x480")]
    X4_270x480,
    /// One SD-Turbo UNet call on the GPU (WGSL, `gpu::sample`), batch 1, 64x64 latents,
    /// seeded weights at the real size: ms, and the fraction of the adapter's f32 peak
    /// (measured by the case). On a software adapter: 8x8 latents, not judged. Not run
    /// unless asked for.
    #[value(name = "gpu_unet_turbo_64x64")]
    GpuUnetTurbo64x64,
    /// One SD 1.5 UNet call with guidance (batch 2) on the GPU, 64x64 (target ≤ 40 ms on a
    /// current GPU).
    #[value(name = "gpu_unet_sd15_64x64_cfg")]
    GpuUnetSd1564x64Cfg,
    /// The SD 1.5 text encoder (CLIP ViT-L/14 text) on the GPU, 77 tokens.
    #[value(name = "gpu_clip")]
    GpuClip,
    /// A whole SD-Turbo keyframe on the GPU: text encoder, one Euler step, TAESD decode to
    /// 512x512 (target ≤ 60 ms on a current GPU).
    #[value(name = "gpu_keyframe_turbo")]
    GpuKeyframeTurbo,
}

/// What a keyframe case runs: the UNet or the text encoder of a family, at a batch and
/// latent size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyframeWork {
    pub unet: bool,
    /// SD 2.x / Turbo (true) or SD 1.5.
    pub sd2: bool,
    pub batch: usize,
    /// Latent (h, w) of a UNet case.
    pub latent_hw: (usize, usize),
}

/// The cases run when `--cases` is not given.
pub const DEFAULT_CASES: [Case; 5] = [
    Case::Taesd72x128,
    Case::Taesd64x64,
    Case::Sdvae64x64,
    Case::FourKPath,
    Case::RenderRss,
];

impl Case {
    /// The case's name on the command line, in the JSON and in the table.
    pub fn name(self) -> String {
        self.to_possible_value()
            .expect("no case is skipped by clap")
            .get_name()
            .to_string()
    }

    /// Latent (h, w) of a decoder case.
    pub fn latent_hw(self) -> Option<(usize, usize)> {
        match self {
            Case::Taesd72x128 | Case::Sdvae72x128 => Some((72, 128)),
            Case::Taesd64x64 | Case::Sdvae64x64 => Some((64, 64)),
            Case::Sdvae270x480Tiled => Some((270, 480)),
            Case::Sdvae135x240Tiled => Some((135, 240)),
            _ => None,
        }
    }

    /// How a VAE case bounds its decode's memory: the tiled cases as the app does past
    /// its budget, with a budget of 2.5 GiB of activations (the weights and the process
    /// add ~0.2 GiB: the target is 3 GiB of RSS); the others as the app does by default.
    pub fn vae_tiling(self) -> Tiling {
        match self {
            Case::Sdvae270x480Tiled | Case::Sdvae135x240Tiled => Tiling::Auto {
                budget_bytes: 5 << 29,
            },
            _ => Tiling::default(),
        }
    }

    /// Picture (h, w) of an x4 upscaler case.
    pub fn x4_hw(self) -> Option<(usize, usize)> {
        match self {
            Case::X4_540x960 => Some((540, 960)),
            Case::X4_270x480 => Some((270, 480)),
            _ => None,
        }
    }

    /// The VAE cases decoded by tiles (the reference is `bench/time_vae_untiled.py`).
    pub fn is_tiled_vae(self) -> bool {
        matches!(self, Case::Sdvae270x480Tiled | Case::Sdvae135x240Tiled)
    }

    /// What a keyframe case (UNet, text encoder) runs.
    pub fn keyframe_work(self) -> Option<KeyframeWork> {
        let unet = |sd2, batch, latent_hw| KeyframeWork {
            unet: true,
            sd2,
            batch,
            latent_hw,
        };
        let clip = |sd2| KeyframeWork {
            unet: false,
            sd2,
            batch: 1,
            latent_hw: (0, 0),
        };
        Some(match self {
            Case::UnetTurbo64x64 => unet(true, 1, (64, 64)),
            Case::UnetTurbo72x128 => unet(true, 1, (72, 128)),
            Case::UnetSd1564x64Cfg => unet(false, 2, (64, 64)),
            Case::UnetSd1572x128Cfg => unet(false, 2, (72, 128)),
            Case::ClipSd2 => clip(true),
            Case::ClipSd15 => clip(false),
            _ => return None,
        })
    }

    /// The GPU sampling cases (`gpu::sample`).
    pub fn is_gpu_sampling(self) -> bool {
        matches!(
            self,
            Case::GpuUnetTurbo64x64
                | Case::GpuUnetSd1564x64Cfg
                | Case::GpuClip
                | Case::GpuKeyframeTurbo
        )
    }

    /// The cases on the GPU, judged against a rate rather than a reference.
    pub fn is_gpu(self) -> bool {
        matches!(self, Case::GpuTaesd | Case::Gpu4k | Case::GpuWalk)
    }

    /// The full VAE's cases (judged on peak RSS too).
    pub fn is_sdvae(self) -> bool {
        matches!(
            self,
            Case::Sdvae64x64
                | Case::Sdvae72x128
                | Case::Sdvae270x480Tiled
                | Case::Sdvae135x240Tiled
        )
    }

    /// (warm-ups, timed runs) unless `--warmup` / `--runs` say otherwise.
    pub fn default_runs(self) -> (usize, usize) {
        match self {
            Case::Taesd72x128 | Case::Taesd64x64 => (1, 5),
            Case::Sdvae64x64 | Case::Sdvae72x128 => (1, 3),
            Case::Sdvae270x480Tiled | Case::Sdvae135x240Tiled => (0, 1),
            Case::FourKPath => (1, 5),
            Case::RenderRss => (0, 1),
            Case::GpuTaesd => (2, 10),
            Case::Gpu4k => (5, 60),
            Case::GpuWalk => (2, 15),
            Case::UnetTurbo64x64 | Case::UnetTurbo72x128 => (1, 3),
            Case::UnetSd1564x64Cfg | Case::UnetSd1572x128Cfg => (1, 3),
            Case::ClipSd2 | Case::ClipSd15 => (1, 5),
            Case::X4_540x960 | Case::X4_270x480 => (0, 1),
            Case::GpuUnetTurbo64x64
            | Case::GpuUnetSd1564x64Cfg
            | Case::GpuClip
            | Case::GpuKeyframeTurbo => (2, 10),
        }
    }
}

impl std::fmt::Display for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// A case is written by its name.
impl serde::Serialize for Case {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.name())
    }
}

/// A case is read from its name.
impl<'de> serde::Deserialize<'de> for Case {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Case::from_str(&name, false)
            .map_err(|_| serde::de::Error::custom(format!("unknown bench case `{name}`")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_go_through_serde_both_ways() {
        for &case in Case::value_variants() {
            let json = serde_json::to_string(&case).unwrap();
            assert_eq!(json, format!("\"{}\"", case.name()));
            assert_eq!(serde_json::from_str::<Case>(&json).unwrap(), case);
        }
        assert_eq!(Case::FourKPath.name(), "4k_path");
    }
}
