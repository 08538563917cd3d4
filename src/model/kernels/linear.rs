//! Matrix products on the `gemm` crate, and the 1x1 convolutions / linear layers of the VAE
//! built on them.

use super::layout::{padded, Act};

/// A row-major matrix view: element (r, c) at `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub(super) struct Mat<'a> {
    pub(super) data: &'a [f32],
    pub(super) rs: usize,
    pub(super) cs: usize,
}

/// The last index a `rows x cols` view with strides `rs`, `cs` touches, plus one.
fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

/// `dst[m x n] = (dst +) lhs[m x k] * rhs[k x n]` on the `gemm` crate; `dst` rows `dst_rs`
/// apart, columns adjacent. `parallel` spreads it over the rayon pool (not from inside a
/// rayon task that already splits the work).
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat<'_>,
    rhs: Mat<'_>,
    parallel: bool,
) {
    assert!(dst.len() >= extent(m, n, dst_rs, 1), "matmul dst size");
    assert!(
        lhs.data.len() >= extent(m, k, lhs.rs, lhs.cs),
        "matmul lhs size"
    );
    assert!(
        rhs.data.len() >= extent(k, n, rhs.rs, rhs.cs),
        "matmul rhs size"
    );
    if m == 0 || n == 0 {
        return;
    }
    let parallelism = if parallel {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the three views were checked above to lie inside their slices; `dst` is
    // borrowed mutably, so it does not alias `lhs` or `rhs`.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// A 1x1 convolution (or a linear layer over the channels of every pixel).
#[derive(Debug, Clone)]
pub(crate) struct Conv1x1 {
    pub(super) cin: usize,
    pub(super) cout: usize,
    /// PyTorch layout `(cout, cin)`.
    pub(super) weight: Vec<f32>,
    /// Bias padded to the output's channel stride (zeros past `cout`).
    pub(super) bias: Vec<f32>,
}

impl Conv1x1 {
    /// From weights `(cout, cin)` (or `(cout, cin, 1, 1)`, the same floats) and a bias.
    pub fn new(weight: &[f32], bias: &[f32], cout: usize, cin: usize) -> Self {
        assert_eq!(weight.len(), cout * cin, "1x1 conv weight size");
        assert_eq!(bias.len(), cout, "1x1 conv bias size");
        let mut bias_p = vec![0f32; padded(cout)];
        bias_p[..cout].copy_from_slice(bias);
        Self {
            cin,
            cout,
            weight: weight.to_vec(),
            bias: bias_p,
        }
    }

    /// Padded output channels.
    pub fn out_channels_padded(&self) -> usize {
        self.bias.len()
    }

    /// `out = x W^T + b` per pixel (`out` fully written, padded channels zero).
    pub fn forward(&self, x: &Act, out: &mut Act) {
        assert_eq!(x.c, padded(self.cin), "1x1 conv input channels");
        assert_eq!(
            (out.n, out.h, out.w, out.c),
            (x.n, x.h, x.w, self.bias.len())
        );
        let pixels = x.n * x.h * x.w;
        self.forward_rows(pixels, &x.data, x.c, &mut out.data, out.c, true);
    }

    /// `dst[r] = src[r] W^T + b` for `rows` rows of `src` (stride `src_rs`) into `dst`
    /// (stride `dst_rs`, columns past `cout` set to the padded bias, i.e. zero).
    pub(super) fn forward_rows(
        &self,
        rows: usize,
        src: &[f32],
        src_rs: usize,
        dst: &mut [f32],
        dst_rs: usize,
        parallel: bool,
    ) {
        let width = self.bias.len().min(dst_rs);
        for row in dst.chunks_mut(dst_rs).take(rows) {
            row[..width].copy_from_slice(&self.bias[..width]);
        }
        let lhs = Mat {
            data: src,
            rs: src_rs,
            cs: 1,
        };
        // rhs[k][n] = W[n][k]
        let rhs = Mat {
            data: &self.weight,
            rs: 1,
            cs: self.cin,
        };
        matmul(
            (rows, self.cout, self.cin),
            dst,
            dst_rs,
            true,
            lhs,
            rhs,
            parallel,
        );
    }
}
