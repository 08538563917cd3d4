//! A candle `VarBuilder` backend over one memory-mapped checkpoint whose keys are not the
//! names the model builders ask for: each name is looked up through a renaming function
//! (see [`super::keys`]), the tensor is read from the map (f16 and bf16 converted as
//! read), and a fused OpenCLIP projection is cut to the third asked for.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use super::keys::Source;

/// Where a diffusers name is in the checkpoint, if anywhere.
pub(super) type Rename = Box<dyn Fn(&str) -> Option<Source> + Send + Sync>;

/// One component's view of the checkpoint.
pub(super) struct Renamed {
    pub file: Arc<MmapedSafetensors>,
    pub path: PathBuf,
    pub rename: Rename,
}

impl Renamed {
    /// The builder of a component, f32 on `device`.
    pub fn var_builder(self, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self), DType::F32, device.clone())
    }

    fn read(&self, name: &str, wanted: Option<&Shape>) -> candle_core::Result<Tensor> {
        let source = (self.rename)(name).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "{}: the original layout has no place for `{name}`",
                self.path.display()
            ))
        })?;
        let tensor = self.file.load(&source.key, &Device::Cpu).map_err(|_| {
            candle_core::Error::Msg(format!(
                "{}: missing tensor `{}` (for `{name}`)",
                self.path.display(),
                source.key
            ))
        })?;
        let tensor = match source.third {
            Some(third) => {
                let rows = tensor.dim(0)? / 3;
                tensor.narrow(0, third * rows, rows)?
            }
            None => tensor,
        };
        match wanted {
            Some(shape) if tensor.shape() != shape => {
                // A 1x1 convolution stored where a linear layer is asked for, or the reverse.
                let squeezed = |s: &Shape| -> Vec<usize> {
                    s.dims().iter().copied().filter(|&d| d != 1).collect()
                };
                if squeezed(tensor.shape()) == squeezed(shape) {
                    tensor.reshape(shape.clone())
                } else {
                    Err(candle_core::Error::Msg(format!(
                        "{}: tensor `{}` has shape {:?}, expected {:?} (for `{name}`): the \
                         model's config does not describe this checkpoint",
                        self.path.display(),
                        source.key,
                        tensor.dims(),
                        shape.dims()
                    )))
                }
            }
            _ => Ok(tensor),
        }
    }
}

impl SimpleBackend for Renamed {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _hint: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.read(name, Some(&s))?.to_dtype(dtype)?.to_device(dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.read(name, None)?.to_dtype(dtype)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        (self.rename)(name).is_some_and(|source| self.file.get(&source.key).is_ok())
    }
}
