//! Immerkaer's fast noise variance estimator ("Fast Noise Variance Estimation", Computer
//! Vision and Image Understanding 64(2), 1996): the image convolved with the difference of
//! two Laplacians,
//!
//! ```text
//!       |  1 -2  1 |
//!   N = | -2  4 -2 |
//!       |  1 -2  1 |
//! ```
//!
//! which cancels every plane and bilinear surface, so what is left of a smooth image is its
//! noise; for white Gaussian noise of deviation sigma the mean absolute response is
//! `6 sigma sqrt(2 / pi)`, hence
//!
//! ```text
//!   sigma = sqrt(pi / 2) / (6 (W - 2) (H - 2)) * sum over the interior of |I * N|
//! ```

use candle_core::{DType, Tensor};

use crate::model::Result;

/// Immerkaer's estimate of the noise deviation of one plane of `height` x `width` values
/// (row-major); `None` below 3 x 3, where the kernel has no interior pixel.
pub fn immerkaer_sigma(plane: &[f32], height: usize, width: usize) -> Option<f64> {
    if height < 3 || width < 3 || plane.len() != height * width {
        return None;
    }
    let at = |y: usize, x: usize| f64::from(plane[y * width + x]);
    let mut sum = 0f64;
    for y in 1..height - 1 {
        for x in 1..width - 1 {
            let corners = at(y - 1, x - 1) + at(y - 1, x + 1) + at(y + 1, x - 1) + at(y + 1, x + 1);
            let edges = at(y - 1, x) + at(y + 1, x) + at(y, x - 1) + at(y, x + 1);
            sum += (corners - 2.0 * edges + 4.0 * at(y, x)).abs();
        }
    }
    let interior = ((height - 2) * (width - 2)) as f64;
    Some((std::f64::consts::FRAC_PI_2).sqrt() * sum / (6.0 * interior))
}

/// The mean of [`immerkaer_sigma`] over the channels of the first image of `x` (B, C, H, W):
/// how noisy a tile's predicted clean latents still are. `None` below 3 x 3.
pub fn noise_estimate(x: &Tensor) -> Result<Option<f64>> {
    let (_, channels, height, width) = x.dims4()?;
    let values = x
        .narrow(0, 0, 1)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let plane = height * width;
    let mut total = 0.0;
    for c in 0..channels {
        match immerkaer_sigma(&values[c * plane..(c + 1) * plane], height, width) {
            Some(sigma) => total += sigma,
            None => return Ok(None),
        }
    }
    Ok(Some(total / channels.max(1) as f64))
}
