//! How the big weight matrices are stored: f32, or f16 where the device has `SHADER_F16`
//! (half the memory and the bandwidth of every product). Only the weights: activations,
//! norms, attention and every sum stay f32 (a sum over thousands of terms in f16 loses too
//! much), so f16 costs one rounding of each weight (relative 2^-11) and nothing else.
//!
//! The f16 kernels are the f32 shaders with their weight type changed: `gemm.wgsl` and
//! `conv.wgsl` name their weight operands' element type by an alias line (`alias WA = f32;`),
//! and [`variant_source`] turns that line into `f16` and enables the extension. One source,
//! no copied file.

use super::GpuError;

/// The element type of a tensor's buffer, and what an [`super::Nn`] stores weights in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// 4 bytes a value.
    #[default]
    F32,
    /// 2 bytes a value (IEEE half): needs the device feature `SHADER_F16` to be read.
    F16,
}

impl Precision {
    /// Bytes of one element.
    pub fn bytes(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::F16 => 2,
        }
    }

    /// The WGSL type name.
    fn wgsl(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        }
    }
}

/// Errors unless `device` can run shaders reading f16.
pub(super) fn require_f16(device: &wgpu::Device) -> Result<(), GpuError> {
    if device.features().contains(wgpu::Features::SHADER_F16) {
        return Ok(());
    }
    Err(GpuError::Unsupported(
        "f16 weights need the device feature SHADER_F16 (WGSL `enable f16`), which this \
         device does not have (its adapter lacks it, or the device was created without it); \
         use f32"
            .into(),
    ))
}

/// `values` rounded to the nearest f16 (ties to even), as the 16-bit words a buffer holds.
/// Errors on a finite value beyond f16's range (|x| > 65504), naming the tensor: it would
/// become infinite, where f32 keeps it.
pub(super) fn f16_words(values: &[f32], what: &str) -> Result<Vec<u16>, GpuError> {
    values
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let h = half::f16::from_f32(x);
            match h.is_infinite() && x.is_finite() {
                true => Err(GpuError::BadInput(format!(
                    "{what}: value {x} at index {i} is beyond f16's range (65504); keep this \
                     model in f32"
                ))),
                false => Ok(h.to_bits()),
            }
        })
        .collect()
}

/// The f16 words of a buffer back as f32 (exact).
pub(super) fn f32_from_f16_words(words: &[u16]) -> Vec<f32> {
    words
        .iter()
        .map(|&w| half::f16::from_bits(w).to_f32())
        .collect()
}

/// `source` with each `alias NAME = f32;` line of `aliases` set to its precision; with
/// `enable f16;` first when any is f16. Errors if the source lacks one of the lines (a
/// renamed alias must not silently leave a kernel in f32).
pub(super) fn variant_source(
    source: &str,
    aliases: &[(&str, Precision)],
) -> Result<String, GpuError> {
    let mut out = source.to_string();
    for &(name, precision) in aliases {
        let line = format!("alias {name} = f32;");
        if !out.contains(&line) {
            return Err(GpuError::Wgpu(format!(
                "shader source has no line `{line}` to make its {name} variant"
            )));
        }
        out = out.replace(&line, &format!("alias {name} = {};", precision.wgsl()));
    }
    if aliases.iter().any(|&(_, p)| p == Precision::F16) {
        out.insert_str(0, "enable f16;\n");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_source_changes_only_the_named_alias_and_enables_f16() {
        let src = "alias WA = f32;\nalias WB = f32;\nvar<storage> a: array<WA>;\n";
        let v = variant_source(src, &[("WA", Precision::F16), ("WB", Precision::F32)]).unwrap();
        assert_eq!(
            v,
            "enable f16;\nalias WA = f16;\nalias WB = f32;\nvar<storage> a: array<WA>;\n"
        );
        let same = variant_source(src, &[("WA", Precision::F32)]).unwrap();
        assert_eq!(same, src);
        assert!(variant_source(src, &[("WC", Precision::F16)]).is_err());
    }

    #[test]
    fn f16_words_round_to_nearest_and_refuse_overflow() {
        // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to even gives 1.
        let words = f16_words(&[1.0, 1.0 + 2f32.powi(-11), -2.5, 65504.0], "w").unwrap();
        assert_eq!(words, vec![0x3c00, 0x3c00, 0xc100, 0x7bff]);
        let err = f16_words(&[0.0, 70000.0], "unet.conv_in.weight").unwrap_err();
        assert!(err.to_string().contains("unet.conv_in.weight"), "{err}");
        assert!(err.to_string().contains("index 1"), "{err}");
    }
}
