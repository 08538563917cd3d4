//! Reading one LoRA file: its layers in the kohya or the diffusers/PEFT layout, each with
//! its scale (strength x alpha / rank).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::{Component, Delta};
use crate::model::{ModelError, Result};

/// A LoRA file and its strength (`--lora FILE[:STRENGTH]`).
#[derive(Clone, Debug, PartialEq)]
pub struct LoraSpec {
    pub path: PathBuf,
    /// How much of the LoRA to add: 1 as trained, 0 none, negative to subtract.
    pub strength: f64,
}

/// The largest strength magnitude accepted: past a few the weights are noise.
const MAX_STRENGTH: f64 = 10.0;

/// `FILE` or `FILE:STRENGTH` (a path may hold `:` itself: only a number after the last
/// one is a strength).
pub fn parse_lora_arg(arg: &str) -> std::result::Result<LoraSpec, String> {
    let (path, strength) = match arg.rsplit_once(':') {
        Some((path, number)) if !path.is_empty() => match number.parse::<f64>() {
            Ok(strength) => (path, strength),
            Err(_) => (arg, 1.0),
        },
        _ => (arg, 1.0),
    };
    if !(strength.is_finite() && strength.abs() <= MAX_STRENGTH) {
        return Err(format!(
            "LoRA strength must be a number between -{MAX_STRENGTH} and {MAX_STRENGTH}, not \
             {strength}"
        ));
    }
    Ok(LoraSpec {
        path: PathBuf::from(path),
        strength,
    })
}

/// The parts of one layer as found in the file.
#[derive(Default)]
struct Parts {
    down: Option<Tensor>,
    up: Option<Tensor>,
    alpha: Option<f64>,
    /// The module path with dots, when the layout keeps them (PEFT), for its patterns.
    dotted: Option<String>,
}

/// What a key names: (component, flattened module, which part).
fn classify(key: &str) -> Option<(Component, String, Option<String>, &'static str)> {
    // kohya / A1111.
    for (prefix, component) in [
        ("lora_unet_", Component::Unet),
        ("lora_te1_", Component::TextEncoder),
        ("lora_te_", Component::TextEncoder),
    ] {
        if let Some(rest) = key.strip_prefix(prefix) {
            let (module, part) = if let Some(m) = rest.strip_suffix(".lora_down.weight") {
                (m, "down")
            } else if let Some(m) = rest.strip_suffix(".lora_up.weight") {
                (m, "up")
            } else if let Some(m) = rest.strip_suffix(".alpha") {
                (m, "alpha")
            } else {
                return None;
            };
            let module = module.strip_prefix("text_model_").unwrap_or(module);
            return Some((component, module.to_string(), None, part));
        }
    }
    // diffusers / PEFT, and the older diffusers `.lora.down` naming.
    let (component, rest) = if let Some(rest) = key.strip_prefix("unet.") {
        (Component::Unet, rest)
    } else if let Some(rest) = key.strip_prefix("text_encoder.") {
        (Component::TextEncoder, rest)
    } else {
        (Component::Unet, key)
    };
    let (module, part) = [
        (".lora_A.weight", "down"),
        (".lora_B.weight", "up"),
        (".lora.down.weight", "down"),
        (".lora.up.weight", "up"),
        (".alpha", "alpha"),
    ]
    .iter()
    .find_map(|(suffix, part)| rest.strip_suffix(suffix).map(|m| (m, *part)))?;
    let module = module.strip_prefix("text_model.").unwrap_or(module);
    Some((
        component,
        module.replace('.', "_"),
        Some(module.to_string()),
        part,
    ))
}

/// The `lora_adapter_metadata` diffusers writes in the safetensors header: per component,
/// `r`, `lora_alpha`, `alpha_pattern`, `rank_pattern`, `use_rslora` (stored flattened as
/// `unet.lora_alpha`, ... or nested under `unet`).
#[derive(Default, Debug)]
struct AdapterConfig {
    rank: Option<f64>,
    alpha: Option<f64>,
    alpha_pattern: HashMap<String, f64>,
    rank_pattern: HashMap<String, f64>,
    rslora: bool,
}

impl AdapterConfig {
    fn from_metadata(metadata: &serde_json::Value, component: Component) -> Self {
        let prefix = match component {
            Component::Unet => "unet",
            Component::TextEncoder => "text_encoder",
        };
        let field = |name: &str| -> Option<&serde_json::Value> {
            metadata
                .get(format!("{prefix}.{name}"))
                .or_else(|| metadata.get(prefix)?.get(name))
        };
        let pattern = |name: &str| -> HashMap<String, f64> {
            field(name)
                .and_then(|p| p.as_object())
                .map(|map| {
                    map.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
                        .collect()
                })
                .unwrap_or_default()
        };
        Self {
            rank: field("r").and_then(|v| v.as_f64()),
            alpha: field("lora_alpha").and_then(|v| v.as_f64()),
            alpha_pattern: pattern("alpha_pattern"),
            rank_pattern: pattern("rank_pattern"),
            rslora: field("use_rslora")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
        }
    }

    /// PEFT's scale of a layer of `rank`: alpha / r (alpha / sqrt(r) with rsLoRA), the
    /// patterns matched against the end of the module's dotted path.
    fn scale(&self, dotted: &str, rank: usize) -> Option<f64> {
        let matching = |pattern: &HashMap<String, f64>| {
            pattern
                .iter()
                .filter(|(k, _)| dotted == k.as_str() || dotted.ends_with(&format!(".{k}")))
                .max_by_key(|(k, _)| k.len())
                .map(|(_, &v)| v)
        };
        let r = matching(&self.rank_pattern)
            .or(self.rank)
            .unwrap_or(rank as f64);
        let alpha = matching(&self.alpha_pattern).or(self.alpha)?;
        Some(if self.rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        })
    }
}

/// The safetensors header's `__metadata__` entry `lora_adapter_metadata`, parsed.
fn adapter_metadata(path: &Path) -> Result<Option<serde_json::Value>> {
    let mut file = std::fs::File::open(path).map_err(|e| ModelError::bad_file(path, e))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|e| ModelError::bad_file(path, format!("not a safetensors file: {e}")))?;
    let len = u64::from_le_bytes(len);
    if len > 100_000_000 {
        return Err(ModelError::bad_file(
            path,
            "not a safetensors file (header size)",
        ));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header)
        .map_err(|e| ModelError::bad_file(path, format!("not a safetensors file: {e}")))?;
    let header: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| ModelError::bad_file(path, format!("not a safetensors header: {e}")))?;
    let Some(text) = header
        .get("__metadata__")
        .and_then(|m| m.get("lora_adapter_metadata"))
        .and_then(|m| m.as_str())
    else {
        return Ok(None);
    };
    serde_json::from_str(text).map(Some).map_err(|e| {
        ModelError::bad_file(path, format!("`lora_adapter_metadata` is not JSON: {e}"))
    })
}

/// Every layer of the LoRA file at `path`, scaled by `strength`.
pub(super) fn read_layers(path: &Path, strength: f64) -> Result<Vec<((Component, String), Delta)>> {
    if !path.is_file() {
        return Err(ModelError::Missing {
            path: path.to_path_buf(),
        });
    }
    let metadata = adapter_metadata(path)?;
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| ModelError::bad_file(path, format!("not a valid safetensors file: {e}")))?;
    let mut layers: HashMap<(Component, String), Parts> = HashMap::new();
    for (key, tensor) in tensors {
        let Some((component, module, dotted, part)) = classify(&key) else {
            continue;
        };
        let parts = layers.entry((component, module)).or_default();
        parts.dotted = dotted.or(parts.dotted.take());
        match part {
            "down" => parts.down = Some(tensor),
            "up" => parts.up = Some(tensor),
            _ => {
                let value = tensor
                    .to_dtype(candle_core::DType::F64)
                    .and_then(|t| t.flatten_all()?.to_vec1::<f64>())
                    .map_err(|e| ModelError::bad_file(path, format!("`{key}`: {e}")))?;
                parts.alpha = value.first().copied();
            }
        }
    }
    if layers.is_empty() {
        return Err(ModelError::bad_file(
            path,
            "no LoRA layers in a known layout (kohya `lora_unet_*.lora_down.weight`, \
             diffusers `unet.*.lora_A.weight`)",
        ));
    }
    let configs: HashMap<Component, AdapterConfig> = [Component::Unet, Component::TextEncoder]
        .into_iter()
        .map(|c| {
            let config = metadata
                .as_ref()
                .map(|m| AdapterConfig::from_metadata(m, c))
                .unwrap_or_default();
            (c, config)
        })
        .collect();
    let mut out = Vec::with_capacity(layers.len());
    for ((component, module), parts) in layers {
        let (Some(down), Some(up)) = (parts.down, parts.up) else {
            return Err(ModelError::bad_file(
                path,
                format!("LoRA layer `{module}` lacks its down or up matrix"),
            ));
        };
        let rank = down.dim(0).map_err(|e| ModelError::bad_file(path, e))?;
        if rank == 0 || up.dims().get(1) != Some(&rank) {
            return Err(ModelError::bad_file(
                path,
                format!(
                    "LoRA layer `{module}`: down {:?} and up {:?} do not share a rank",
                    down.dims(),
                    up.dims()
                ),
            ));
        }
        let scale = match (parts.alpha, &parts.dotted) {
            // kohya's per-layer alpha.
            (Some(alpha), _) => alpha / rank as f64,
            // PEFT: from the header's adapter config; alpha = rank (scale 1) without one.
            (None, Some(dotted)) => configs[&component].scale(dotted, rank).unwrap_or(1.0),
            (None, None) => 1.0,
        };
        out.push((
            (component, module),
            Delta {
                down,
                up,
                scale: strength * scale,
            },
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_args_take_an_optional_strength() {
        assert_eq!(
            parse_lora_arg("style.safetensors").unwrap(),
            LoraSpec {
                path: "style.safetensors".into(),
                strength: 1.0
            }
        );
        assert_eq!(parse_lora_arg("a/b.safetensors:0.6").unwrap().strength, 0.6);
        assert_eq!(parse_lora_arg("a/b.safetensors:-1").unwrap().strength, -1.0);
        assert_eq!(
            parse_lora_arg("C:/loras/x.safetensors").unwrap().path,
            PathBuf::from("C:/loras/x.safetensors")
        );
        assert!(parse_lora_arg("x.safetensors:inf").is_err());
        assert!(parse_lora_arg("x.safetensors:50").is_err());
    }

    #[test]
    fn both_layouts_name_the_same_module() {
        let kohya = classify(
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight",
        )
        .unwrap();
        let peft = classify(
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight",
        )
        .unwrap();
        assert_eq!((kohya.0, &kohya.1, kohya.3), (peft.0, &peft.1, peft.3));
        let te_kohya =
            classify("lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight")
                .unwrap();
        let te_peft =
            classify("text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight")
                .unwrap();
        assert_eq!((te_kohya.0, &te_kohya.1), (te_peft.0, &te_peft.1));
        assert_eq!(te_kohya.1, "encoder_layers_0_self_attn_q_proj");
    }

    #[test]
    fn peft_scale_follows_alpha_rank_and_patterns() {
        let metadata = serde_json::json!({
            "unet.r": 4, "unet.lora_alpha": 8,
            "unet.alpha_pattern": {"attn2.to_k": 2},
        });
        let config = AdapterConfig::from_metadata(&metadata, Component::Unet);
        assert_eq!(
            config.scale(
                "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
                4
            ),
            Some(2.0)
        );
        assert_eq!(
            config.scale(
                "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
                4
            ),
            Some(0.5)
        );
        let nested = serde_json::json!({"text_encoder": {"r": 2, "lora_alpha": 1}});
        let config = AdapterConfig::from_metadata(&nested, Component::TextEncoder);
        assert_eq!(
            config.scale("encoder.layers.0.self_attn.q_proj", 2),
            Some(0.5)
        );
    }
}
