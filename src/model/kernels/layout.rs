//! The activation layout every CPU decoder kernel shares: NHWC, channels padded to one
//! SIMD register, and the pool the large buffers live in between layers.

/// Channels are padded to a multiple of this: one 256-bit register of f32.
pub(crate) const LANES: usize = 8;

/// Rounds a channel count up to the padded width used inside the decoder.
pub(crate) fn padded(channels: usize) -> usize {
    channels.div_ceil(LANES) * LANES
}

/// A batch of activations in NHWC order, channels zero-padded to a multiple of [`LANES`].
#[derive(Debug, Default)]
pub(crate) struct Act {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    /// Padded channel count (the stride between pixels).
    pub c: usize,
    pub data: Vec<f32>,
}

impl Act {
    /// Reuses `buffer` for an `n x h x w x c` activation. Contents are left as they are:
    /// every convolution writes all of its output, padded channels included.
    pub fn reuse(mut buffer: Vec<f32>, n: usize, h: usize, w: usize, c: usize) -> Self {
        buffer.resize(n * h * w * c, 0.0);
        Self {
            n,
            h,
            w,
            c,
            data: buffer,
        }
    }

    /// Converts NCHW data with `channels` real channels, applying `f` to each value.
    pub fn from_nchw(
        buffer: Vec<f32>,
        nchw: &[f32],
        (n, channels, h, w): (usize, usize, usize, usize),
        f: impl Fn(f32) -> f32,
    ) -> Self {
        let c = padded(channels);
        let mut act = Self::reuse(buffer, n, h, w, c);
        act.data.fill(0.0);
        for b in 0..n {
            for ch in 0..channels {
                let plane = &nchw[(b * channels + ch) * h * w..][..h * w];
                for (i, &value) in plane.iter().enumerate() {
                    act.data[(b * h * w + i) * c + ch] = f(value);
                }
            }
        }
        act
    }

    /// The first `channels` channels as NCHW values.
    pub fn to_nchw(&self, channels: usize) -> Vec<f32> {
        let pixels = self.h * self.w;
        let mut nchw = vec![0f32; self.n * channels * pixels];
        for (b, image) in nchw.chunks_mut(channels * pixels).enumerate() {
            for (ch, plane) in image.chunks_mut(pixels).enumerate() {
                for (i, value) in plane.iter_mut().enumerate() {
                    *value = self.data[(b * pixels + i) * self.c + ch];
                }
            }
        }
        nchw
    }

    /// Every second row and column, from row and column `offset` (0 or 1), into `buffer`: a
    /// stride-2 3x3 convolution is the stride-1 one (padding 1) sampled this way, at offset
    /// 0 for padding 1 on every side (`ceil(h / 2)` rows), at offset 1 for diffusers' VAE
    /// downsampler, which pads only the right and bottom (`floor(h / 2)` rows).
    pub fn subsample(&self, offset: usize, buffer: Vec<f32>) -> Act {
        let (h, w, c) = (self.h, self.w, self.c);
        let oh = h.saturating_sub(offset).div_ceil(2);
        let ow = w.saturating_sub(offset).div_ceil(2);
        let mut out = Act::reuse(buffer, self.n, oh, ow, c);
        for b in 0..self.n {
            for y in 0..oh {
                for x in 0..ow {
                    let from = ((b * h + offset + 2 * y) * w + offset + 2 * x) * c;
                    let to = ((b * oh + y) * ow + x) * c;
                    out.data[to..to + c].copy_from_slice(&self.data[from..from + c]);
                }
            }
        }
        out
    }

    /// Nearest-neighbour up-sampling by an integer `factor` (every pixel repeated
    /// `factor x factor` times), into a new activation.
    pub fn upsample_nearest(&self, factor: usize) -> Act {
        let (h, w, c) = (self.h * factor, self.w * factor, self.c);
        let mut out = Act::reuse(Vec::new(), self.n, h, w, c);
        for b in 0..self.n {
            for y in 0..h {
                for x in 0..w {
                    let from = ((b * self.h + y / factor) * self.w + x / factor) * c;
                    let to = ((b * h + y) * w + x) * c;
                    out.data[to..to + c].copy_from_slice(&self.data[from..from + c]);
                }
            }
        }
        out
    }

    /// The pixels of `rect` (rows and columns relative to this activation, inside it) of a
    /// single image, into `buffer`: what a tile of a larger map starts from.
    pub fn crop(&self, rect: Rect, buffer: Vec<f32>) -> Act {
        assert_eq!(self.n, 1, "crop of one image");
        assert!(
            rect.y1 <= self.h && rect.x1 <= self.w && !rect.is_empty(),
            "crop inside"
        );
        let c = self.c;
        let mut out = Act::reuse(buffer, 1, rect.height(), rect.width(), c);
        let row_len = rect.width() * c;
        for (y, row) in (rect.y0..rect.y1).zip(out.data.chunks_exact_mut(row_len)) {
            row.copy_from_slice(&self.data[(y * self.w + rect.x0) * c..][..row_len]);
        }
        out
    }

    /// Copies the pixels of `from` (relative to this activation) into `target` at
    /// `(y, x)`: a tile's part of a larger map. Both hold one image of the same channels.
    pub fn copy_to(&self, from: Rect, target: &mut Act, (y, x): (usize, usize)) {
        assert_eq!((self.n, target.n), (1, 1), "copy of one image");
        assert_eq!(self.c, target.c, "copy channels");
        assert!(from.y1 <= self.h && from.x1 <= self.w, "copy source inside");
        assert!(
            y + from.height() <= target.h && x + from.width() <= target.w,
            "copy target inside"
        );
        let c = self.c;
        let row_len = from.width() * c;
        for (i, sy) in (from.y0..from.y1).enumerate() {
            let src = &self.data[(sy * self.w + from.x0) * c..][..row_len];
            target.data[((y + i) * target.w + x) * c..][..row_len].copy_from_slice(src);
        }
    }

    /// Gives the buffer back for reuse.
    pub fn into_buffer(self) -> Vec<f32> {
        self.data
    }
}

/// A rectangle of pixels, rows `y0..y1` and columns `x0..x1` (half-open), in the
/// coordinates of whichever map it is said to be in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Rect {
    pub y0: usize,
    pub y1: usize,
    pub x0: usize,
    pub x1: usize,
}

impl Rect {
    pub fn height(&self) -> usize {
        self.y1 - self.y0
    }

    pub fn width(&self) -> usize {
        self.x1 - self.x0
    }

    pub fn area(&self) -> usize {
        self.height() * self.width()
    }

    pub fn is_empty(&self) -> bool {
        self.y1 <= self.y0 || self.x1 <= self.x0
    }

    /// Every side scaled by `factor` (a rectangle of a map `factor` times larger).
    pub fn scaled(&self, factor: usize) -> Self {
        Self {
            y0: self.y0 * factor,
            y1: self.y1 * factor,
            x0: self.x0 * factor,
            x1: self.x1 * factor,
        }
    }

    /// Grown by `by` on every side, then cut to an `h x w` map.
    pub fn grown(&self, by: usize, (h, w): (usize, usize)) -> Self {
        Self {
            y0: self.y0.saturating_sub(by),
            y1: (self.y1 + by).min(h),
            x0: self.x0.saturating_sub(by),
            x1: (self.x1 + by).min(w),
        }
    }

    /// This rectangle in the coordinates of `outer` (which holds it).
    pub fn within(&self, outer: &Rect) -> Self {
        debug_assert!(outer.y0 <= self.y0 && self.y1 <= outer.y1);
        debug_assert!(outer.x0 <= self.x0 && self.x1 <= outer.x1);
        Self {
            y0: self.y0 - outer.y0,
            y1: self.y1 - outer.y0,
            x0: self.x0 - outer.x0,
            x1: self.x1 - outer.x0,
        }
    }
}

/// Float buffers handed from layer to layer and kept between decodes: the large
/// activations (134 MB at 512x512 x 128 channels) would otherwise be page-faulted in anew
/// by every layer.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    free: Vec<Vec<f32>>,
}

impl Pool {
    /// A buffer for `len` floats (contents unspecified, length not set): the smallest free
    /// one that holds `len`, else the largest (the caller's resize grows it in place,
    /// so the total held stays near the peak need), else a new one.
    pub fn take(&mut self, len: usize) -> Vec<f32> {
        let fits = (0..self.free.len())
            .filter(|&i| self.free[i].capacity() >= len)
            .min_by_key(|&i| self.free[i].capacity());
        let largest = (0..self.free.len()).max_by_key(|&i| self.free[i].capacity());
        match fits.or(largest) {
            Some(i) => self.free.swap_remove(i),
            None => Vec::new(),
        }
    }

    /// Hands a buffer back.
    pub fn give(&mut self, buffer: Vec<f32>) {
        if buffer.capacity() > 0 {
            self.free.push(buffer);
        }
    }

    /// Frees every buffer held (the next sizes will differ: a tiled decode's tiles after
    /// the whole-image latent level).
    pub fn clear(&mut self) {
        self.free = Vec::new();
    }
}
