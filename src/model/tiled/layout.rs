//! Where the tiles of a latent lie and how much each one's prediction counts at every latent
//! pixel: overlapping tiles cross-faded with smooth weights (MultiDiffusion), or the
//! non-overlapping quadrants the original app used.

use crate::model::{ModelError, Result};

/// A rectangle of the latent, in latent pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TileRect {
    /// First row.
    pub y: usize,
    /// First column.
    pub x: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

impl TileRect {
    /// Whether latent pixel `(y, x)` lies inside.
    pub fn contains(&self, y: usize, x: usize) -> bool {
        (self.y..self.y + self.height).contains(&y) && (self.x..self.x + self.width).contains(&x)
    }
}

impl std::fmt::Display for TileRect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rows {}..{}, columns {}..{}",
            self.y,
            self.y + self.height,
            self.x,
            self.x + self.width
        )
    }
}

/// How the latent is cut into tiles for denoising.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Tiling {
    /// One tile: the whole latent (no tiling).
    #[default]
    Whole,
    /// Tiles of `tile` x `tile` latent pixels (smaller at the edges of a smaller latent)
    /// overlapping by at least `overlap`, their predictions cross-faded over the overlaps
    /// every step (MultiDiffusion, Bar-Tal et al. 2023).
    Blended {
        /// Side of a tile, in latent pixels.
        tile: usize,
        /// Least overlap between neighbouring tiles, in latent pixels (at most half a tile).
        overlap: usize,
    },
    /// The latent cut in four non-overlapping quadrants denoised on their own (the
    /// original app's upscaler): seams show where they meet.
    Quadrants,
}

impl Tiling {
    /// Checks the options a person gives; the error names the value.
    pub fn validate(&self) -> Result<()> {
        if let Tiling::Blended { tile, overlap } = *self {
            if tile == 0 {
                return Err(ModelError::Invalid("tile size 0: give at least 1".into()));
            }
            if overlap * 2 > tile {
                return Err(ModelError::Invalid(format!(
                    "tile overlap {overlap} is more than half the tile size {tile}"
                )));
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for Tiling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tiling::Whole => write!(f, "untiled"),
            Tiling::Blended { tile, overlap } => {
                write!(f, "blended tiles of {tile} (overlap {overlap})")
            }
            Tiling::Quadrants => write!(f, "quadrants"),
        }
    }
}

/// The tiles of one latent size and their blend weights.
///
/// The weights of all tiles sum to one at every latent pixel (they are normalised by their
/// sum), so blending predictions that agree gives the same prediction back; a pixel only one
/// tile covers takes that tile's prediction exactly (its weight is `w / w = 1`).
#[derive(Clone, Debug)]
pub struct TileLayout {
    latent_hw: (usize, usize),
    tiles: Vec<TileRect>,
    /// Per tile, its normalised weight at each of its pixels (rows of `width`).
    weights: Vec<Vec<f32>>,
}

/// One tile's extent along an axis and the overlaps it shares with its neighbours.
#[derive(Clone, Copy, Debug)]
struct Span {
    start: usize,
    len: usize,
    /// Pixels shared with the previous tile (0 for the first).
    overlap_before: usize,
    /// Pixels shared with the next tile (0 for the last).
    overlap_after: usize,
}

impl TileLayout {
    /// The tiles `tiling` cuts a latent of `latent_hw` (rows, columns) into.
    pub fn new(tiling: Tiling, latent_hw: (usize, usize)) -> Result<Self> {
        tiling.validate()?;
        let (h, w) = latent_hw;
        if h == 0 || w == 0 {
            return Err(ModelError::Invalid(format!(
                "cannot tile an empty latent of {h}x{w}"
            )));
        }
        let (rows, cols) = match tiling {
            Tiling::Whole => (whole(h), whole(w)),
            Tiling::Blended { tile, overlap } => (
                blended_spans(h, tile, overlap),
                blended_spans(w, tile, overlap),
            ),
            Tiling::Quadrants => (halves(h), halves(w)),
        };
        let mut tiles = Vec::with_capacity(rows.len() * cols.len());
        let mut raw = Vec::with_capacity(tiles.capacity());
        for row in &rows {
            let wy = ramp_weights(row);
            for col in &cols {
                let wx = ramp_weights(col);
                tiles.push(TileRect {
                    y: row.start,
                    x: col.start,
                    height: row.len,
                    width: col.len,
                });
                raw.push(
                    wy.iter()
                        .flat_map(|&a| wx.iter().map(move |&b| a * b))
                        .collect::<Vec<f64>>(),
                );
            }
        }
        let weights = normalise(&tiles, &raw, latent_hw);
        Ok(Self {
            latent_hw,
            tiles,
            weights,
        })
    }

    /// The latent's (rows, columns).
    pub fn latent_hw(&self) -> (usize, usize) {
        self.latent_hw
    }

    /// The tiles, row by row.
    pub fn tiles(&self) -> &[TileRect] {
        &self.tiles
    }

    /// Tile `index`'s normalised weights, one per pixel of the tile (rows of its width).
    pub fn weights(&self, index: usize) -> &[f32] {
        &self.weights[index]
    }

    /// The tile whose weight is largest at latent pixel `(y, x)` (the first on a tie): who
    /// "owns" that pixel, for maps.
    pub fn owner(&self, y: usize, x: usize) -> usize {
        let mut best = (0, f32::MIN);
        for (i, tile) in self.tiles.iter().enumerate() {
            if tile.contains(y, x) {
                let w = self.weights[i][(y - tile.y) * tile.width + (x - tile.x)];
                if w > best.1 {
                    best = (i, w);
                }
            }
        }
        best.0
    }
}

fn whole(n: usize) -> Vec<Span> {
    vec![Span {
        start: 0,
        len: n,
        overlap_before: 0,
        overlap_after: 0,
    }]
}

/// The two halves of `n` (one span when `n` is 1).
fn halves(n: usize) -> Vec<Span> {
    if n < 2 {
        return whole(n);
    }
    let first = n / 2;
    vec![
        Span {
            start: 0,
            len: first,
            overlap_before: 0,
            overlap_after: 0,
        },
        Span {
            start: first,
            len: n - first,
            overlap_before: 0,
            overlap_after: 0,
        },
    ]
}

/// The fewest tiles of `tile` that cover `n` overlapping by at least `overlap`, spread
/// evenly (the first starts at 0, the last ends at `n`).
fn blended_spans(n: usize, tile: usize, overlap: usize) -> Vec<Span> {
    if n <= tile {
        return whole(n);
    }
    // `validate` keeps overlap <= tile / 2, so the stride is at least 1.
    let stride = tile - overlap;
    let count = (n - overlap).div_ceil(stride);
    let starts: Vec<usize> = (0..count)
        .map(|k| {
            // Evenly between 0 and n - tile, rounded to the nearest pixel.
            (k * (n - tile) + (count - 1) / 2) / (count - 1)
        })
        .collect();
    (0..count)
        .map(|k| Span {
            start: starts[k],
            len: tile,
            overlap_before: match k {
                0 => 0,
                _ => (starts[k - 1] + tile).saturating_sub(starts[k]),
            },
            overlap_after: match starts.get(k + 1) {
                Some(&next) => (starts[k] + tile).saturating_sub(next),
                None => 0,
            },
        })
        .collect()
}

/// A span's weights along its axis: 1 inside, rising over the overlap with the previous
/// tile and falling over the overlap with the next as sin^2, so that two neighbours' ramps
/// over their shared pixels sum to one (sin^2 + cos^2). Never zero: every pixel of a tile
/// counts a little.
fn ramp_weights(span: &Span) -> Vec<f64> {
    let rise = |i: usize, over: usize| {
        let u = (i as f64 + 0.5) / over as f64;
        (u * std::f64::consts::FRAC_PI_2).sin().powi(2)
    };
    (0..span.len)
        .map(|i| {
            let mut w = 1.0;
            if i < span.overlap_before {
                w *= rise(i, span.overlap_before);
            }
            let from_end = span.len - 1 - i;
            if from_end < span.overlap_after {
                w *= rise(from_end, span.overlap_after);
            }
            w
        })
        .collect()
}

/// Each tile's weights divided by the sum over the tiles at each latent pixel.
fn normalise(tiles: &[TileRect], raw: &[Vec<f64>], (h, w): (usize, usize)) -> Vec<Vec<f32>> {
    let mut sum = vec![0f64; h * w];
    for (tile, weights) in tiles.iter().zip(raw) {
        for (r, row) in weights.chunks_exact(tile.width).enumerate() {
            let at = (tile.y + r) * w + tile.x;
            for (s, v) in sum[at..at + tile.width].iter_mut().zip(row) {
                *s += v;
            }
        }
    }
    tiles
        .iter()
        .zip(raw)
        .map(|(tile, weights)| {
            weights
                .chunks_exact(tile.width)
                .enumerate()
                .flat_map(|(r, row)| {
                    let at = (tile.y + r) * w + tile.x;
                    let sum = &sum[at..at + tile.width];
                    row.iter().zip(sum).map(|(v, s)| (v / s) as f32)
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_cover_the_axis_with_at_least_the_overlap() {
        for (n, tile, overlap) in [(100, 64, 32), (130, 64, 16), (65, 64, 8), (300, 48, 0)] {
            let spans = blended_spans(n, tile, overlap);
            assert_eq!(spans[0].start, 0);
            let last = spans.last().unwrap();
            assert_eq!(last.start + last.len, n, "{n} {tile} {overlap}");
            for pair in spans.windows(2) {
                let shared = pair[0].start + pair[0].len - pair[1].start;
                assert!(shared >= overlap, "{n} {tile} {overlap}: {shared}");
                assert_eq!(pair[0].overlap_after, shared);
                assert_eq!(pair[1].overlap_before, shared);
            }
        }
    }
}
