//! Linear layers (`y = x W^T + b` over the last axis) on `gemm`, with the weights laid out
//! once at load as `W^T` (input x output, rows contiguous: what `gemm` packs fastest), and
//! diffusers' GEGLU (`value * gelu(gate)`, the exact erf GELU) done in one parallel pass
//! over the projection's rows.
//!
//! The UNet's and the text encoders' projections and feed-forwards ran on candle-nn's
//! `Linear`; its matmul uses candle's own thread pool beside rayon's (two pools on two
//! cores, one spinning at a barrier while the other works: a quarter of the samples of a
//! CLIP run under load), and its erf GELU is a scalar pass over a copy.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::linear::{matmul, Mat};

/// Rows per rayon task of the element-wise passes.
const ROWS_PER_TASK: usize = 64;

/// A linear layer whose weights are `W^T`, `in_dim x out_dim`, row-major.
#[derive(Debug, Clone)]
pub(crate) struct Dense {
    in_dim: usize,
    out_dim: usize,
    weight_t: Vec<f32>,
    bias: Option<Vec<f32>>,
}

impl Dense {
    /// Reads `weight` (`out_dim x in_dim`, PyTorch's layout, any float type) and, when
    /// `bias`, `bias` from `vb`, and lays them out for `gemm`.
    pub(crate) fn load(
        vb: &VarBuilder,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
    ) -> candle_core::Result<Self> {
        // candle-nn's `linear` hints, so seeded weights (the demo model, the bench) are
        // what they were with its `Linear`: Kaiming normal, bias uniform in +-1/sqrt(in).
        let weight = vb.get_with_hints(
            (out_dim, in_dim),
            "weight",
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
        )?;
        let weight_t = weight
            .to_dtype(DType::F32)?
            .t()?
            .contiguous()?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let bias = if bias {
            let bound = 1.0 / (in_dim as f64).sqrt();
            let hint = candle_nn::Init::Uniform {
                lo: -bound,
                up: bound,
            };
            Some(
                vb.get_with_hints(out_dim, "bias", hint)?
                    .to_dtype(DType::F32)?
                    .to_vec1::<f32>()?,
            )
        } else {
            None
        };
        Ok(Self {
            in_dim,
            out_dim,
            weight_t,
            bias,
        })
    }

    /// `dst[r] = src[r] W^T + b` for `rows` rows of `src` (`in_dim` wide) into `dst`
    /// (`out_dim` wide), the product split over the rayon pool.
    pub(crate) fn forward_rows(&self, rows: usize, src: &[f32], dst: &mut [f32]) {
        let (k, n) = (self.in_dim, self.out_dim);
        assert_eq!(src.len(), rows * k, "dense input size");
        assert_eq!(dst.len(), rows * n, "dense output size");
        match &self.bias {
            Some(bias) => dst
                .par_chunks_mut(n * ROWS_PER_TASK)
                .for_each(|block| block.chunks_mut(n).for_each(|r| r.copy_from_slice(bias))),
            None => dst.fill(0.0),
        }
        let lhs = Mat {
            data: src,
            rs: k,
            cs: 1,
        };
        let rhs = Mat {
            data: &self.weight_t,
            rs: n,
            cs: 1,
        };
        matmul((rows, n, k), dst, n, true, lhs, rhs, true);
    }

    /// The layer on a candle tensor `(..., in_dim)`: `(..., out_dim)`, f32 on the CPU.
    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_then(x, |_| {})
    }

    /// [`Self::forward`] with `activation` applied to the output values in place.
    pub(crate) fn forward_then(
        &self,
        x: &Tensor,
        activation: impl FnOnce(&mut [f32]),
    ) -> candle_core::Result<Tensor> {
        let (rows, src, mut dims) = rows_of(x, self.in_dim)?;
        let mut dst = vec![0f32; rows * self.out_dim];
        self.forward_rows(rows, &src, &mut dst);
        activation(&mut dst);
        *dims.last_mut().expect("rows_of checked the rank") = self.out_dim;
        Tensor::from_vec(dst, dims, &Device::Cpu)
    }

    /// diffusers' GEGLU feed-forward input: this projection (to `2 x inner`: value, then
    /// gate), then `value * gelu(gate)`, `(..., inner)`.
    pub(crate) fn forward_geglu(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (rows, src, mut dims) = rows_of(x, self.in_dim)?;
        let mut h = vec![0f32; rows * self.out_dim];
        self.forward_rows(rows, &src, &mut h);
        let inner = self.out_dim / 2;
        let out = geglu_rows(&h, inner);
        *dims.last_mut().expect("rows_of checked the rank") = inner;
        Tensor::from_vec(out, dims, &Device::Cpu)
    }
}

/// The rows of `x` (`(..., width)`) as one f32 slice: their count, the values, the shape.
fn rows_of(x: &Tensor, width: usize) -> candle_core::Result<(usize, Vec<f32>, Vec<usize>)> {
    let dims = x.dims().to_vec();
    match dims.last() {
        Some(&w) if w == width => {}
        _ => candle_core::bail!("dense layer of input width {width} got shape {dims:?}"),
    }
    let rows = dims[..dims.len() - 1].iter().product();
    let values = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok((rows, values, dims))
}

/// `value * gelu(gate)` for rows of `[value (inner) | gate (inner)]`, the exact erf GELU
/// (`0.5 g (1 + erf(g / sqrt 2))`, as PyTorch's `F.gelu` default).
pub(crate) fn geglu_rows(h: &[f32], inner: usize) -> Vec<f32> {
    let rows = h.len() / (2 * inner);
    let mut out = vec![0f32; rows * inner];
    out.par_chunks_mut(inner * ROWS_PER_TASK)
        .zip(h.par_chunks(2 * inner * ROWS_PER_TASK))
        .for_each(|(out, h)| {
            for (o, row) in out.chunks_mut(inner).zip(h.chunks(2 * inner)) {
                let (value, gate) = row.split_at(inner);
                for ((o, &v), &g) in o.iter_mut().zip(value).zip(gate) {
                    *o = v * gelu(g);
                }
            }
        });
    out
}

/// The exact (erf) GELU.
pub(crate) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// The GELU of every value, in place, over the rayon pool.
pub(crate) fn gelu_in_place(values: &mut [f32]) {
    values
        .par_chunks_mut(4096)
        .for_each(|chunk| chunk.iter_mut().for_each(|v| *v = gelu(*v)));
}

/// OpenAI CLIP's quick GELU, `x sigmoid(1.702 x)`, in place over the rayon pool.
pub(crate) fn quick_gelu_in_place(values: &mut [f32]) {
    values.par_chunks_mut(4096).for_each(|chunk| {
        chunk
            .iter_mut()
            .for_each(|v| *v /= 1.0 + (-1.702 * *v).exp())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_matches_the_erf_definition() {
        // Values of 0.5 x (1 + erf(x / sqrt 2)) x in f64.
        for (x, expected) in [
            (0.0f32, 0.0f64),
            (1.0, 0.841_344_746_068_543),
            (-1.0, -0.158_655_253_931_457),
            (3.0, 2.995_950_245_373_11),
            (-5.0, -1.433_257_1e-6),
        ] {
            let got = f64::from(gelu(x));
            assert!((got - expected).abs() < 1e-6, "gelu({x}) = {got}");
        }
    }
}
