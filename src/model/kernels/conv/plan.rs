//! How one convolution call splits its work over tiles, threads and input channels.

/// Tiles per micro-kernel call (rows of the GEMM).
pub(super) const MR: usize = 6;
/// Tiles transformed and multiplied together: their transformed inputs and products
/// (36 x TILES_PER_CHUNK x 64 floats each) stay in L2 between the three steps.
pub(super) const TILES_PER_CHUNK: usize = 24;

/// How one convolution call splits its work. Every plan computes the same values (each
/// tile's sums run over the input channels in the same order); plans only trade cache reuse
/// against parallel slack.
#[derive(Clone, Copy, Debug)]
pub(super) struct Plan {
    /// Bands (rayon tasks) per image, each a run of whole tile rows; band sizes differ by
    /// at most one row.
    pub(super) bands: usize,
    /// Tiles transformed and multiplied together, a multiple of MR.
    pub(super) chunk: usize,
    /// Input channels per pass over the micro-kernel (a multiple of LANES).
    pub(super) k_block: usize,
}

impl Plan {
    /// TAESD's shape (64 channels): one row of tiles per band, chunks of TILES_PER_CHUNK,
    /// all input channels in one pass.
    pub(super) fn narrow(cin_p: usize, tiles_h: usize) -> Self {
        Self {
            bands: tiles_h,
            chunk: TILES_PER_CHUNK,
            k_block: cin_p,
        }
    }

    /// Wide layers (the VAE's 128 to 512 channels). The 36 weight matrices of a 512-channel
    /// layer take 38 MB, more than the L3 cache, and are streamed once per chunk of tiles:
    /// so chunks are large (~96 tiles), bands are few (a multiple of the thread count, at
    /// most ~192 tiles each: two bands of 8 tile rows for a 64x64 image), and the input
    /// channels go in blocks of 256 so a micro-kernel's weight panel stays in L1 and a
    /// chunk's block of transformed inputs in L2.
    pub(super) fn wide(cin_p: usize, tiles_h: usize, tiles_w: usize, images: usize) -> Self {
        let (target_chunk, max_band_tiles) = (96, 192);
        let threads = rayon::current_num_threads().max(1);
        // Tasks over all images: a multiple of the thread count.
        let tasks = (images * tiles_h * tiles_w).div_ceil(threads * max_band_tiles) * threads;
        let bands = tasks.div_ceil(images.max(1)).clamp(1, tiles_h.max(1));
        let band_tiles = tiles_h.div_ceil(bands) * tiles_w;
        let chunks = band_tiles.div_ceil(target_chunk);
        let chunk = band_tiles.div_ceil(chunks).div_ceil(MR) * MR;
        Self {
            bands,
            chunk,
            k_block: cin_p.min(256),
        }
    }

    /// Tile rows `(first, count)` of each band.
    pub(super) fn band_rows(&self, tiles_h: usize) -> Vec<(usize, usize)> {
        let bands = self.bands.clamp(1, tiles_h.max(1));
        (0..bands)
            .map(|i| {
                let (start, end) = (i * tiles_h / bands, (i + 1) * tiles_h / bands);
                (start, end - start)
            })
            .collect()
    }
}
