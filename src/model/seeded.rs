//! Weights made in code from a seed, for any architecture: the demo model's, and the
//! random-weight decoders the benchmarks run (whose work does not depend on the weights).
//!
//! Its own file because both the demo model and the decoders build on it: the decoders
//! must not depend on the demo model, which is built from them.

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use rand::{Rng, SeedableRng};

/// Weights drawn from a generator seeded by `seed` and the tensor's name, following the
/// initialisation hint of each layer (PyTorch-like: N(0, 1/fan_in) for weights, the
/// constants for norms). Deterministic on every machine.
pub(crate) struct SeededWeights {
    pub seed: u64,
}

fn name_hash(name: &str) -> u64 {
    // FNV-1a: a stable hash (std's hasher may change between Rust versions).
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

impl SimpleBackend for SeededWeights {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        hint: Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.seed ^ name_hash(name));
        let count = shape.elem_count();
        let dims = shape.dims();
        let fan_in: usize = dims.iter().skip(1).product::<usize>().max(1);
        let values: Vec<f32> = match hint {
            Init::Const(v) => vec![v as f32; count],
            Init::Uniform { lo, up } => (0..count)
                .map(|_| rng.random_range(lo..up) as f32)
                .collect(),
            Init::Randn { mean, stdev } => (0..count)
                .map(|_| (mean + stdev * rng.sample::<f64, _>(rand_distr::StandardNormal)) as f32)
                .collect(),
            Init::Kaiming { .. } => {
                let std = (1.0 / fan_in as f64).sqrt();
                (0..count)
                    .map(|_| (std * rng.sample::<f64, _>(rand_distr::StandardNormal)) as f32)
                    .collect()
            }
        };
        Tensor::from_vec(values, shape, device)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("seeded weights are made by shape; `{name}` was asked without one")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        // Only what the architecture asks for exists: optional tensors are absent.
        false
    }
}

/// Weights for any architecture, drawn from `seed` and each tensor's name.
pub fn seeded_var_builder(seed: u64, device: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(SeededWeights { seed }), DType::F32, device.clone())
}
