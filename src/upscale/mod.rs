//! CPU upscaling of frames to the output size.
//!
//! Bicubic is fast_image_resize's `CatmullRom` convolution: Catmull-Rom, a = -0.5 (OpenCV's
//! INTER_CUBIC uses a = -0.75, a little sharper with more ringing). At the borders the
//! kernel window is clipped to the image and its weights renormalised. The GPU shader in
//! `gpu` reproduces the same filter within ±1 per 8-bit channel.
//!
//! Enlarging (every output pixel has at most four taps on each axis) runs on our own AVX2
//! kernel where the CPU has it: the same fixed-point weights and arithmetic as
//! fast_image_resize, so the same bytes, but each intermediate row is made just before it
//! is used instead of a whole intermediate image, and the weights are laid out once per
//! size. Shrinking, and CPUs without AVX2, use fast_image_resize itself.

#[cfg(target_arch = "x86_64")]
mod avx2;
pub(crate) mod taps;

use std::sync::Arc;

use parking_lot::Mutex;

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use crate::frame::RgbaImage;

/// Where frames are brought to the output size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
pub enum UpscaleMode {
    /// Frames stay at the decoded (source) size.
    None,
    /// Bicubic on the CPU worker pool.
    #[default]
    Cpu,
    /// The consumer upscales on the GPU (the viewer): the pipeline passes source frames.
    Gpu,
}

/// Output frames kept for reuse by [`BicubicResizer::resize_shared`], shared by every
/// resizer in the process: the pipeline's upscale workers draw on one set of buffers, so
/// the set stays as large as the number of frames alive at once, not that times the workers.
static FRAME_POOL: Mutex<Vec<Arc<RgbaImage>>> = Mutex::new(Vec::new());

/// Most frames the pool keeps (a 4K stream has about 20 alive at once: ring, recorder
/// queue, workers).
const POOL_FRAMES: usize = 24;

/// A pooled frame of this size that nobody else holds any more, taken out of the pool.
fn take_pooled(width: u32, height: u32) -> Option<Arc<RgbaImage>> {
    let mut pool = FRAME_POOL.lock();
    // Frames of another size will not be asked for again soon: let them go.
    pool.retain(|f| (f.width, f.height) == (width, height));
    let free = pool.iter_mut().position(|f| Arc::get_mut(f).is_some())?;
    Some(pool.swap_remove(free))
}

fn keep_pooled(frame: &Arc<RgbaImage>) {
    let mut pool = FRAME_POOL.lock();
    if pool.len() < POOL_FRAMES {
        pool.push(frame.clone());
    }
}

/// A reusable bicubic resizer: keeps its scratch buffers and the weights for the last pair
/// of sizes between calls.
pub struct BicubicResizer {
    resizer: Resizer,
    options: ResizeOptions,
    #[cfg(target_arch = "x86_64")]
    fast: Option<fast::Plan>,
    #[cfg(target_arch = "x86_64")]
    avx2: Option<avx2::Avx2>,
}

impl Default for BicubicResizer {
    fn default() -> Self {
        Self::new()
    }
}

impl BicubicResizer {
    pub fn new() -> Self {
        Self {
            resizer: Resizer::new(),
            options: ResizeOptions::new()
                .resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom))
                // Frames are opaque: premultiplying alpha would only cost time.
                .use_alpha(false),
            #[cfg(target_arch = "x86_64")]
            fast: None,
            #[cfg(target_arch = "x86_64")]
            avx2: avx2::Avx2::detect(),
        }
    }

    /// fast_image_resize for every size, never the AVX2 kernel: the reference that the
    /// kernel is tested against.
    pub fn reference() -> Self {
        let mut resizer = Self::new();
        #[cfg(target_arch = "x86_64")]
        {
            resizer.avx2 = None;
        }
        resizer
    }

    /// Whether `src_size -> dst_size` runs on the AVX2 kernel on this CPU (otherwise on
    /// fast_image_resize). The output is the same either way.
    pub fn uses_fast_kernel(&self, src_size: (u32, u32), dst_size: (u32, u32)) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self.avx2.is_some() {
            return fast::Plan::new(src_size, dst_size).is_some();
        }
        let _ = (src_size, dst_size);
        false
    }

    /// Resizes `src` to `width` x `height` (a copy when the size is already right).
    pub fn resize(&mut self, src: &RgbaImage, width: u32, height: u32) -> RgbaImage {
        if (src.width, src.height) == (width, height) {
            return src.clone();
        }
        let mut dst = RgbaImage {
            width,
            height,
            pixels: vec![0; width as usize * height as usize * 4],
        };
        self.resize_into(src, &mut dst);
        dst
    }

    /// Resizes `src` into `dst`, to `dst`'s size, overwriting every pixel.
    pub fn resize_into(&mut self, src: &RgbaImage, dst: &mut RgbaImage) {
        debug_assert_eq!(
            dst.pixels.len(),
            dst.width as usize * dst.height as usize * 4
        );
        if (src.width, src.height) == (dst.width, dst.height) {
            dst.pixels.copy_from_slice(&src.pixels);
            return;
        }
        if src.pixels.is_empty() || dst.pixels.is_empty() {
            dst.pixels.fill(0);
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(avx2) = self.avx2 {
            let sizes = ((src.width, src.height), (dst.width, dst.height));
            if self.fast.as_ref().map(|p| p.sizes) != Some(sizes) {
                self.fast = fast::Plan::new(sizes.0, sizes.1);
            }
            if let Some(plan) = &mut self.fast {
                plan.run(avx2, src, dst);
                return;
            }
        }
        let src_view = ImageRef::new(src.width, src.height, &src.pixels, PixelType::U8x4)
            .expect("RgbaImage always holds width*height*4 bytes");
        let mut dst_view =
            Image::from_slice_u8(dst.width, dst.height, &mut dst.pixels, PixelType::U8x4)
                .expect("RgbaImage always holds width*height*4 bytes");
        self.resizer
            .resize(&src_view, &mut dst_view, &self.options)
            .expect("same pixel type on both sides");
    }

    /// Like [`resize`](Self::resize), into a shared frame, reusing an earlier output of
    /// `resize_shared` (of any resizer) that everyone else has let go of.
    ///
    /// A 4K RGBA frame is 33 MB, above glibc's largest mmap threshold: a fresh one is mapped,
    /// page-faulted (8 100 faults) and unmapped again for every frame, which costs about as
    /// much as resizing it. Up to 24 frames of the current size are kept for reuse, so memory
    /// stays at the stream's own peak instead of going up and down with every frame.
    pub fn resize_shared(&mut self, src: &RgbaImage, width: u32, height: u32) -> Arc<RgbaImage> {
        if (src.width, src.height) == (width, height) {
            return Arc::new(src.clone());
        }
        let mut frame = take_pooled(width, height).unwrap_or_else(|| {
            Arc::new(RgbaImage {
                width,
                height,
                pixels: vec![0; width as usize * height as usize * 4],
            })
        });
        let image = Arc::get_mut(&mut frame).expect("a pooled frame nobody else holds");
        self.resize_into(src, image);
        keep_pooled(&frame);
        frame
    }
}

/// Bicubic resize with a fresh resizer (convenience for one-off use).
pub fn bicubic(src: &RgbaImage, width: u32, height: u32) -> RgbaImage {
    BicubicResizer::new().resize(src, width, height)
}

#[cfg(target_arch = "x86_64")]
mod fast {
    use super::avx2::{Avx2, RowKernel};
    use super::taps::{Taps, TAPS};
    use crate::frame::RgbaImage;

    /// Frames from this size up are written around the caches: a 4K frame (33 MB) cannot
    /// stay in them anyway, and reading its old bytes in before overwriting them would
    /// double the memory traffic.
    const STREAM_BYTES: usize = 8 << 20;

    /// The weights for one pair of sizes, and the intermediate row.
    pub(super) struct Plan {
        pub sizes: ((u32, u32), (u32, u32)),
        /// `None`: the height does not change (no vertical pass).
        rows: Option<Taps>,
        /// `None`: the width does not change (no horizontal pass).
        columns: Option<RowKernel>,
        row: Vec<u8>,
    }

    impl Plan {
        /// `None` when an axis shrinks (more than four taps) or the source is under four
        /// pixels on a side that changes.
        pub fn new(src: (u32, u32), dst: (u32, u32)) -> Option<Self> {
            let axis = |from: u32, to: u32| match from == to {
                true => Some(None),
                false => Taps::new(from, to).map(Some),
            };
            let columns = axis(src.0, dst.0)?.map(RowKernel::new);
            let rows = axis(src.1, dst.1)?;
            Some(Self {
                sizes: (src, dst),
                rows,
                columns,
                row: vec![0; src.0 as usize * 4],
            })
        }

        /// fast_image_resize's order: the vertical pass (rounded to 8 bits), then the
        /// horizontal one, here fused row by row.
        pub fn run(&mut self, avx2: Avx2, src: &RgbaImage, dst: &mut RgbaImage) {
            let stream = dst.pixels.len() >= STREAM_BYTES;
            let src_row_len = src.width as usize * 4;
            let dst_row_len = dst.width as usize * 4;
            let src_row = |y: usize| &src.pixels[y * src_row_len..][..src_row_len];
            for (y, out) in dst.pixels.chunks_exact_mut(dst_row_len).enumerate() {
                let row: &[u8] = match &self.rows {
                    Some(taps) => {
                        let start = taps.starts[y] as usize;
                        let rows: [&[u8]; TAPS] = std::array::from_fn(|t| src_row(start + t));
                        avx2.vertical_row(rows, &taps.weights[y], taps.precision, &mut self.row);
                        &self.row
                    }
                    None => src_row(y),
                };
                match &self.columns {
                    Some(kernel) => avx2.horizontal_row(kernel, row, out, stream),
                    None => out.copy_from_slice(row),
                }
            }
            if stream {
                avx2.fence();
            }
        }
    }
}
