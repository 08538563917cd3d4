//! How a decode bounds its memory: the whole image at once, or by tiles (the VAE) and row
//! bands (TAESD) when the whole image's working buffer would exceed a budget.

use crate::model::{ModelError, Result};

/// How a decoder bounds the memory one decode works in (its activations, not its weights).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tiling {
    /// The whole image at once unless its working buffer would exceed `budget_bytes`;
    /// then tiles (TAESD: row bands) as large as the budget allows.
    Auto {
        /// Bytes of activations a decode may hold.
        budget_bytes: u64,
    },
    /// Always the whole image at once: the fastest; memory grows with the image.
    Off,
    /// Always tiled: the VAE in `tile` x `tile` latent-pixel tiles, TAESD in bands of `tile`
    /// latent rows. The VAE keeps whole-image checkpoints (which save recomputation) only
    /// within `budget_bytes`; with 0 it keeps none beyond its latent level, and its memory
    /// is set by the tile.
    Tiles {
        /// Tile side (VAE) or band height (TAESD), in latent pixels; at least 1.
        tile: usize,
        /// Bytes the VAE's checkpoints may take with the tiles' own buffers.
        budget_bytes: u64,
    },
}

impl Default for Tiling {
    /// [`Tiling::Auto`] with [`default_budget_bytes`].
    fn default() -> Self {
        Tiling::Auto {
            budget_bytes: default_budget_bytes(),
        }
    }
}

impl Tiling {
    /// Refuses a zero tile.
    pub fn check(&self) -> Result<()> {
        match self {
            Tiling::Tiles { tile: 0, .. } => Err(ModelError::Invalid(
                "decode tiling: the tile must be at least 1 latent pixel".into(),
            )),
            _ => Ok(()),
        }
    }
}

/// The budget [`Tiling::default`] gives a decode: half the machine's memory (`MemTotal`),
/// at least 1 GiB; 4 GiB where `/proc/meminfo` cannot be read.
pub fn default_budget_bytes() -> u64 {
    const GIB: u64 = 1 << 30;
    let total_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                let rest = line.strip_prefix("MemTotal:")?;
                rest.split_whitespace().next()?.parse::<u64>().ok()
            })
        });
    match total_kb {
        Some(kb) => (kb * 1024 / 2).max(GIB),
        None => 4 * GIB,
    }
}

/// `count` tiles of near-equal size (they differ by at most one pixel) over `len` pixels:
/// `(start, end)` of each.
pub(crate) fn split(len: usize, tile: usize) -> Vec<(usize, usize)> {
    let count = len.div_ceil(tile.max(1)).max(1);
    (0..count)
        .map(|i| (i * len / count, (i + 1) * len / count))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_the_length_in_near_equal_tiles() {
        assert_eq!(split(10, 4), vec![(0, 3), (3, 6), (6, 10)]);
        assert_eq!(split(8, 8), vec![(0, 8)]);
        assert_eq!(split(3, 8), vec![(0, 3)]);
    }
}
