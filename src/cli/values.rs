//! clap's copies of the library's choice enums: clap stays at the edge, the core types carry
//! no `clap::ValueEnum`. Each maps into its library enum with `From`.

use crate::gpu::sample::SamplePrecision;
use crate::gpu::GpuDecode;
use crate::model::schedulers::PredictionType;
use crate::model::{DecoderKind, Fit};
use crate::upscale::UpscaleMode;
use crate::walk::{Easing, Interp, LoopMode};

/// Declares a clap value enum `$name` whose variants map one to one onto `$target`'s.
macro_rules! value_enum {
    ($(#[$meta:meta])* $name:ident => $target:ident {
        $($(#[$variant_meta:meta])* $variant:ident),+ $(,)?
    }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
        pub enum $name {
            $($(#[$variant_meta])* $variant),+
        }

        impl From<$name> for $target {
            fn from(value: $name) -> Self {
                match value {
                    $($name::$variant => $target::$variant),+
                }
            }
        }
    };
}

value_enum! {
    /// How an image keyframe of another shape meets the source size.
    FitArg => Fit {
        /// Scale to cover the frame, cut the centre out.
        Crop,
        /// Scale to fit inside the frame, grey bars on the sides.
        Pad,
    }
}

value_enum! {
    /// How latents are interpolated between two keyframes.
    InterpArg => Interp {
        /// Spherical: keeps the latents' norm, so mid-walk images stay as sharp as the ends.
        Slerp,
        /// Straight line: mid-walk latents shrink toward zero and images wash out.
        Lerp,
    }
}

value_enum! {
    /// How walk time is spent inside each keyframe pair.
    EasingArg => Easing {
        Linear,
        /// Slow near each keyframe, fast in between (half a cosine).
        InOut,
    }
}

value_enum! {
    /// What happens at the end of the path.
    LoopArg => LoopMode {
        /// Play the path once and stop.
        Once,
        /// Forward, backward, forward...
        #[value(name = "pingpong")]
        PingPong,
        /// Around the keyframes in a circle (last back to first).
        Endless,
    }
}

value_enum! {
    /// Which network turns latents into pixels.
    DecoderArg => DecoderKind {
        /// The tiny autoencoder: about 100x less work than the full VAE, a little softer.
        Taesd,
        /// The model's own AutoencoderKL: the reference quality.
        Vae,
    }
}

value_enum! {
    /// Where frames are brought to the output size.
    UpscaleArg => UpscaleMode {
        /// Frames stay at the decoded (source) size.
        None,
        /// Bicubic on the CPU worker pool.
        Cpu,
        /// On the GPU (the viewer's present shader).
        Gpu,
    }
}

value_enum! {
    /// Where TAESD decodes.
    GpuDecodeArg => GpuDecode {
        /// On a hardware adapter; on a software one (lavapipe, llvmpipe) the CPU is faster.
        Auto,
        /// Whenever there is an adapter, software ones included.
        On,
        /// Always on the CPU.
        Off,
    }
}

value_enum! {
    /// What the GPU sampler stores its weight matrices in.
    GpuPrecisionArg => SamplePrecision {
        /// f32 until f16 is measured within the fixtures' tolerances (it is not yet).
        Auto,
        /// f32: the results within 1e-4 of diffusers'.
        F32,
        /// f16 weights (adapters with shader-f16): half the memory and bandwidth; keyframes
        /// differ from f32's by a few 1e-2 in latents, about 1/255 in pictures.
        F16,
    }
}

value_enum! {
    /// What a single-file checkpoint's UNet predicts.
    PredictionArg => PredictionType {
        /// The added noise: SD 1.x, SD 2.x base (512 px), SD-Turbo.
        Epsilon,
        /// The velocity: SD 2.x 768 px models.
        #[value(name = "v")]
        VPrediction,
    }
}

/// How `upscale` cuts the latent into tiles (`--tile` and `--tile-overlap` size them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TilingArg {
    /// Overlapping tiles whose predictions are blended every step (no seams).
    Blended,
    /// Four non-overlapping quadrants, each denoised on its own (seams show).
    Quadrants,
    /// The whole picture at once (memory grows with its size).
    None,
}

impl TilingArg {
    /// The library's tiling: `tile` and `overlap` (latent pixels) size blended tiles.
    pub fn tiling(self, tile: usize, overlap: usize) -> crate::model::tiled::Tiling {
        use crate::model::tiled::Tiling;
        match self {
            TilingArg::Blended => Tiling::Blended { tile, overlap },
            TilingArg::Quadrants => Tiling::Quadrants,
            TilingArg::None => Tiling::Whole,
        }
    }
}
