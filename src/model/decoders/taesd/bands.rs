//! TAESD by row bands, for images whose whole-image activations would not fit a memory
//! budget (a 4K image's three 64-channel maps take 6.4 GB).
//!
//! TAESD has no normalization, so each band of latent rows decodes on its own: it is cut
//! from the latents with a halo as deep as its receptive field (each 3x3 convolution reads
//! one row around, an upsampler's convolution half a source row), cropped again before
//! every step so no row outside what the band's own output needs is computed, and its own
//! rows of the output are copied into the image. The values are the whole-image decode's:
//! every output row sees exactly the inputs it sees there (zero padding only at the image's
//! edges). Memory is set by the band: its rows times the image's width.

use candle_core::Tensor;

use super::{relu_into, TaesdDecoder};
use crate::model::decoders::tiling::{split, Tiling};
use crate::model::kernels::{Act, ConvShape, Rect, Sink};
use crate::model::Result;

/// Band heights tried for [`Tiling::Auto`], largest first (latent rows): tall bands waste
/// less work on their halos.
const AUTO_BANDS: [usize; 8] = [128, 96, 64, 48, 32, 24, 16, 8];

/// One step of the decoder, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// `layers.0` and its ReLU.
    First,
    /// A residual block of three convolutions.
    Block { stage: usize, index: usize },
    /// A stage's own convolution: after the nearest upsampling for all but the last stage,
    /// whose convolution makes the image.
    StageConv { stage: usize },
}

/// Where a banded decode writes: diffusers' f32 planes (`x * 2 - 1`) or RGBA8.
pub(super) enum BandOutput<'a> {
    /// One image's NCHW planes.
    Image(&'a mut [f32]),
    /// One image's RGBA rows.
    Rgba(&'a mut [u8]),
}

impl TaesdDecoder {
    /// How a decode of `h x w` latents (one image) runs under `tiling`: `None` for the
    /// whole image at once, else the band height in latent rows.
    pub fn bands(&self, h: usize, w: usize, tiling: Tiling) -> Option<usize> {
        match tiling {
            Tiling::Off => None,
            Tiling::Tiles { tile, .. } => Some(tile.max(1)),
            Tiling::Auto { budget_bytes } if self.whole_image_bytes(h, w) <= budget_bytes => None,
            Tiling::Auto { budget_bytes } => {
                let image = self.image_bytes(h, w);
                let band = AUTO_BANDS
                    .into_iter()
                    .filter(|&band| band < h)
                    .find(|&band| image + self.band_bytes(band, w) <= budget_bytes);
                Some(band.unwrap_or(AUTO_BANDS[AUTO_BANDS.len() - 1].min(h)))
            }
        }
    }

    /// The whole-image decode's largest activations of one `h x w`-latent image, bytes
    /// (estimated from the layer sizes): three maps at the last stage's size, and the image.
    pub fn whole_image_bytes(&self, h: usize, w: usize) -> u64 {
        let f = self.upscale_factor();
        let c = self.first.out_channels_padded();
        (3 * h * f * w * f * c * 4) as u64 + self.image_bytes(h, w)
    }

    /// The largest activations one band of `band` latent rows holds, bytes: at each step,
    /// the input (and the previous step's output while it is cropped) and two more maps.
    pub fn band_bytes(&self, band: usize, w: usize) -> u64 {
        // A band with room above and below: the halo is never cut by the image's edge.
        let margin = 64;
        let regions = self.band_regions((margin, margin + band), band + 2 * margin);
        let steps = self.steps();
        let c = self.first.out_channels_padded() as u64;
        let scale = |s: usize| self.step_scale(steps[s]) as u64;
        let mut peak = 0;
        for (s, &(y0, y1)) in regions.iter().enumerate() {
            let px = (y1 - y0) as u64 * w as u64 * scale(s);
            let before = match s {
                0 => 0,
                _ => (regions[s - 1].1 - regions[s - 1].0) as u64 * w as u64 * scale(s - 1),
            };
            let grow = match steps[s] {
                Step::StageConv { stage } if stage + 1 < self.stages.len() => {
                    let u = self.config.upsampling_scaling_factor as u64;
                    u * u
                }
                _ => 2,
            };
            peak = peak.max((px * c + before * c + grow * px * c) * 4);
        }
        peak
    }

    /// Decodes `latents` (B, C, h, w) in bands of `band` latent rows into one output per
    /// batch row.
    pub(super) fn run_bands(
        &self,
        latents: &Tensor,
        band: usize,
        mut outputs: Vec<BandOutput<'_>>,
    ) -> Result<()> {
        let (n, h, w) = self.check_latents(latents)?;
        let values = latents
            .to_device(&candle_core::Device::Cpu)?
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let c = self.config.latent_channels;
        let mut pool = std::mem::take(&mut *self.buffers.lock());
        for (image, output) in values.chunks(c * h * w).zip(&mut outputs).take(n) {
            for (y0, y1) in split(h, band) {
                self.decode_band(image, (h, w), (y0, y1), output, &mut pool);
            }
        }
        self.buffers.lock().extend(pool);
        Ok(())
    }

    /// The steps in order.
    fn steps(&self) -> Vec<Step> {
        let mut steps = vec![Step::First];
        for (stage, s) in self.stages.iter().enumerate() {
            steps.extend((0..s.blocks.len()).map(|index| Step::Block { stage, index }));
            steps.push(Step::StageConv { stage });
        }
        steps
    }

    /// Image rows per latent row at a step's input.
    fn step_scale(&self, step: Step) -> usize {
        let u = self.config.upsampling_scaling_factor;
        match step {
            Step::First => 1,
            Step::Block { stage, .. } | Step::StageConv { stage } => u.pow(stage as u32),
        }
    }

    /// The rows of each step's input (in that step's map) a band needs so that its own
    /// output rows (latent rows `owned` scaled) are right, for `h` latent rows.
    fn band_regions(&self, owned: (usize, usize), h: usize) -> Vec<(usize, usize)> {
        let steps = self.steps();
        let u = self.config.upsampling_scaling_factor;
        let len = |s: usize| h * self.step_scale(steps[s]);
        let grow = |(a, b): (usize, usize), by: usize, len: usize| {
            (a.saturating_sub(by), (b + by).min(len))
        };
        let f = self.upscale_factor();
        let last = steps.len() - 1;
        let mut regions = vec![(0, 0); steps.len()];
        // The last convolution reads a row around each output row.
        regions[last] = grow((owned.0 * f, owned.1 * f), 1, len(last));
        for s in (0..last).rev() {
            let need = regions[s + 1];
            regions[s] = match steps[s] {
                Step::First => grow(need, 1, len(s)),
                Step::Block { .. } => grow(need, 3, len(s)),
                // Nearest x u then a 3x3 convolution: output rows a..b read upsampled rows
                // a-1..b+1, i.e. source rows (a-1)/u up to (b+1)/u rounded up.
                Step::StageConv { .. } => (
                    need.0.saturating_sub(1) / u,
                    (need.1 + 1).min(len(s) * u).div_ceil(u),
                ),
            };
        }
        regions
    }

    /// Decodes latent rows `owned` of one image (NCHW values) into their rows of `output`.
    fn decode_band(
        &self,
        latents: &[f32],
        (h, w): (usize, usize),
        owned: (usize, usize),
        output: &mut BandOutput<'_>,
        pool: &mut Vec<Vec<f32>>,
    ) {
        let steps = self.steps();
        let regions = self.band_regions(owned, h);
        let u = self.config.upsampling_scaling_factor;
        let mut take = || pool.pop().unwrap_or_default();
        // The band's latent rows, soft-clamped as `DecoderTiny.forward` does.
        let c = self.config.latent_channels;
        let (r0, r1) = regions[0];
        let mut rows = Vec::with_capacity(c * (r1 - r0) * w);
        for plane in latents.chunks(h * w) {
            rows.extend_from_slice(&plane[r0 * w..r1 * w]);
        }
        let input = Act::from_nchw(take(), &rows, (1, c, r1 - r0, w), |x| {
            (x / 3.0).tanh() * 3.0
        });
        let cp = self.first.out_channels_padded();
        let mut x = Act::reuse(take(), 1, r1 - r0, w, cp);
        self.first.forward(&input, 1, relu_into(&mut x));
        let mut spare = vec![input.into_buffer()];
        // The rows of its map `x` holds.
        let mut at = (r0, r1);
        for (s, &step) in steps.iter().enumerate().skip(1) {
            let need = regions[s];
            if need != at {
                let rect = Rect {
                    y0: need.0 - at.0,
                    y1: need.1 - at.0,
                    x0: 0,
                    x1: x.w,
                };
                let cropped = x.crop(rect, spare.pop().unwrap_or_else(&mut take));
                spare.push(std::mem::replace(&mut x, cropped).into_buffer());
                at = need;
            }
            let mut buffer = || spare.pop().unwrap_or_else(&mut take);
            match step {
                Step::First => unreachable!("the first step ran above"),
                Step::Block { stage, index } => {
                    let [conv0, conv2, conv4] = &self.stages[stage].blocks[index];
                    let (hh, ww, cc) = (x.h, x.w, x.c);
                    let mut t1 = Act::reuse(buffer(), 1, hh, ww, cc);
                    let mut t2 = Act::reuse(buffer(), 1, hh, ww, cc);
                    conv0.forward(&x, 1, relu_into(&mut t1));
                    conv2.forward(&t1, 1, relu_into(&mut t2));
                    let sink = Sink::Act {
                        out: &mut t1,
                        skip: Some(&x),
                        relu: true,
                    };
                    conv4.forward(&t2, 1, sink);
                    spare.push(std::mem::replace(&mut x, t1).into_buffer());
                    spare.push(t2.into_buffer());
                }
                Step::StageConv { stage } if stage + 1 < self.stages.len() => {
                    let conv = &self.stages[stage].conv;
                    let cp = conv.out_channels_padded();
                    let mut y = Act::reuse(buffer(), 1, x.h * u, x.w * u, cp);
                    let sink = Sink::Act {
                        out: &mut y,
                        skip: None,
                        relu: false,
                    };
                    conv.forward(&x, u, sink);
                    spare.push(std::mem::replace(&mut x, y).into_buffer());
                    at = (at.0 * u, at.1 * u);
                }
                Step::StageConv { stage } => {
                    let conv = &self.stages[stage].conv;
                    let f = self.upscale_factor();
                    let (first, count) = (owned.0 * f - at.0, (owned.1 - owned.0) * f);
                    write_rows(
                        conv,
                        &x,
                        output,
                        (owned.0 * f, first, count),
                        h * f,
                        &mut spare,
                    );
                }
            }
        }
        pool.push(x.into_buffer());
        pool.extend(spare);
    }

    /// The decoded image's bytes as f32 planes (the larger of the two outputs).
    fn image_bytes(&self, h: usize, w: usize) -> u64 {
        let f = self.upscale_factor();
        (self.config.out_channels * h * f * w * f * 4) as u64
    }
}

/// Runs the last convolution on the band `x` into a band-sized output, then copies its rows
/// `first..first + count` to rows `at..` of the image (`image_h` rows).
fn write_rows(
    conv: &crate::model::kernels::Conv3x3,
    x: &Act,
    output: &mut BandOutput<'_>,
    (at, first, count): (usize, usize, usize),
    image_h: usize,
    spare: &mut Vec<Vec<f32>>,
) {
    let (bh, bw) = (x.h, x.w);
    match output {
        BandOutput::Image(image) => {
            let cout = conv.out_channels();
            let mut planes = spare.pop().unwrap_or_default();
            planes.resize(cout * bh * bw, 0.0);
            conv.forward(x, 1, Sink::Image { out: &mut planes });
            for ch in 0..cout {
                let from = &planes[(ch * bh + first) * bw..][..count * bw];
                image[(ch * image_h + at) * bw..][..count * bw].copy_from_slice(from);
            }
            spare.push(planes);
        }
        BandOutput::Rgba(image) => {
            let mut band = vec![Vec::new()];
            conv.forward(x, 1, Sink::Rgba { out: &mut band });
            let from = &band[0][first * bw * 4..][..count * bw * 4];
            image[at * bw * 4..][..count * bw * 4].copy_from_slice(from);
        }
    }
}
