//! The batched strided matrix product (`gemm.wgsl`) and the linear layer on top of it.

use super::products::Product;
use super::{word, GpuError, GpuTensor, Nn};

/// Element (b, i, j) of a matrix at `offset + b*batch_stride + i*row_stride + j*col_stride`.
#[derive(Clone, Copy)]
pub struct MatView<'a> {
    /// The tensor read.
    pub tensor: &'a GpuTensor,
    /// Index of element (0, 0, 0).
    pub offset: usize,
    /// Elements between batches.
    pub batch_stride: usize,
    /// Elements between rows.
    pub row_stride: usize,
    /// Elements between columns.
    pub col_stride: usize,
}

impl<'a> MatView<'a> {
    /// A row-major (rows, cols) matrix per batch, batches one after another.
    pub fn row_major(tensor: &'a GpuTensor, rows: usize, cols: usize) -> Self {
        Self {
            tensor,
            offset: 0,
            batch_stride: rows * cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// Errors unless every element of a (batch, rows, cols) view lies in the tensor (the
    /// shader's bounds-check-free access rests on it: `products::product_module`).
    fn check(&self, batch: usize, rows: usize, cols: usize, what: &str) -> Result<(), GpuError> {
        if batch == 0 || rows == 0 || cols == 0 {
            return Ok(());
        }
        // In u128: a wrapped sum must not pass for a small index.
        let last = self.offset as u128
            + (batch - 1) as u128 * self.batch_stride as u128
            + (rows - 1) as u128 * self.row_stride as u128
            + (cols - 1) as u128 * self.col_stride as u128;
        if last >= self.tensor.len() as u128 {
            return Err(GpuError::BadInput(format!(
                "gemm {what}: a ({batch}, {rows}, {cols}) view at offset {} with strides \
                 ({}, {}, {}) reaches element {last} of a tensor of {} ({:?})",
                self.offset,
                self.batch_stride,
                self.row_stride,
                self.col_stride,
                self.tensor.len(),
                self.tensor.shape()
            )));
        }
        Ok(())
    }
}

/// The sizes of a batched product: `batch` times (m x k) (k x n).
#[derive(Clone, Copy, Debug)]
pub struct GemmDims {
    /// Number of products.
    pub batch: usize,
    /// Rows of A and C.
    pub m: usize,
    /// Columns of B and C.
    pub n: usize,
    /// Columns of A, rows of B.
    pub k: usize,
}

/// Added to C[b][i][j]: `Row(v)` adds v[i] (length m), `Col(v)` adds v[j] (length n).
#[derive(Clone, Copy)]
pub enum Bias<'a> {
    /// No bias.
    None,
    /// One value per row of C.
    Row(&'a GpuTensor),
    /// One value per column of C.
    Col(&'a GpuTensor),
}

/// The new output tensor's shape and where C[b][i][j] goes in it.
#[derive(Clone, Debug)]
pub struct OutSpec {
    /// Shape of the output tensor.
    pub shape: Vec<usize>,
    /// Elements between batches.
    pub batch_stride: usize,
    /// Elements between rows.
    pub row_stride: usize,
    /// Elements between columns.
    pub col_stride: usize,
}

/// A linear layer's weights on the GPU: `wt` is W transposed, (K, O) row-major (gemm's B
/// with row_stride O, col_stride 1, batch_stride 0), stored in the [`Nn`]'s precision
/// (f32 or f16); the bias is f32.
pub struct LinearWeights {
    /// W transposed, (in_features, out_features), f32 or f16.
    pub wt: GpuTensor,
    /// (out_features).
    pub bias: Option<GpuTensor>,
    /// K.
    pub in_features: usize,
    /// O.
    pub out_features: usize,
}

impl LinearWeights {
    /// `weight` is PyTorch's (O, K) row-major (also a 1x1 conv's (O, K, 1, 1)).
    pub fn new(
        nn: &Nn,
        weight: &[f32],
        bias: Option<&[f32]>,
        out_features: usize,
        in_features: usize,
    ) -> Result<Self, GpuError> {
        if weight.len() != out_features * in_features {
            return Err(GpuError::BadInput(format!(
                "linear weight has {} values, ({out_features}, {in_features}) needs {}",
                weight.len(),
                out_features * in_features
            )));
        }
        if let Some(bias) = bias {
            if bias.len() != out_features {
                return Err(GpuError::BadInput(format!(
                    "linear bias has {} values, the layer has {out_features} outputs",
                    bias.len()
                )));
            }
        }
        let mut wt = vec![0f32; weight.len()];
        for (o, row) in weight.chunks_exact(in_features.max(1)).enumerate() {
            for (k, &w) in row.iter().enumerate() {
                wt[k * out_features + o] = w;
            }
        }
        Ok(Self {
            wt: nn.upload_weights(&wt, &[in_features, out_features])?,
            bias: bias.map(|b| nn.upload(b, &[out_features])).transpose()?,
            in_features,
            out_features,
        })
    }
}

impl Nn {
    /// Batched strided matrix product C = A B (+ bias) (+ residual, read through its view,
    /// added after the bias) into a new tensor laid out by `out`. A or B may be f16 (a weight
    /// matrix; needs `SHADER_F16`), bias and residual are f32; sums are f32.
    pub fn gemm(
        &self,
        a: MatView,
        b: MatView,
        dims: GemmDims,
        bias: Bias,
        residual: Option<MatView>,
        out: OutSpec,
    ) -> Result<GpuTensor, GpuError> {
        let GemmDims { batch, m, n, k } = dims;
        let kernel = self.product_kernel(Product::Gemm {
            a: a.tensor.precision(),
            b: b.tensor.precision(),
        })?;
        a.check(batch, m, k, "A")?;
        b.check(batch, k, n, "B")?;
        if let Some(r) = &residual {
            r.check(batch, m, n, "residual")?;
        }
        let (bias_mode, bias_tensor) = match bias {
            Bias::None => (0, None),
            Bias::Row(v) => (1, Some((v, m))),
            Bias::Col(v) => (2, Some((v, n))),
        };
        if let Some((v, want)) = bias_tensor {
            if v.len() != want {
                return Err(GpuError::BadInput(format!(
                    "gemm bias has {} values, needs {want}",
                    v.len()
                )));
            }
        }
        let out_len: usize = out.shape.iter().product();
        if batch > 0 && m > 0 && n > 0 {
            let last = (batch - 1) as u128 * out.batch_stride as u128
                + (m - 1) as u128 * out.row_stride as u128
                + (n - 1) as u128 * out.col_stride as u128;
            if last >= out_len as u128 {
                return Err(GpuError::BadInput(format!(
                    "gemm output: element {last} is beyond the output shape {:?}",
                    out.shape
                )));
            }
        }
        let c = self.output(&out.shape, "gemm output")?;
        let tiles_m = m.div_ceil(64);
        let tiles_n = n.div_ceil(64);
        let r = residual.unwrap_or(MatView {
            tensor: &c,
            offset: 0,
            batch_stride: 0,
            row_stride: 0,
            col_stride: 0,
        });
        let params = [
            word(batch, "gemm batch")?,
            word(m, "gemm m")?,
            word(n, "gemm n")?,
            word(k, "gemm k")?,
            word(a.offset, "offset")?,
            word(a.batch_stride, "stride")?,
            word(a.row_stride, "stride")?,
            word(a.col_stride, "stride")?,
            word(b.offset, "offset")?,
            word(b.batch_stride, "stride")?,
            word(b.row_stride, "stride")?,
            word(b.col_stride, "stride")?,
            word(out.batch_stride, "stride")?,
            word(out.row_stride, "stride")?,
            word(out.col_stride, "stride")?,
            bias_mode,
            word(r.offset, "offset")?,
            word(r.batch_stride, "stride")?,
            word(r.row_stride, "stride")?,
            word(r.col_stride, "stride")?,
            u32::from(residual.is_some()),
            word(tiles_m, "gemm tiles")?,
            word(tiles_n, "gemm tiles")?,
            0,
        ];
        self.dispatch(
            &kernel,
            &params,
            &[
                a.tensor,
                b.tensor,
                self.or_dummy(bias_tensor.map(|(v, _)| v)),
                self.or_dummy(residual.map(|r| r.tensor)),
            ],
            &c,
            (batch * tiles_m * tiles_n) as u64,
        )?;
        self.add_flops(2 * (batch * m * n * k) as u64);
        Ok(c)
    }

    /// x (.., K) -> (.., O) = x W^T + b (+ residual, of the output's shape).
    pub fn linear(
        &self,
        x: &GpuTensor,
        w: &LinearWeights,
        residual: Option<&GpuTensor>,
    ) -> Result<GpuTensor, GpuError> {
        let (k, o) = (w.in_features, w.out_features);
        let Some((&last, lead)) = x.shape().split_last() else {
            return Err(GpuError::BadInput("linear input is a scalar".into()));
        };
        if last != k {
            return Err(GpuError::BadInput(format!(
                "linear input {:?} must end in {k} features",
                x.shape()
            )));
        }
        let rows: usize = lead.iter().product();
        let mut shape = lead.to_vec();
        shape.push(o);
        if let Some(r) = residual {
            super::expect_shape(r, &shape, "linear residual")?;
        }
        self.gemm(
            MatView::row_major(x, rows, k),
            MatView {
                tensor: &w.wt,
                offset: 0,
                batch_stride: 0,
                row_stride: o,
                col_stride: 1,
            },
            GemmDims {
                batch: 1,
                m: rows,
                n: o,
                k,
            },
            w.bias.as_ref().map_or(Bias::None, Bias::Col),
            residual.map(|r| MatView::row_major(r, rows, o)),
            OutSpec {
                shape,
                batch_stride: rows * o,
                row_stride: o,
                col_stride: 1,
            },
        )
    }
}
