//! Reading a model's weights (a candle `VarBuilder`, as the CPU model loads them: folder,
//! single file, LoRA-patched or seeded) into GPU buffers, each checked for its shape by
//! name.

use candle_core::DType;
use candle_nn::VarBuilder;

use crate::gpu::nn::{Conv3x3Weights, GpuTensor, LinearWeights, Nn};
use crate::model::{ModelError, Result};

/// The values of tensor `name` under `vb`, of `shape`, as f32.
pub(super) fn values(vb: &VarBuilder, shape: &[usize], name: &str) -> Result<Vec<f32>> {
    let tensor = vb.get(shape, name)?;
    Ok(tensor
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

/// A GPU error while uploading, named after the tensor.
pub(super) fn upload_error(vb: &VarBuilder, name: &str, e: impl std::fmt::Display) -> ModelError {
    ModelError::Invalid(format!("cannot put {}.{name} on the GPU: {e}", vb.prefix()))
}

/// Tensor `name` of `shape` on the GPU.
pub(super) fn tensor(nn: &Nn, vb: &VarBuilder, shape: &[usize], name: &str) -> Result<GpuTensor> {
    let data = values(vb, shape, name)?;
    nn.upload(&data, shape)
        .map_err(|e| upload_error(vb, name, e))
}

/// A linear layer `in_features -> out_features` (`weight`, and `bias` when it has one).
pub(super) fn linear(
    nn: &Nn,
    vb: &VarBuilder,
    in_features: usize,
    out_features: usize,
    bias: bool,
) -> Result<LinearWeights> {
    let weight = values(vb, &[out_features, in_features], "weight")?;
    let bias = match bias {
        true => Some(values(vb, &[out_features], "bias")?),
        false => None,
    };
    LinearWeights::new(nn, &weight, bias.as_deref(), out_features, in_features)
        .map_err(|e| upload_error(vb, "weight", e))
}

/// A 1x1 convolution as the linear layer it is (weight (O, I, 1, 1), bias).
pub(super) fn conv1x1(
    nn: &Nn,
    vb: &VarBuilder,
    in_channels: usize,
    out_channels: usize,
) -> Result<LinearWeights> {
    let weight = values(vb, &[out_channels, in_channels, 1, 1], "weight")?;
    let bias = values(vb, &[out_channels], "bias")?;
    LinearWeights::new(nn, &weight, Some(&bias), out_channels, in_channels)
        .map_err(|e| upload_error(vb, "weight", e))
}

/// A 3x3 convolution with its bias, or with `bias_into` given: without it (the caller
/// folds the bias into something it adds anyway) and the bias returned there.
pub(super) fn conv3x3(
    nn: &Nn,
    vb: &VarBuilder,
    in_channels: usize,
    out_channels: usize,
    bias_into: Option<&mut Vec<f32>>,
) -> Result<Conv3x3Weights> {
    let weight = values(vb, &[out_channels, in_channels, 3, 3], "weight")?;
    let bias = values(vb, &[out_channels], "bias")?;
    let kept = match bias_into {
        Some(out) => {
            *out = bias;
            None
        }
        None => Some(bias),
    };
    Conv3x3Weights::new(nn, &weight, kept.as_deref(), out_channels, in_channels)
        .map_err(|e| upload_error(vb, "weight", e))
}

/// A normalisation's affine parameters (GroupNorm, LayerNorm): `weight`, `bias`.
pub(super) struct Affine {
    pub gamma: GpuTensor,
    pub beta: GpuTensor,
}

impl Affine {
    pub(super) fn load(nn: &Nn, vb: &VarBuilder, channels: usize) -> Result<Self> {
        Ok(Self {
            gamma: tensor(nn, vb, &[channels], "weight")?,
            beta: tensor(nn, vb, &[channels], "bias")?,
        })
    }
}
