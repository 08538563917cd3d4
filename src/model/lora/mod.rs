//! LoRA files merged into the UNet and text-encoder weights as they load: `W + strength x
//! (alpha / rank) x up @ down` for every layer a LoRA names.
//!
//! Two key layouts are read:
//! * **kohya / A1111** (`lora_unet_<module>.lora_down.weight`, `.lora_up.weight`, `.alpha`;
//!   the SD 1 text encoder as `lora_te_` or `lora_te1_`): module paths flattened with `_`;
//!   each layer carries its alpha (the rank when absent).
//! * **diffusers / PEFT** (`unet.<module>.lora_A.weight`, `.lora_B.weight`, and the text
//!   encoder under `text_encoder.`; older files `.lora.down.weight` / `.lora.up.weight`):
//!   alpha and rank live only in the file's header metadata (`lora_adapter_metadata`, with
//!   per-module `alpha_pattern` / `rank_pattern`); without it alpha = rank (scale 1), as
//!   diffusers assumes.
//!
//! The deltas are added by a `VarBuilder` [`backend`] wrapped around a component's weights,
//! so folders and single-file checkpoints take LoRAs alike. A LoRA whose layers match none
//! of a model's weights is an error naming the file.

mod backend;
mod file;

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::Tensor;
use candle_nn::VarBuilder;
use parking_lot::Mutex;

pub use self::file::{parse_lora_arg, LoraSpec};
use super::{ModelError, Result};

/// Which model component a LoRA layer patches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Component {
    Unet,
    TextEncoder,
}

/// One layer's low-rank update: `scale x up @ down`.
#[derive(Clone, Debug)]
struct Delta {
    down: Tensor,
    up: Tensor,
    scale: f64,
}

impl Delta {
    /// The update in the weight's own shape (`(out, in)` or `(out, in, kh, kw)`).
    fn weight_delta(&self, shape: &[usize]) -> candle_core::Result<Tensor> {
        let rank = self.down.dim(0)?;
        let down = self
            .down
            .to_dtype(candle_core::DType::F32)?
            .reshape((rank, ()))?;
        let up = self.up.to_dtype(candle_core::DType::F32)?;
        let out = up.dim(0)?;
        let up = up.reshape((out, rank))?;
        (up.matmul(&down)? * self.scale)?.reshape(shape)
    }
}

/// The LoRAs of one load: per component, the deltas by flattened module path
/// (`down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q`), and which of them a
/// model weight took.
#[derive(Clone, Default)]
pub struct LoraSet {
    files: Vec<LoraSpec>,
    deltas: Arc<HashMap<(Component, String), Vec<Delta>>>,
    /// (file index, component, module) of every layer, and whether a weight took it.
    used: Arc<Mutex<HashMap<(Component, String), bool>>>,
    /// Which file each layer came from.
    origin: Arc<HashMap<(Component, String), Vec<usize>>>,
}

impl std::fmt::Debug for LoraSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoraSet")
            .field("files", &self.files)
            .finish()
    }
}

impl LoraSet {
    /// Reads every LoRA file (errors name the file).
    pub fn load(specs: &[LoraSpec]) -> Result<Self> {
        let mut deltas: HashMap<(Component, String), Vec<Delta>> = HashMap::new();
        let mut origin: HashMap<(Component, String), Vec<usize>> = HashMap::new();
        for (index, spec) in specs.iter().enumerate() {
            for (key, layer) in file::read_layers(&spec.path, spec.strength)? {
                deltas.entry(key.clone()).or_default().push(layer);
                origin.entry(key).or_default().push(index);
            }
        }
        let used = deltas.keys().map(|k| (k.clone(), false)).collect();
        Ok(Self {
            files: specs.to_vec(),
            deltas: Arc::new(deltas),
            used: Arc::new(Mutex::new(used)),
            origin: Arc::new(origin),
        })
    }

    /// Whether there is nothing to merge.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The files, with their strengths.
    pub fn files(&self) -> &[LoraSpec] {
        &self.files
    }

    /// `vb` with this set's deltas for `component` added to the weights it gives.
    pub fn patch(&self, vb: VarBuilder<'static>, component: Component) -> VarBuilder<'static> {
        if self.is_empty() {
            return vb;
        }
        let (dtype, device) = (vb.dtype(), vb.device().clone());
        VarBuilder::from_backend(
            Box::new(backend::Patched {
                inner: vb,
                component,
                set: self.clone(),
            }),
            dtype,
            device,
        )
    }

    /// The deltas for the weight `name` of `component`, marking them used.
    fn deltas_for(&self, component: Component, name: &str) -> Option<&[Delta]> {
        let module = name.strip_suffix(".weight")?;
        let module = module.strip_prefix("text_model.").unwrap_or(module);
        let key = (component, module.replace('.', "_"));
        let found = self.deltas.get(&key)?;
        if let Some(flag) = self.used.lock().get_mut(&key) {
            *flag = true;
        }
        Some(found)
    }

    /// After the model is built: an error naming each file none of whose layers matched a
    /// weight (the wrong base model, or an unsupported layout); a log line for files that
    /// matched only in part.
    pub fn check_matched(&self) -> Result<()> {
        let used = self.used.lock();
        for (index, spec) in self.files.iter().enumerate() {
            let layers: Vec<(&(Component, String), bool)> = used
                .iter()
                .filter(|(key, _)| self.origin.get(*key).is_some_and(|o| o.contains(&index)))
                .map(|(key, &taken)| (key, taken))
                .collect();
            let taken = layers.iter().filter(|(_, t)| *t).count();
            if taken == 0 {
                let example = layers
                    .first()
                    .map(|((_, module), _)| module.clone())
                    .unwrap_or_default();
                return Err(ModelError::bad_file(
                    &spec.path,
                    format!(
                        "none of its {} LoRA layers matches a weight of this model (e.g. \
                         `{example}`): a LoRA for another base model?",
                        layers.len()
                    ),
                ));
            }
            if taken < layers.len() {
                tracing::warn!(
                    "{}: {} of its {} LoRA layers match this model; the rest are ignored",
                    spec.path.display(),
                    taken,
                    layers.len()
                );
            }
        }
        Ok(())
    }
}

/// Where a LoRA came from, for names in the window and the logs.
pub fn describe(specs: &[LoraSpec]) -> String {
    specs
        .iter()
        .map(|s| {
            let name = s
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            format!("{name} x{}", s.strength)
        })
        .collect::<Vec<_>>()
        .join(", ")
}
