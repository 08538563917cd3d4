//! The `VarBuilder` backend that adds a [`LoraSet`]'s deltas to the weights a component
//! builder reads.

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use super::{Component, LoraSet};

/// `inner`'s weights, patched.
pub(super) struct Patched {
    pub inner: VarBuilder<'static>,
    pub component: Component,
    pub set: LoraSet,
}

impl Patched {
    fn patched(&self, name: &str, weight: Tensor) -> candle_core::Result<Tensor> {
        let Some(deltas) = self.set.deltas_for(self.component, name) else {
            return Ok(weight);
        };
        let dtype = weight.dtype();
        let mut merged = weight.to_dtype(DType::F32)?;
        for delta in deltas {
            let update = delta.weight_delta(merged.dims()).map_err(|e| {
                candle_core::Error::Msg(format!(
                    "LoRA layer for `{name}` does not fit its weight {:?}: {e}",
                    merged.dims()
                ))
            })?;
            merged = (merged + update.to_device(weight.device())?)?;
        }
        merged.to_dtype(dtype)
    }
}

impl SimpleBackend for Patched {
    fn get(
        &self,
        s: Shape,
        name: &str,
        hint: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let weight = self.inner.get_with_hints_dtype(s, name, hint, dtype)?;
        self.patched(name, weight)?.to_device(dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let weight = self.inner.get_unchecked_dtype(name, dtype)?;
        self.patched(name, weight)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}
