//! Prompt mixing: a keyframe's prompt may be a weighted mix of prompts,
//! `"a fox:0.7 | a wolf:0.3"`, whose conditioning is a blend of the parts' text-encoder
//! outputs (the 77 x d hidden states the UNet's cross-attention reads).
//!
//! The syntax: parts split by `|`, each optionally ending in `:<weight>` (a plain decimal
//! number, default 1). A text without `|` and without a trailing `:<weight>` is a plain
//! prompt. A colon inside prose does not make a weight ("a sign that says: hello"), nor
//! does one right after a digit, so clock times and ratios stay text ("at 10:30", "16:9");
//! [`PromptMix::to_text`] writes such a part's weight after a space ("10:30 :0.5").
//!
//! The blend ([`blend`]): parts of weight 0 are left out; one part left is its embedding
//! as it is; two are **slerped** (`t = w2 / (w1 + w2)`, one angle over the whole tensor, as
//! the walk slerps latents: a straight average of two embeddings that point apart is
//! shorter than either, and a shorter conditioning is a weaker one, washing the picture
//! out mid-mix); three or more are a **normalised weighted sum** `Σ (w_i / Σw) e_i`, since
//! a spherical mean of more than two points has no closed form (chained slerps would
//! depend on the parts' order), and the sum is order-free, continuous in the weights and
//! gives a part's own embedding exactly when only its weight is non-zero.

use candle_core::Tensor;

/// One part of a mix: a prompt and its weight.
#[derive(Clone, Debug, PartialEq)]
pub struct MixPart {
    /// The part's prompt, trimmed.
    pub text: String,
    /// Its weight (1 when none is written).
    pub weight: f64,
}

/// A prompt written as a weighted mix of prompts.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptMix {
    /// The parts in the order written (one or more).
    pub parts: Vec<MixPart>,
}

/// Why a mix cannot run, in words that name the part and the weight.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum MixError {
    /// Part `part` (1-based) has no text.
    #[error("part {part} of the mix is empty (write TEXT:WEIGHT between the `|`)")]
    EmptyPart { part: usize },
    /// A weight below 0 (or not a finite number).
    #[error("part {part} (\"{text}\") has weight {weight}: weights must be 0 or more")]
    BadWeight {
        part: usize,
        text: String,
        weight: f64,
    },
    /// The weights add up to 0 (or overflow).
    #[error("the mix's weights sum to {sum}: give at least one part a weight above 0")]
    ZeroSum { sum: f64 },
}

impl PromptMix {
    /// The mix `text` writes, or `None` for a plain prompt (no `|`, no trailing weight).
    pub fn parse(text: &str) -> Option<Self> {
        if !text.contains('|') && split_weight(text).1.is_none() {
            return None;
        }
        let parts = text
            .split('|')
            .map(|part| {
                let (text, weight) = split_weight(part);
                MixPart {
                    text: text.trim().to_string(),
                    weight: weight.unwrap_or(1.0),
                }
            })
            .collect();
        Some(Self { parts })
    }

    /// Checks the parts and weights: every part has text, every weight is a finite number
    /// of 0 or more, and they add up to more than 0.
    pub fn check(&self) -> Result<(), MixError> {
        for (i, part) in self.parts.iter().enumerate() {
            if part.text.is_empty() {
                return Err(MixError::EmptyPart { part: i + 1 });
            }
            if !(part.weight.is_finite() && part.weight >= 0.0) {
                return Err(MixError::BadWeight {
                    part: i + 1,
                    text: part.text.clone(),
                    weight: part.weight,
                });
            }
        }
        let sum: f64 = self.parts.iter().map(|p| p.weight).sum();
        if !(sum.is_finite() && sum > 0.0) {
            return Err(MixError::ZeroSum { sum });
        }
        Ok(())
    }

    /// The parts that take part in the blend (weight above 0) with their weights divided
    /// by the sum. Call [`Self::check`] first: an unchecked mix may have none.
    pub fn normalised(&self) -> Vec<(&str, f64)> {
        let sum: f64 = self.parts.iter().map(|p| p.weight).sum();
        self.parts
            .iter()
            .filter(|p| p.weight > 0.0)
            .map(|p| (p.text.as_str(), p.weight / sum))
            .collect()
    }

    /// The mix written out again, `"a fox:0.7 | a wolf:0.3"` (weights rounded to three
    /// decimals); [`Self::parse`] reads it back as it is.
    pub fn to_text(&self) -> String {
        self.parts
            .iter()
            .map(|part| {
                let weight = (part.weight * 1000.0).round() / 1000.0;
                // After a digit the colon would read as a time ("10:30"): keep them apart.
                let gap = if part.text.ends_with(|c: char| c.is_ascii_digit()) {
                    " "
                } else {
                    ""
                };
                format!("{}{gap}:{weight}", part.text)
            })
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

/// `"a fox:0.7"` -> (`"a fox"`, `Some(0.7)`); text without a trailing weight is returned
/// whole with `None`.
fn split_weight(part: &str) -> (&str, Option<f64>) {
    let trimmed = part.trim_end();
    let Some(colon) = trimmed.rfind(':') else {
        return (part, None);
    };
    let (text, number) = (&trimmed[..colon], trimmed[colon + 1..].trim());
    let after_digit = text.ends_with(|c: char| c.is_ascii_digit());
    match is_decimal(number)
        .then(|| number.parse::<f64>().ok())
        .flatten()
    {
        Some(weight) if !after_digit => (text, Some(weight)),
        _ => (part, None),
    }
}

/// A plain decimal number: an optional sign, digits, an optional fraction (`0.5`, `-1`,
/// `.25`); no exponent, `inf` or `nan`, which read as words.
fn is_decimal(s: &str) -> bool {
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let digits = |d: &str| d.chars().all(|c| c.is_ascii_digit());
    !(whole.is_empty() && fraction.is_empty()) && digits(whole) && digits(fraction)
}

/// The conditioning of a mix from its parts' embeddings, each with its normalised weight
/// (weights above 0, summing to 1; see the module docs for why slerp for two and a
/// weighted sum for more).
pub fn blend(parts: &[(Tensor, f64)]) -> candle_core::Result<Tensor> {
    match parts {
        [] => candle_core::bail!("a prompt mix needs a part with a weight above 0"),
        [(only, _)] => Ok(only.clone()),
        [(first, w0), (second, w1)] => crate::walk::slerp(w1 / (w0 + w1), first, second),
        [(first, w0), rest @ ..] => {
            let mut sum = first.affine(*w0, 0.0)?;
            for (embedding, weight) in rest {
                sum = (sum + embedding.affine(*weight, 0.0)?)?;
            }
            Ok(sum)
        }
    }
}

/// The conditioning of `prompt`: `encode(prompt)` for a plain prompt; for a mix, each
/// part's `encode` blended by [`blend`] with the normalised weights. A mix whose weights
/// [`PromptMix::check`] refuses is an error naming the prompt.
pub fn embed_mixed(
    prompt: &str,
    mut encode: impl FnMut(&str) -> crate::model::Result<Tensor>,
) -> crate::model::Result<Tensor> {
    let Some(mix) = PromptMix::parse(prompt) else {
        return encode(prompt);
    };
    mix.check()
        .map_err(|e| crate::model::ModelError::Invalid(format!("prompt \"{prompt}\": {e}")))?;
    let parts = mix
        .normalised()
        .into_iter()
        .map(|(text, weight)| Ok((encode(text)?, weight)))
        .collect::<crate::model::Result<Vec<_>>>()?;
    Ok(blend(&parts)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(text: &str) -> Vec<(String, f64)> {
        PromptMix::parse(text)
            .unwrap_or_else(|| panic!("{text:?} is a mix"))
            .parts
            .into_iter()
            .map(|p| (p.text, p.weight))
            .collect()
    }

    #[test]
    fn parts_split_by_bars_with_optional_weights() {
        assert_eq!(
            parts("a fox:0.7 | a wolf:0.3"),
            vec![("a fox".into(), 0.7), ("a wolf".into(), 0.3)]
        );
        // Default weight 1, spaces around the colon, a leading dot, three parts.
        assert_eq!(
            parts("a fox | a wolf : 2|a bear:.5"),
            vec![
                ("a fox".into(), 1.0),
                ("a wolf".into(), 2.0),
                ("a bear".into(), 0.5)
            ]
        );
        // One part with a weight is a mix of one.
        assert_eq!(parts("a fox:0.5"), vec![("a fox".into(), 0.5)]);
        // Negative and zero weights parse (and are refused by `check`).
        assert_eq!(
            parts("a fox:-1 | a wolf:0"),
            vec![("a fox".into(), -1.0), ("a wolf".into(), 0.0)]
        );
    }

    #[test]
    fn colons_in_prose_times_and_odd_numbers_stay_text() {
        for plain in [
            "a fox",
            "a sign that says: hello",
            "the clock shows 10:30",
            "a 16:9 frame",
            "ratio 4:3",
            "a fox:inf",
            "a fox:nan",
            "a fox:1e3",
            "a fox:",
            "a fox:.",
            "",
        ] {
            assert_eq!(PromptMix::parse(plain), None, "{plain:?}");
        }
        // Inside a mix, the same rules: "10:30" is its text, not a weight of 30.
        assert_eq!(
            parts("at 10:30 | at noon:2"),
            vec![("at 10:30".into(), 1.0), ("at noon".into(), 2.0)]
        );
        assert_eq!(parts("a: b:0.5"), vec![("a: b".into(), 0.5)]);
    }

    #[test]
    fn check_names_the_part_and_the_weight() {
        let check = |text: &str| PromptMix::parse(text).unwrap().check();
        assert_eq!(check("a fox:0.7 | a wolf:0.3"), Ok(()));
        assert_eq!(check("a fox:1 | a wolf:0"), Ok(()));
        assert_eq!(
            check("a fox:0.5 | a wolf:-0.25").unwrap_err().to_string(),
            "part 2 (\"a wolf\") has weight -0.25: weights must be 0 or more"
        );
        assert_eq!(
            check("a fox:0 | a wolf:0").unwrap_err().to_string(),
            "the mix's weights sum to 0: give at least one part a weight above 0"
        );
        assert_eq!(
            check("a fox | | a wolf"),
            Err(MixError::EmptyPart { part: 2 })
        );
        assert_eq!(check(":0.5 | a wolf"), Err(MixError::EmptyPart { part: 1 }));
        // Digits past f64's range: infinite, refused by name.
        let huge = format!("a fox:{} | a wolf", "9".repeat(400));
        assert!(matches!(
            check(&huge),
            Err(MixError::BadWeight { part: 1, .. })
        ));
    }

    #[test]
    fn weights_normalise_and_zero_parts_drop_out() {
        let mix = PromptMix::parse("a:1 | b:0 | c:3").unwrap();
        assert_eq!(mix.normalised(), vec![("a", 0.25), ("c", 0.75)]);
    }

    #[test]
    fn written_mixes_read_back_as_they_were() {
        for text in [
            "a fox:0.7 | a wolf:0.3",
            "at 10:30 :0.5 | at noon:1",
            "a fox:1 | a wolf:0 | a bear:2.125",
        ] {
            let mix = PromptMix::parse(text).unwrap();
            assert_eq!(mix.to_text(), text);
            assert_eq!(PromptMix::parse(&mix.to_text()), Some(mix));
        }
        let mix = PromptMix::parse("a fox | a wolf:0.33333").unwrap();
        assert_eq!(mix.to_text(), "a fox:1 | a wolf:0.333");
    }

    #[test]
    fn blends_follow_the_weights() {
        let dev = candle_core::Device::Cpu;
        let a = Tensor::new(&[[1f32, 0.0], [0.0, 0.0]], &dev).unwrap();
        let b = Tensor::new(&[[0f32, 1.0], [0.0, 0.0]], &dev).unwrap();
        let c = Tensor::new(&[[0f32, 0.0], [0.0, 2.0]], &dev).unwrap();
        let values = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // Two parts: slerp keeps the length (a and b are orthogonal unit vectors).
        let half = values(blend(&[(a.clone(), 0.5), (b.clone(), 0.5)]).unwrap());
        let s = std::f32::consts::FRAC_1_SQRT_2;
        for (got, want) in half.iter().zip([s, s, 0.0, 0.0]) {
            assert!((got - want).abs() < 1e-6, "{half:?}");
        }
        // Three: the weighted sum.
        let sum = values(blend(&[(a.clone(), 0.5), (b, 0.25), (c, 0.25)]).unwrap());
        assert_eq!(sum, vec![0.5, 0.25, 0.0, 0.5]);
        // One: itself, exactly.
        assert_eq!(values(blend(&[(a.clone(), 1.0)]).unwrap()), values(a));
        assert!(blend(&[]).is_err());
    }
}
