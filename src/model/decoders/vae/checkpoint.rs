//! A whole-image map a tiled decode keeps between its passes, in bands of rows (one per row
//! of tiles), so the pass that makes the next checkpoint frees the rows of the old one it
//! has gone past: the two are held together only over a band, not over the whole image.

use crate::model::kernels::{Act, Rect};

/// The stream at the input of a step, over the whole image, in bands of rows.
pub(super) struct Checkpoint {
    /// The step whose input this is.
    pub step: usize,
    w: usize,
    c: usize,
    /// Each band's first row and its rows (full width), `None` once freed.
    bands: Vec<(usize, Option<Act>)>,
}

impl Checkpoint {
    /// An empty checkpoint of `w` pixels wide, `c` (padded) channels; bands are added top
    /// to bottom with [`Self::push_band`].
    pub fn new(step: usize, w: usize, c: usize) -> Self {
        Self {
            step,
            w,
            c,
            bands: Vec::new(),
        }
    }

    /// `map` (one image) cut into bands of `rows` (`(first, end)` row ranges covering it).
    pub fn split(step: usize, map: Act, rows: &[(usize, usize)]) -> Self {
        let mut checkpoint = Self::new(step, map.w, map.c);
        for &(y0, y1) in rows {
            let rect = Rect {
                y0,
                y1,
                x0: 0,
                x1: map.w,
            };
            checkpoint.push_band(y0, map.crop(rect, Vec::new()));
        }
        checkpoint
    }

    /// Adds the band of rows starting at `y0` (below the last one).
    pub fn push_band(&mut self, y0: usize, band: Act) {
        assert_eq!((band.n, band.w, band.c), (1, self.w, self.c), "band shape");
        debug_assert!(self
            .bands
            .last()
            .is_none_or(|(last, b)| b.as_ref().is_none_or(|b| last + b.h == y0)));
        self.bands.push((y0, Some(band)));
    }

    /// The pixels of `rect` (within the map), gathered from the bands that hold its rows.
    pub fn crop(&self, rect: Rect, buffer: Vec<f32>) -> Act {
        let c = self.c;
        let mut out = Act::reuse(buffer, 1, rect.height(), rect.width(), c);
        let row_len = rect.width() * c;
        let mut band = 0;
        for (i, y) in (rect.y0..rect.y1).enumerate() {
            while self.bands[band].0 + self.band_rows(band) <= y {
                band += 1;
            }
            let (y0, kept) = &self.bands[band];
            let kept = kept
                .as_ref()
                .expect("a tile reads only rows no pass has gone past");
            let from = &kept.data[((y - y0) * self.w + rect.x0) * c..][..row_len];
            out.data[i * row_len..][..row_len].copy_from_slice(from);
        }
        out
    }

    /// Frees every band that ends at or above row `y`.
    pub fn free_above(&mut self, y: usize) {
        for (y0, band) in &mut self.bands {
            if band.as_ref().is_some_and(|b| *y0 + b.h <= y) {
                *band = None;
            }
        }
    }

    /// Rows of band `i` (freed bands keep their extent through their neighbours' starts).
    fn band_rows(&self, i: usize) -> usize {
        match (&self.bands[i].1, self.bands.get(i + 1)) {
            (Some(band), _) => band.h,
            (None, Some((next, _))) => next - self.bands[i].0,
            (None, None) => usize::MAX / 2,
        }
    }
}
