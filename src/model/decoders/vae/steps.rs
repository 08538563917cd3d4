//! The decoder's parts as both decodes run them: the latent level (everything before the
//! first upsampler, always on the whole latent map), and the steps after it, on the whole
//! image or on a tile with the whole image's GroupNorm statistics.

use super::plan::{Chain, Step};
use super::{plain, Resnet, VaeDecoder, Workspace};
use crate::model::kernels::{padded, Act, ConvShape, GroupNorm, GroupStats, Sink};

/// Tokens up to which the mid block's attention holds q, k and v of the whole image and
/// takes full rows of scores (fastest there); above, it runs in chunks with an online
/// softmax (128x128 latents: 16384 tokens).
pub(super) const PLAIN_ATTENTION_TOKENS: usize = 16384;

impl VaeDecoder {
    /// The steps after the latent level, with their sizes and work.
    pub(super) fn build_chain(&self) -> Chain {
        let mut chain = Chain::default();
        let mut scale = 1;
        let mut channels = self.conv_in.out_channels_padded();
        let push = |chain: &mut Chain, step, scale, cin, cout, work, half| {
            chain.steps.push(step);
            chain.scale.push(scale);
            chain.channels.push(cin);
            chain.out_channels.push(cout);
            chain.work.push(work);
            chain.first_half_work.push(half);
        };
        for (block, up) in self.up_blocks.iter().enumerate() {
            // Block 0's resnets are the latent level's.
            if block > 0 {
                for (index, resnet) in up.resnets.iter().enumerate() {
                    let cout = resnet.conv1.out_channels_padded();
                    let pixels = (scale * scale) as f64;
                    let half = 2.0
                        * 9.0
                        * (resnet.conv1.in_channels() * resnet.conv1.out_channels()) as f64;
                    let step = Step::Resnet { block, index };
                    let work = resnet.flops_per_pixel() * pixels;
                    push(&mut chain, step, scale, channels, cout, work, half * pixels);
                    channels = cout;
                }
            }
            if let Some(conv) = &up.upsample {
                let out_pixels = (4 * scale * scale) as f64;
                let work =
                    2.0 * 9.0 * (conv.in_channels() * conv.out_channels()) as f64 * out_pixels;
                let cout = conv.out_channels_padded();
                push(
                    &mut chain,
                    Step::Upsample { block },
                    scale,
                    channels,
                    cout,
                    work,
                    0.0,
                );
                channels = cout;
                scale *= 2;
            }
        }
        let pixels = (scale * scale) as f64;
        let work = 2.0 * 9.0 * (self.conv_out.in_channels() * self.conv_out.out_channels()) as f64;
        let cout = self.conv_out.out_channels_padded();
        push(
            &mut chain,
            Step::Out,
            scale,
            channels,
            cout,
            work * pixels,
            0.0,
        );
        chain.scale.push(scale);
        chain
    }

    /// The stream just before the first upsampler (the whole latent level: post_quant_conv,
    /// conv_in, the mid block, up block 0's resnets) of one image's latents (NCHW values).
    /// `chunked`: the attention holds only the stream, k and v for the whole image.
    pub(super) fn latent_level(
        &self,
        latents: &[f32],
        (h, w): (usize, usize),
        chunked: bool,
        ws: &mut Workspace,
    ) -> Act {
        let c = self.config.latent_channels;
        let mut x = Act::from_nchw(
            ws.pool.take(h * w * padded(c)),
            latents,
            (1, c, h, w),
            |v| v,
        );
        if let Some(conv) = &self.post_quant_conv {
            let mut y = Act::reuse(
                ws.pool.take(x.data.len()),
                1,
                h,
                w,
                conv.out_channels_padded(),
            );
            conv.forward(&x, &mut y);
            ws.pool.give(std::mem::replace(&mut x, y).into_buffer());
        }
        let cp = self.conv_in.out_channels_padded();
        let mut y = Act::reuse(ws.pool.take(h * w * cp), 1, h, w, cp);
        self.conv_in.forward(&x, 1, plain(&mut y), &mut ws.winograd);
        ws.pool.give(std::mem::replace(&mut x, y).into_buffer());

        let [resnet0, resnet1] = &self.mid_resnets;
        x = resnet0.forward(x, ws);
        match chunked {
            true => self.mid_attention.forward_chunked(&mut x, &mut ws.pool),
            false => self.mid_attention.forward(&mut x, &mut ws.pool),
        }
        x = resnet1.forward(x, ws);
        for resnet in &self.up_blocks[0].resnets {
            x = resnet.forward(x, ws);
        }
        x
    }

    pub(super) fn resnet(&self, step: Step) -> &Resnet {
        match step {
            Step::Resnet { block, index } => &self.up_blocks[block].resnets[index],
            other => unreachable!("{other:?} is not a resnet"),
        }
    }

    /// The GroupNorm that reads the input of `step` (`middle`: a resnet's `norm2`).
    pub(super) fn norm_at(&self, step: Step, middle: bool) -> &GroupNorm {
        match (step, middle) {
            (Step::Out, false) => &self.conv_norm_out,
            (Step::Resnet { .. }, false) => &self.resnet(step).norm1,
            (Step::Resnet { .. }, true) => &self.resnet(step).norm2,
            other => unreachable!("no GroupNorm at {other:?}"),
        }
    }

    /// Runs `step` (not `Out`) on `x`, the whole map or a tile of it; a resnet's GroupNorms
    /// use `stats` where given, else `x`'s own.
    pub(super) fn run_step(
        &self,
        step: Step,
        x: Act,
        stats: [Option<&GroupStats>; 2],
        ws: &mut Workspace,
    ) -> Act {
        match step {
            Step::Upsample { block } => {
                let conv = self.up_blocks[block]
                    .upsample
                    .as_ref()
                    .expect("an Upsample step has its conv");
                let (oh, ow, cp) = (x.h * 2, x.w * 2, conv.out_channels_padded());
                let mut y = Act::reuse(ws.pool.take(oh * ow * cp), 1, oh, ow, cp);
                conv.forward(&x, 2, plain(&mut y), &mut ws.winograd);
                ws.pool.give(x.into_buffer());
                y
            }
            Step::Resnet { .. } => {
                let resnet = self.resnet(step);
                let (skip, h1) = resnet.first_half(x, stats[0], ws);
                resnet.second_half(skip, h1, stats[1], ws)
            }
            Step::Out => unreachable!("Out makes the image: run_out"),
        }
    }

    /// `conv_out(silu(conv_norm_out(x)))` into `planes` (NCHW, `x`'s size), the norm with
    /// `stats` where given.
    pub(super) fn run_out(
        &self,
        mut x: Act,
        stats: Option<&GroupStats>,
        planes: &mut [f32],
        ws: &mut Workspace,
    ) {
        self.conv_norm_out
            .forward_in_place_with(&mut x, stats, true);
        self.conv_out
            .forward(&x, 1, Sink::Planes { out: planes }, &mut ws.winograd);
        ws.pool.give(x.into_buffer());
    }
}
