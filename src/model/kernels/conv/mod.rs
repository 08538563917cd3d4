//! 3x3 convolutions (stride 1, padding 1) on the CPU, fast enough for per-frame decoding.
//!
//! candle's generic conv2d reaches ~13 GFLOP/s on our 2-core target; the TAESD decoder needs
//! ~320 GFLOP (direct-convolution count) for a 576x1024 image. So the decoder's convolutions
//! run here instead:
//!
//! * **Winograd F(4x4, 3x3)**: each 4x4 output tile is `A^T [(G g G^T) . (B^T d B)] A`, 36
//!   multiplies per input/output channel pair instead of 144. The channel mixing becomes 36
//!   small GEMMs (tiles x c_in times c_in x c_out) per chunk of tiles, run by an AVX2/FMA
//!   micro-kernel (a portable kernel otherwise). In f32 this stays ~1e-6 from a direct
//!   convolution relative to the values' size (measured against the diffusers fixtures).
//! * **NHWC activations** with channels padded to a multiple of 8 (one AVX register), so the
//!   tile transforms run 8 channels at a time.
//! * **Fused steps**: nearest-neighbour upsampling is folded into the input gather (the
//!   upsampled image is never stored); bias, ReLU, the residual add, and the final image
//!   mapping (to diffusers' [-1, 1] floats or to RGBA8) are done in the output transform.
//! * **Row bands in parallel**: one band per row of tiles (4 output rows), spread over the
//!   rayon pool; each thread keeps its transform buffers (a few hundred KiB, sized to stay
//!   in L2) between bands and calls.

use std::cell::RefCell;

use rayon::prelude::*;

/// Channels are padded to a multiple of this: one 256-bit register of f32.
pub(crate) const LANES: usize = 8;
/// Output tile side (F(4x4, 3x3)).
const TILE: usize = 4;
/// Input patch side: TILE + 3 - 1.
const PATCH: usize = 6;
/// Winograd points per tile.
const POINTS: usize = PATCH * PATCH;
/// Tiles per micro-kernel call (rows of the GEMM).
const MR: usize = 6;
/// Tiles transformed and multiplied together: their transformed inputs and products
/// (36 x TILES_PER_CHUNK x 64 floats each) stay in L2 between the three steps.
const TILES_PER_CHUNK: usize = 24;

type Lane = [f32; LANES];

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

    /// Gives the buffer back for reuse.
    pub fn into_buffer(self) -> Vec<f32> {
        self.data
    }
}

/// Where a convolution's output goes, and what is fused into writing it.
pub(crate) enum Sink<'a> {
    /// An activation of the output size: `relu?(conv + bias (+ skip))`.
    Act {
        out: &'a mut Act,
        skip: Option<&'a Act>,
        relu: bool,
    },
    /// An activation of the output size that the result is added to, in place:
    /// `out += conv + bias` (a residual connection without a second buffer).
    AddTo { out: &'a mut Act },
    /// The decoded image as diffusers returns it, NCHW: `(conv + bias) * 2 - 1`.
    Image { out: &'a mut [f32] },
    /// NCHW planes of the unpadded output channels: `conv + bias`, nothing else.
    Planes { out: &'a mut [f32] },
    /// One RGBA8 image per batch row: `round(clamp(conv + bias, 0, 1) * 255)`, alpha 255.
    Rgba { out: &'a mut [Vec<u8>] },
}

/// The part of a sink that one row of tiles writes.
enum BandOut<'a> {
    Act(&'a mut [f32]),
    Planes(Vec<&'a mut [f32]>),
    Rgba(&'a mut [u8]),
}

/// A 3x3 convolution (stride 1, padding 1) with its weights pre-transformed for Winograd.
#[derive(Debug, Clone)]
pub(crate) struct Conv3x3 {
    channels: Channels,
    /// `G g G^T` per point, packed for the micro-kernel: `[point][column block][cin_p][width]`
    /// where the column blocks are 16 output channels wide (the last one 8 when `cout_p` is
    /// an odd multiple of 8).
    u: Vec<f32>,
}

/// The channel counts and bias of a 3x3 convolution, whatever the layout of its weights.
#[derive(Debug, Clone)]
pub(crate) struct Channels {
    cin: usize,
    cout: usize,
    cin_p: usize,
    cout_p: usize,
    /// Bias padded to `cout_p` (zeros without bias).
    bias: Vec<f32>,
}

impl Channels {
    fn new(cin: usize, cout: usize, bias: Option<&[f32]>) -> Self {
        let cout_p = padded(cout);
        let mut padded_bias = vec![0f32; cout_p];
        if let Some(bias) = bias {
            padded_bias[..cout].copy_from_slice(&bias[..cout]);
        }
        Self {
            cin,
            cout,
            cin_p: padded(cin),
            cout_p,
            bias: padded_bias,
        }
    }

    /// The kernels' view of these channels with Winograd weights `u`.
    fn packed<'a>(&'a self, u: &'a [f32]) -> Packed<'a> {
        Packed {
            u,
            bias: &self.bias,
            cout: self.cout,
            cin_p: self.cin_p,
            cout_p: self.cout_p,
        }
    }
}

/// What the models need to know of a convolution's shape.
pub(crate) trait ConvShape {
    fn channels(&self) -> &Channels;

    /// Output channels (unpadded).
    fn out_channels(&self) -> usize {
        self.channels().cout
    }

    /// Input channels (unpadded).
    fn in_channels(&self) -> usize {
        self.channels().cin
    }

    /// Padded output channels: the channel stride of the activation this conv writes.
    fn out_channels_padded(&self) -> usize {
        self.channels().cout_p
    }
}

impl ConvShape for Conv3x3 {
    fn channels(&self) -> &Channels {
        &self.channels
    }
}

impl ConvShape for CompactConv3x3 {
    fn channels(&self) -> &Channels {
        &self.channels
    }
}

/// Winograd F(4x4, 3x3) weight transform matrix G (6x3), points 0, 1, -1, 2, -2, inf.
const G: [[f64; 3]; 6] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// The output-channel blocks of the packed weights: (first channel, width).
fn column_blocks(cout_p: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..cout_p)
        .step_by(2 * LANES)
        .map(move |n0| (n0, (cout_p - n0).min(2 * LANES)))
}

impl Conv3x3 {
    /// From PyTorch-layout weights `(cout, cin, 3, 3)` and an optional bias `(cout)`.
    pub fn new(weight: &[f32], bias: Option<&[f32]>, cout: usize, cin: usize) -> Self {
        assert_eq!(weight.len(), cout * cin * 9, "conv weight size");
        let channels = Channels::new(cin, cout, bias);
        let (cin_p, cout_p) = (channels.cin_p, channels.cout_p);
        let mut u = vec![0f32; POINTS * cin_p * cout_p];
        for co in 0..cout {
            let (n0, width) = column_blocks(cout_p)
                .find(|&(n0, width)| co < n0 + width)
                .unwrap_or((0, 0));
            for ci in 0..cin {
                let g = &weight[(co * cin + ci) * 9..][..9];
                // G g G^T in f64, so the transform adds no rounding of its own.
                let mut gg = [[0f64; 3]; 6];
                for (row, grow) in gg.iter_mut().zip(&G) {
                    for (kx, value) in row.iter_mut().enumerate() {
                        *value = (0..3).map(|ky| grow[ky] * f64::from(g[ky * 3 + kx])).sum();
                    }
                }
                for (i, gg_row) in gg.iter().enumerate() {
                    for (j, g_row) in G.iter().enumerate() {
                        let value: f64 = gg_row.iter().zip(g_row).map(|(a, b)| a * b).sum();
                        let p = i * PATCH + j;
                        u[p * cin_p * cout_p + n0 * cin_p + ci * width + (co - n0)] = value as f32;
                    }
                }
            }
        }
        Self { channels, u }
    }

    /// Runs the convolution on `input` upsampled (nearest) by `upsample`, into `sink`.
    pub fn forward(&self, input: &Act, upsample: usize, sink: Sink<'_>) {
        let weights = self.channels.packed(&self.u);
        let tiles_h = (input.h * upsample).div_ceil(TILE);
        run(
            &weights,
            Plan::narrow(self.channels.cin_p, tiles_h),
            input,
            upsample,
            sink,
        );
    }
}

/// A 3x3 convolution (stride 1, padding 1) that keeps its weights as they are (9 floats
/// per channel pair) and makes the Winograd weights per call, in a buffer the caller
/// reuses.
///
/// For wide layers: the SD VAE's 3x3 weights take 190 MB, their Winograd form 4x that; the
/// transform costs ~1% of the convolution it feeds (512 -> 512 channels on a 64x64 image).
#[derive(Debug, Clone)]
pub(crate) struct CompactConv3x3 {
    channels: Channels,
    /// Weights as `[cin_p][ky * 3 + kx][cout_p]`, zero-padded, so the transform runs over
    /// consecutive output channels.
    weight: Vec<f32>,
}

impl CompactConv3x3 {
    /// From PyTorch-layout weights `(cout, cin, 3, 3)` and an optional bias `(cout)`.
    pub fn new(weight: &[f32], bias: Option<&[f32]>, cout: usize, cin: usize) -> Self {
        assert_eq!(weight.len(), cout * cin * 9, "conv weight size");
        let channels = Channels::new(cin, cout, bias);
        let (cin_p, cout_p) = (channels.cin_p, channels.cout_p);
        let mut packed = vec![0f32; cin_p * 9 * cout_p];
        for co in 0..cout {
            for ci in 0..cin {
                for k in 0..9 {
                    packed[(ci * 9 + k) * cout_p + co] = weight[(co * cin + ci) * 9 + k];
                }
            }
        }
        Self {
            channels,
            weight: packed,
        }
    }

    /// Runs the convolution on `input` upsampled (nearest) by `upsample`, into `sink`;
    /// `u` holds the Winograd weights during the call (`36 * cin_p * cout_p` floats).
    pub fn forward(&self, input: &Act, upsample: usize, sink: Sink<'_>, u: &mut Vec<f32>) {
        self.transform(u);
        let weights = self.channels.packed(u);
        let tiles_h = (input.h * upsample).div_ceil(TILE);
        let tiles_w = (input.w * upsample).div_ceil(TILE);
        let plan = Plan::wide(self.channels.cin_p, tiles_h, tiles_w, input.n);
        run(&weights, plan, input, upsample, sink);
    }

    /// Writes `G g G^T` in [`Conv3x3::u`]'s layout, one point per rayon task.
    fn transform(&self, u: &mut Vec<f32>) {
        let point_len = self.channels.cin_p * self.channels.cout_p;
        u.clear();
        u.resize(POINTS * point_len, 0.0);
        let isa = Isa::detect();
        u.par_chunks_mut(point_len)
            .enumerate()
            .for_each(|(p, u_p)| match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Isa::Avx2Fma` is only chosen after runtime detection of AVX2/FMA.
                #[allow(unsafe_code)]
                Isa::Avx2Fma => unsafe { self.transform_point_avx2(p, u_p) },
                Isa::Generic => self.transform_point(p, u_p),
            });
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn transform_point_avx2(&self, p: usize, u_p: &mut [f32]) {
        self.transform_point(p, u_p)
    }

    /// Point `p = 6i + j` of the transform: `u = sum G[i][ky] G[j][kx] g[ky][kx]` over the
    /// non-zero coefficients (196 of the 324 terms of the 36 points).
    #[inline(always)]
    fn transform_point(&self, p: usize, u_p: &mut [f32]) {
        let (i, j) = (p / PATCH, p % PATCH);
        let mut terms = [(0usize, 0f32); 9];
        let mut count = 0;
        for (ky, gy) in G[i].iter().enumerate() {
            for (kx, gx) in G[j].iter().enumerate() {
                let coef = gy * gx;
                if coef != 0.0 {
                    terms[count] = (ky * 3 + kx, coef as f32);
                    count += 1;
                }
            }
        }
        let terms = &terms[..count];
        let (cin_p, cout_p) = (self.channels.cin_p, self.channels.cout_p);
        for (n0, width) in column_blocks(cout_p) {
            let block = &mut u_p[n0 * cin_p..][..width * cin_p];
            for (ci, row) in block.chunks_exact_mut(width).enumerate() {
                let w = &self.weight[ci * 9 * cout_p..][..9 * cout_p];
                let mut acc = [0f32; 2 * LANES];
                for &(k, coef) in terms {
                    for (a, &x) in acc.iter_mut().zip(&w[k * cout_p + n0..][..width]) {
                        *a += coef * x;
                    }
                }
                row.copy_from_slice(&acc[..width]);
            }
        }
    }
}

/// Transformed weights as the kernels read them, whoever owns them.
struct Packed<'a> {
    /// `G g G^T`, laid out as [`Conv3x3::u`].
    u: &'a [f32],
    /// Bias padded to `cout_p`.
    bias: &'a [f32],
    cout: usize,
    cin_p: usize,
    cout_p: usize,
}

/// How one convolution call splits its work. Every plan computes the same values (each
/// tile's sums run over the input channels in the same order); plans only trade cache reuse
/// against parallel slack.
#[derive(Clone, Copy, Debug)]
struct Plan {
    /// Bands (rayon tasks) per image, each a run of whole tile rows; band sizes differ by
    /// at most one row.
    bands: usize,
    /// Tiles transformed and multiplied together, a multiple of MR.
    chunk: usize,
    /// Input channels per pass over the micro-kernel (a multiple of LANES).
    k_block: usize,
}

impl Plan {
    /// TAESD's shape (64 channels): one row of tiles per band, chunks of TILES_PER_CHUNK,
    /// all input channels in one pass.
    fn narrow(cin_p: usize, tiles_h: usize) -> Self {
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
    fn wide(cin_p: usize, tiles_h: usize, tiles_w: usize, images: usize) -> Self {
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
    fn band_rows(&self, tiles_h: usize) -> Vec<(usize, usize)> {
        let bands = self.bands.clamp(1, tiles_h.max(1));
        (0..bands)
            .map(|i| {
                let (start, end) = (i * tiles_h / bands, (i + 1) * tiles_h / bands);
                (start, end - start)
            })
            .collect()
    }
}

/// Cuts one image's rows (`row_len` values per pixel row, `out_h` rows) at the bands'
/// tile-row boundaries.
fn split_rows<'a, T>(
    mut rows: &'a mut [T],
    bands: &[(usize, usize)],
    row_len: usize,
    out_h: usize,
) -> Vec<&'a mut [T]> {
    bands
        .iter()
        .map(|&(ty0, count)| {
            let pixel_rows = ((ty0 + count) * TILE).min(out_h) - ty0 * TILE;
            let (band, rest) = std::mem::take(&mut rows).split_at_mut(pixel_rows * row_len);
            rows = rest;
            band
        })
        .collect()
}

/// The shared driver of every convolution: splits the output in bands, runs them on the
/// rayon pool.
fn run(weights: &Packed<'_>, plan: Plan, input: &Act, upsample: usize, sink: Sink<'_>) {
    assert_eq!(input.c, weights.cin_p, "conv input channels");
    assert!(plan.chunk.is_multiple_of(MR) && plan.k_block > 0);
    let (cout, cout_p) = (weights.cout, weights.cout_p);
    let (n, out_h, out_w) = (input.n, input.h * upsample, input.w * upsample);
    let tiles_h = out_h.div_ceil(TILE);
    let rows = plan.band_rows(tiles_h);
    let (mut bands, skip, relu, kind) = match sink {
        Sink::Act { out, skip, relu } => {
            if let Some(skip) = skip {
                assert_eq!((skip.n, skip.h, skip.w, skip.c), (n, out_h, out_w, cout_p));
            }
            let bands = act_bands(out, (n, out_h, out_w, cout_p), &rows);
            (bands, skip, relu, OutKind::Act)
        }
        Sink::AddTo { out } => {
            let bands = act_bands(out, (n, out_h, out_w, cout_p), &rows);
            (bands, None, false, OutKind::AddTo)
        }
        Sink::Image { out } => {
            let bands = planes(out, (n, cout, out_h, out_w), &rows);
            (bands, None, false, OutKind::Image)
        }
        Sink::Planes { out } => {
            let bands = planes(out, (n, cout, out_h, out_w), &rows);
            (bands, None, false, OutKind::Planes)
        }
        Sink::Rgba { out } => {
            assert_eq!(out.len(), n, "one RGBA buffer per batch row");
            assert!(cout <= 4, "RGBA output needs at most 4 channels");
            let bands: Vec<BandOut> = out
                .iter_mut()
                .flat_map(|image| {
                    image.resize(out_h * out_w * 4, 255);
                    split_rows(image, &rows, out_w * 4, out_h)
                })
                .map(BandOut::Rgba)
                .collect();
            (bands, None, false, OutKind::Rgba)
        }
    };
    assert_eq!(bands.len(), n * rows.len(), "conv output size");
    let isa = Isa::detect();
    let job = Job {
        w: weights,
        plan,
        input,
        upsample,
        out_h,
        out_w,
        skip,
        relu,
        kind,
    };
    bands.par_iter_mut().enumerate().for_each(|(i, band)| {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let (ty0, count) = rows[i % rows.len()];
            job.band(isa, i / rows.len(), ty0, count, band, &mut scratch);
        });
    });
}

/// Splits NCHW images (`n` images of `cout` planes of `out_h x out_w`) into the bands' row
/// ranges.
/// The row bands of an NHWC output activation, per image.
fn act_bands<'a>(
    out: &'a mut Act,
    (n, out_h, out_w, cout_p): (usize, usize, usize, usize),
    rows: &[(usize, usize)],
) -> Vec<BandOut<'a>> {
    assert_eq!(
        (out.n, out.h, out.w, out.c),
        (n, out_h, out_w, cout_p),
        "conv output size"
    );
    out.data
        .chunks_mut(out_h * out_w * cout_p)
        .flat_map(|image| split_rows(image, rows, out_w * cout_p, out_h))
        .map(BandOut::Act)
        .collect()
}

fn planes<'a>(
    out: &'a mut [f32],
    (n, cout, out_h, out_w): (usize, usize, usize, usize),
    rows: &[(usize, usize)],
) -> Vec<BandOut<'a>> {
    let plane_px = out_h * out_w;
    assert_eq!(out.len(), n * cout * plane_px, "image size");
    let mut bands = Vec::new();
    for image in out.chunks_mut(cout * plane_px) {
        let mut per_band: Vec<Vec<&mut [f32]>> =
            (0..rows.len()).map(|_| Vec::with_capacity(cout)).collect();
        for plane in image.chunks_mut(plane_px) {
            for (part, band) in split_rows(plane, rows, out_w, out_h)
                .into_iter()
                .zip(&mut per_band)
            {
                band.push(part);
            }
        }
        bands.extend(per_band.into_iter().map(BandOut::Planes));
    }
    bands
}

thread_local! {
    /// Per-thread transform buffers, kept between bands and calls (allocating ~400 KiB per
    /// band would cost page faults).
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum OutKind {
    Act,
    AddTo,
    Image,
    Planes,
    Rgba,
}

/// The instruction set the kernels run with, detected once per call.
#[derive(Clone, Copy)]
enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    Generic,
}

impl Isa {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Self::Avx2Fma;
        }
        Self::Generic
    }
}

/// One convolution call, shared by all bands.
struct Job<'a> {
    w: &'a Packed<'a>,
    plan: Plan,
    input: &'a Act,
    upsample: usize,
    out_h: usize,
    out_w: usize,
    skip: Option<&'a Act>,
    relu: bool,
    kind: OutKind,
}

impl Job<'_> {
    /// Tile rows `ty0..ty0 + rows` of image `b`.
    fn band(
        &self,
        isa: Isa,
        b: usize,
        ty0: usize,
        rows: usize,
        out: &mut BandOut,
        scratch: &mut Vec<f32>,
    ) {
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Avx2Fma` is only chosen after runtime detection of AVX2 and FMA.
            #[allow(unsafe_code)]
            Isa::Avx2Fma => unsafe { self.band_avx2(b, ty0, rows, out, scratch) },
            Isa::Generic => self.band_impl::<false>(b, ty0, rows, out, scratch),
        }
    }

    /// The same code as the generic path, compiled with AVX2 and FMA enabled so the lane
    /// loops of the transforms become single 256-bit instructions.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn band_avx2(
        &self,
        b: usize,
        ty0: usize,
        rows: usize,
        out: &mut BandOut,
        scratch: &mut Vec<f32>,
    ) {
        self.band_impl::<true>(b, ty0, rows, out, scratch)
    }

    /// One band of tile rows: for each chunk of tiles (raster order), input transform,
    /// 36 GEMMs, output transform with the fused epilogue.
    #[inline(always)]
    fn band_impl<const AVX: bool>(
        &self,
        b: usize,
        ty0: usize,
        rows: usize,
        out: &mut BandOut,
        scratch: &mut Vec<f32>,
    ) {
        let w = self.w;
        let (cin_p, cout_p) = (w.cin_p, w.cout_p);
        let chunk = self.plan.chunk;
        let v_len = POINTS * chunk * cin_p;
        let m_len = POINTS * chunk * cout_p;
        if scratch.len() < v_len + m_len {
            scratch.resize(v_len + m_len, 0.0);
        }
        let (v, rest) = scratch.split_at_mut(v_len);
        let m = &mut rest[..m_len];
        let tiles_w = self.out_w.div_ceil(TILE);
        let band_tiles = rows * tiles_w;
        let tile_at = |i: usize| (ty0 + i / tiles_w, i % tiles_w);
        for i0 in (0..band_tiles).step_by(chunk) {
            let tiles = (band_tiles - i0).min(chunk);
            let tiles_padded = tiles.div_ceil(MR) * MR;
            for t in 0..tiles {
                let (ty, tx) = tile_at(i0 + t);
                self.input_tile(b, ty, tx, t, v);
            }
            // The micro-kernel works on MR tiles at a time: give the spare rows of the last
            // chunk defined values (their products are never read).
            for p in 0..POINTS {
                v[(p * chunk + tiles) * cin_p..][..(tiles_padded - tiles) * cin_p].fill(0.0);
            }
            for p in 0..POINTS {
                let vp = &v[p * chunk * cin_p..][..chunk * cin_p];
                let up = &w.u[p * cin_p * cout_p..][..cin_p * cout_p];
                let mp = &mut m[p * chunk * cout_p..][..chunk * cout_p];
                for k0 in (0..cin_p).step_by(self.plan.k_block) {
                    let k = (cin_p - k0).min(self.plan.k_block);
                    for (n0, width) in column_blocks(cout_p) {
                        let ub = &up[n0 * cin_p + k0 * width..][..width * k];
                        for t0 in (0..tiles_padded).step_by(MR) {
                            let a = &vp[t0 * cin_p + k0..];
                            let c = &mut mp[t0 * cout_p + n0..];
                            match (width == 2 * LANES, k0 > 0) {
                                (true, false) => {
                                    micro_kernel::<AVX, 2, false>(k, a, cin_p, ub, c, cout_p)
                                }
                                (false, false) => {
                                    micro_kernel::<AVX, 1, false>(k, a, cin_p, ub, c, cout_p)
                                }
                                (true, true) => {
                                    micro_kernel::<AVX, 2, true>(k, a, cin_p, ub, c, cout_p)
                                }
                                (false, true) => {
                                    micro_kernel::<AVX, 1, true>(k, a, cin_p, ub, c, cout_p)
                                }
                            }
                        }
                    }
                }
            }
            for t in 0..tiles {
                let (ty, tx) = tile_at(i0 + t);
                self.output_tile(b, (ty, ty - ty0), tx, t, m, out);
            }
        }
    }

    /// Gathers the 6x6 input patch of tile (ty, tx) (zero outside the image, upsampled on the
    /// fly) and writes `B^T d B` for every channel into `v[point][t][channel]`.
    #[inline(always)]
    fn input_tile(&self, b: usize, ty: usize, tx: usize, t: usize, v: &mut [f32]) {
        let input = self.input;
        let c = input.c;
        let chunk = self.plan.chunk;
        let (up, out_h, out_w) = (self.upsample, self.out_h, self.out_w);
        // Offsets of the patch's pixels in the input, None outside the image.
        let mut offsets = [None; POINTS];
        let image = b * input.h * input.w;
        for i in 0..PATCH {
            let y = (ty * TILE + i).wrapping_sub(1);
            if y >= out_h {
                continue;
            }
            for j in 0..PATCH {
                let x = (tx * TILE + j).wrapping_sub(1);
                if x < out_w {
                    offsets[i * PATCH + j] = Some((image + (y / up) * input.w + x / up) * c);
                }
            }
        }
        for ch in (0..c).step_by(LANES) {
            let mut rows = [[[0f32; LANES]; PATCH]; PATCH];
            for (i, row) in rows.iter_mut().enumerate() {
                let mut d = [[0f32; LANES]; PATCH];
                for (j, lane) in d.iter_mut().enumerate() {
                    if let Some(offset) = offsets[i * PATCH + j] {
                        lane.copy_from_slice(&input.data[offset + ch..][..LANES]);
                    }
                }
                *row = input_1d(&d);
            }
            for j in 0..PATCH {
                let mut column = [[0f32; LANES]; PATCH];
                for (lane, row) in column.iter_mut().zip(&rows) {
                    *lane = row[j];
                }
                let transformed = input_1d(&column);
                for (i, lane) in transformed.iter().enumerate() {
                    let p = i * PATCH + j;
                    v[(p * chunk + t) * c + ch..][..LANES].copy_from_slice(lane);
                }
            }
        }
    }

    /// `A^T m A` for tile t of the chunk (tile row `ty`, the band's `ty_band`-th), plus
    /// bias, then the sink's epilogue.
    #[inline(always)]
    fn output_tile(
        &self,
        b: usize,
        (ty, ty_band): (usize, usize),
        tx: usize,
        t: usize,
        m: &[f32],
        out: &mut BandOut,
    ) {
        let w = self.w;
        let cout_p = w.cout_p;
        let chunk = self.plan.chunk;
        let rows_valid = (self.out_h - ty * TILE).min(TILE);
        let cols_valid = (self.out_w - tx * TILE).min(TILE);
        for ch in (0..cout_p).step_by(LANES) {
            let mut rows = [[[0f32; LANES]; TILE]; PATCH];
            for (i, row) in rows.iter_mut().enumerate() {
                let mut d = [[0f32; LANES]; PATCH];
                for (j, d) in d.iter_mut().enumerate() {
                    let p = i * PATCH + j;
                    *d = lane(&m[(p * chunk + t) * cout_p + ch..]);
                }
                *row = output_1d(&d);
            }
            let bias = lane(&w.bias[ch..]);
            for xx in 0..cols_valid {
                let mut column = [[0f32; LANES]; PATCH];
                for (lane, row) in column.iter_mut().zip(&rows) {
                    *lane = row[xx];
                }
                let y = output_1d(&column);
                for (yy, value) in y.iter().enumerate().take(rows_valid) {
                    let value = add(*value, bias);
                    let rows = (ty * TILE + yy, ty_band * TILE + yy);
                    self.epilogue(b, rows, tx * TILE + xx, ch, value, out);
                }
            }
        }
    }

    /// Writes one pixel's 8 channels (`ch..ch + 8`) at output row `y` (row `y_band` of the
    /// band), column `x`.
    #[inline(always)]
    fn epilogue(
        &self,
        b: usize,
        (y, y_band): (usize, usize),
        x: usize,
        ch: usize,
        mut value: Lane,
        out: &mut BandOut,
    ) {
        let w = self.out_w;
        match out {
            BandOut::Act(band) => {
                let c = self.w.cout_p;
                let at = (y_band * w + x) * c + ch;
                if let Some(skip) = self.skip {
                    value = add(
                        value,
                        lane(&skip.data[((b * skip.h + y) * w + x) * c + ch..]),
                    );
                }
                if self.kind == OutKind::AddTo {
                    value = add(value, lane(&band[at..]));
                }
                if self.relu {
                    for v in &mut value {
                        *v = v.max(0.0);
                    }
                }
                band[at..][..LANES].copy_from_slice(&value);
            }
            BandOut::Planes(planes) => {
                let image = self.kind == OutKind::Image;
                debug_assert!(image || self.kind == OutKind::Planes);
                // This call holds channels ch..ch + 8 (planes past `cout` do not exist).
                for (plane, &v) in planes.iter_mut().skip(ch).zip(&value) {
                    // diffusers' `x.mul(2).sub(1)`, two roundings as there.
                    plane[y_band * w + x] = if image { v * 2.0 - 1.0 } else { v };
                }
            }
            BandOut::Rgba(band) => {
                debug_assert!(self.kind == OutKind::Rgba);
                let pixel = &mut band[(y_band * w + x) * 4..][..4];
                for (k, byte) in pixel.iter_mut().enumerate().take(self.w.cout) {
                    *byte = (value[k].clamp(0.0, 1.0) * 255.0).round() as u8;
                }
            }
        }
    }
}

#[inline(always)]
fn lane(s: &[f32]) -> Lane {
    let mut l = [0f32; LANES];
    l.copy_from_slice(&s[..LANES]);
    l
}

#[inline(always)]
fn add(a: Lane, b: Lane) -> Lane {
    let mut r = a;
    for (x, y) in r.iter_mut().zip(b) {
        *x += y;
    }
    r
}

/// `B^T d` along one direction of the patch, 8 channels at a time.
#[inline(always)]
fn input_1d(d: &[Lane; PATCH]) -> [Lane; PATCH] {
    let mut o = [[0f32; LANES]; PATCH];
    for l in 0..LANES {
        let [d0, d1, d2, d3, d4, d5] = [d[0][l], d[1][l], d[2][l], d[3][l], d[4][l], d[5][l]];
        let a = d4 - 4.0 * d2;
        let b = d3 - 4.0 * d1;
        let c = d4 - d2;
        let e = 2.0 * (d3 - d1);
        o[0][l] = 4.0 * d0 - 5.0 * d2 + d4;
        o[1][l] = a + b;
        o[2][l] = a - b;
        o[3][l] = c + e;
        o[4][l] = c - e;
        o[5][l] = 4.0 * d1 - 5.0 * d3 + d5;
    }
    o
}

/// `A^T m` along one direction, 8 channels at a time.
#[inline(always)]
fn output_1d(m: &[Lane; PATCH]) -> [Lane; TILE] {
    let mut o = [[0f32; LANES]; TILE];
    for l in 0..LANES {
        let [m0, m1, m2, m3, m4, m5] = [m[0][l], m[1][l], m[2][l], m[3][l], m[4][l], m[5][l]];
        let s12 = m1 + m2;
        let d12 = m1 - m2;
        let s34 = m3 + m4;
        let d34 = m3 - m4;
        o[0][l] = m0 + s12 + s34;
        o[1][l] = d12 + 2.0 * d34;
        o[2][l] = s12 + 4.0 * s34;
        o[3][l] = d12 + 8.0 * d34 + m5;
    }
    o
}

/// `c[r][..NV*8] (+)= sum_k a[r][k] * b[k][..NV*8]` for the MR rows r (row strides `lda`,
/// `ldc`; `b` packed `k x NV*8`); with `ACC` the sums start from `c` (a later block of
/// input channels), otherwise from zero.
#[inline(always)]
fn micro_kernel<const AVX: bool, const NV: usize, const ACC: bool>(
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    c: &mut [f32],
    ldc: usize,
) {
    let width = NV * LANES;
    assert!(a.len() >= (MR - 1) * lda + k && b.len() >= k * width);
    assert!(c.len() >= (MR - 1) * ldc + width);
    #[cfg(target_arch = "x86_64")]
    if AVX {
        // SAFETY: the bounds were checked above; `AVX` is only true inside `band_avx2`,
        // which runs after runtime detection of AVX2 and FMA.
        #[allow(unsafe_code)]
        unsafe {
            avx2::kernel::<NV, ACC>(k, a.as_ptr(), lda, b.as_ptr(), c.as_mut_ptr(), ldc)
        };
        return;
    }
    let mut acc = [[0f32; 2 * LANES]; MR];
    if ACC {
        for (r, acc) in acc.iter_mut().enumerate() {
            acc[..width].copy_from_slice(&c[r * ldc..][..width]);
        }
    }
    for kk in 0..k {
        let brow = &b[kk * width..][..width];
        for (r, acc) in acc.iter_mut().enumerate() {
            let av = a[r * lda + kk];
            for (x, bv) in acc.iter_mut().zip(brow) {
                *x += av * bv;
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        c[r * ldc..][..width].copy_from_slice(&acc[..width]);
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{LANES, MR};

    /// The AVX2/FMA micro-kernel: MR x (NV*8) accumulators in registers (12 for NV = 2),
    /// one broadcast of `a` and NV loads of `b` per MR*NV FMAs; with `ACC` the
    /// accumulators start from `c`.
    ///
    /// # Safety
    /// AVX2 and FMA must be available; `a` must hold `(MR-1)*lda + k` floats, `b` `k*NV*8`,
    /// `c` `(MR-1)*ldc + NV*8`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn kernel<const NV: usize, const ACC: bool>(
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); NV]; MR];
        if ACC {
            for (r, acc) in acc.iter_mut().enumerate() {
                for (j, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: r < MR and j < NV, inside the `(MR-1)*ldc + NV*8` floats of `c`.
                    *acc = unsafe { _mm256_loadu_ps(c.add(r * ldc + j * LANES)) };
                }
            }
        }
        for kk in 0..k {
            let mut bv = [_mm256_setzero_ps(); NV];
            for (j, bv) in bv.iter_mut().enumerate() {
                // SAFETY: kk < k and j < NV, inside the `k*NV*8` floats of `b`.
                *bv = unsafe { _mm256_loadu_ps(b.add((kk * NV + j) * LANES)) };
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: r < MR and kk < k, inside the `(MR-1)*lda + k` floats of `a`.
                let av = unsafe { _mm256_broadcast_ss(&*a.add(r * lda + kk)) };
                for (acc, bv) in acc.iter_mut().zip(&bv) {
                    *acc = _mm256_fmadd_ps(av, *bv, *acc);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (j, acc) in acc.iter().enumerate() {
                // SAFETY: r < MR and j < NV, inside the `(MR-1)*ldc + NV*8` floats of `c`.
                unsafe { _mm256_storeu_ps(c.add(r * ldc + j * LANES), *acc) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct convolution, f64 accumulation, on NHWC data.
    fn direct(
        input: &Act,
        up: usize,
        weight: &[f32],
        bias: &[f32],
        cout: usize,
        cin: usize,
    ) -> Vec<f64> {
        let (h, w) = (input.h * up, input.w * up);
        let mut out = vec![0f64; input.n * h * w * cout];
        for b in 0..input.n {
            for y in 0..h {
                for x in 0..w {
                    for co in 0..cout {
                        let mut s = f64::from(bias[co]);
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (yy, xx) = ((y + ky).wrapping_sub(1), (x + kx).wrapping_sub(1));
                                if yy >= h || xx >= w {
                                    continue;
                                }
                                let pix = ((b * input.h + yy / up) * input.w + xx / up) * input.c;
                                for ci in 0..cin {
                                    s += f64::from(input.data[pix + ci])
                                        * f64::from(weight[((co * cin + ci) * 3 + ky) * 3 + kx]);
                                }
                            }
                        }
                        out[((b * h + y) * w + x) * cout + co] = s;
                    }
                }
            }
        }
        out
    }

    fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn winograd_matches_direct_convolution() {
        // Odd sizes (partial tiles), channel counts that are not multiples of 8 or 16,
        // batch 2, with and without upsampling.
        for &(n, h, w, cin, cout, up) in &[
            (2, 5, 7, 3, 5, 1),
            (1, 9, 6, 16, 24, 1),
            (1, 3, 5, 8, 8, 2),
            (2, 7, 13, 13, 40, 1),
        ] {
            let nchw = pseudo_random(n * cin * h * w, 1);
            let input = Act::from_nchw(Vec::new(), &nchw, (n, cin, h, w), |x| x);
            let weight = pseudo_random(cout * cin * 9, 2);
            let bias = pseudo_random(cout, 3);
            let conv = Conv3x3::new(&weight, Some(&bias), cout, cin);
            let mut out = Act::reuse(Vec::new(), n, h * up, w * up, padded(cout));
            conv.forward(
                &input,
                up,
                Sink::Act {
                    out: &mut out,
                    skip: None,
                    relu: false,
                },
            );
            let expected = direct(&input, up, &weight, &bias, cout, cin);
            let cp = padded(cout);
            let mut worst = 0f64;
            let scale = expected.iter().fold(1f64, |m, v| m.max(v.abs()));
            for pix in 0..n * h * up * w * up {
                for co in 0..cp {
                    let got = f64::from(out.data[pix * cp + co]);
                    let want = if co < cout {
                        expected[pix * cout + co]
                    } else {
                        0.0
                    };
                    worst = worst.max((got - want).abs());
                }
            }
            // Winograd F(4x4, 3x3) in f32 stays within a few 1e-6 of the largest output
            // (its transforms scale values by up to ~100 before cancelling).
            let case = (n, h, w, cin, cout, up);
            eprintln!("{case:?}: max diff {worst:.3e}, largest value {scale:.2}");
            assert!(
                worst < 1e-5 * scale,
                "case {case:?}: max diff {worst}, scale {scale}"
            );
        }
    }

    /// Runs `conv` on `input` with `plan` into a fresh activation.
    fn with_plan(conv: &Conv3x3, plan: Plan, input: &Act, up: usize) -> Act {
        let mut out = Act::reuse(
            Vec::new(),
            input.n,
            input.h * up,
            input.w * up,
            conv.channels.cout_p,
        );
        let sink = Sink::Act {
            out: &mut out,
            skip: None,
            relu: false,
        };
        run(&conv.channels.packed(&conv.u), plan, input, up, sink);
        out
    }

    #[test]
    fn every_plan_gives_the_same_bits() {
        // Multi-row bands, chunks that split rows, input-channel blocks: each tile's sums
        // run in the same order, so the results must not differ in any bit.
        let (n, h, w, cin, cout) = (2, 9, 11, 40, 24);
        let nchw = pseudo_random(n * cin * h * w, 4);
        let input = Act::from_nchw(Vec::new(), &nchw, (n, cin, h, w), |x| x);
        let weight = pseudo_random(cout * cin * 9, 5);
        let bias = pseudo_random(cout, 6);
        let conv = Conv3x3::new(&weight, Some(&bias), cout, cin);
        for up in [1, 2] {
            let tiles = ((h * up).div_ceil(TILE), (w * up).div_ceil(TILE));
            let reference = with_plan(
                &conv,
                Plan::narrow(conv.channels.cin_p, tiles.0),
                &input,
                up,
            );
            for plan in [
                Plan {
                    bands: 2,
                    chunk: 6,
                    k_block: 8,
                },
                Plan {
                    bands: 3,
                    chunk: 36,
                    k_block: 16,
                },
                Plan {
                    bands: 1,
                    chunk: 96,
                    k_block: 24,
                },
                Plan::wide(conv.channels.cin_p, tiles.0, tiles.1, n),
            ] {
                let out = with_plan(&conv, plan, &input, up);
                assert!(out.data == reference.data, "plan {plan:?}, upsample {up}");
            }
        }
    }

    #[test]
    fn compact_conv_matches_conv3x3_and_adds_in_place() {
        let (n, h, w, cin, cout) = (1, 13, 7, 19, 21);
        let nchw = pseudo_random(n * cin * h * w, 7);
        let input = Act::from_nchw(Vec::new(), &nchw, (n, cin, h, w), |x| x);
        let weight = pseudo_random(cout * cin * 9, 8);
        let bias = pseudo_random(cout, 9);
        let direct_out = direct(&input, 1, &weight, &bias, cout, cin);
        let residual = pseudo_random(n * cout * h * w, 10);
        let compact = CompactConv3x3::new(&weight, Some(&bias), cout, cin);
        let mut u = vec![f32::NAN; 3]; // stale scratch contents must not leak in
        let mut out = Act::from_nchw(Vec::new(), &residual, (n, cout, h, w), |x| x);
        compact.forward(&input, 1, Sink::AddTo { out: &mut out }, &mut u);
        let mut planes = vec![0f32; n * cout * h * w];
        compact.forward(&input, 1, Sink::Planes { out: &mut planes }, &mut u);
        let cp = padded(cout);
        for pix in 0..h * w {
            for co in 0..cp {
                let got = out.data[pix * cp + co];
                if co >= cout {
                    assert_eq!(got, 0.0, "padded channel");
                    continue;
                }
                let conv = direct_out[pix * cout + co];
                let want = conv + f64::from(residual[co * h * w + pix]);
                assert!((f64::from(got) - want).abs() < 1e-4, "AddTo at {pix}/{co}");
                let plane = f64::from(planes[co * h * w + pix]);
                assert!((plane - conv).abs() < 1e-4, "Planes at {pix}/{co}");
            }
        }
    }
}
