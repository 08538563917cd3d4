//! The CLIP tokenizer and text encoder against transformers (fixtures `clip/`,
//! `tiny-sd/tokenizer`, `tiny-sd/text_encoder`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use dreamwalk::model::text::{
    ClipTextEncoder, ClipTextOutput, ClipTokenizer, PadToken, MAX_TOKENS,
};

use crate::support::fixtures::{fixture, load_tensors, max_abs_diff, model_folder};

/// The text encoder's outputs are compared within 1e-4. Outputs are O(1); the fixture's
/// float32-vs-float64 noise for this 2-layer, 32-wide model is ~1e-6 and we measure
/// ~2e-6 (attention scaled before rather than after QK^T, other summation orders). A
/// wrong mask, activation, norm or weight moves outputs by 1e-2 or more, so 1e-4 keeps a
/// 50x margin over the noise and stays far below any real mistake.
const ENCODER_TOLERANCE: f32 = 1e-4;

fn prompts() -> Vec<String> {
    let text = std::fs::read_to_string(fixture("clip/prompts.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn expected_ids(name: &str) -> Vec<Vec<i64>> {
    load_tensors("clip/case.safetensors")[name]
        .to_vec2::<i64>()
        .unwrap()
}

fn clip_tokenizer(pad: PadToken) -> ClipTokenizer {
    ClipTokenizer::from_files(
        &fixture("clip/vocab.json"),
        &fixture("clip/merges.txt"),
        pad,
    )
    .unwrap()
}

fn assert_ids(tokenizer: &ClipTokenizer, expected: &[Vec<i64>]) {
    for (prompt, want) in prompts().iter().zip(expected) {
        let got: Vec<i64> = tokenizer
            .encode(prompt)
            .into_iter()
            .map(i64::from)
            .collect();
        assert_eq!(&got, want, "ids of prompt {prompt:?}");
    }
}

#[test]
fn tokenizer_matches_transformers_sd1_and_sd2_padding() {
    let sd1 = expected_ids("input_ids_sd1");
    let sd2 = expected_ids("input_ids_sd2");
    assert_eq!(sd1.len(), prompts().len());

    let tokenizer = clip_tokenizer(PadToken::EndOfText);
    assert_eq!(tokenizer.vocab_size(), 49408);
    assert_eq!(tokenizer.pad_id(), 49407);
    assert_eq!(tokenizer.eos_id(), 49407);
    assert_ids(&tokenizer, &sd1);
    // A second pass goes through the word cache and must give the same ids.
    assert_ids(&tokenizer, &sd1);

    let tokenizer = clip_tokenizer(PadToken::Exclamation);
    assert_eq!(tokenizer.pad_id(), 0);
    assert_ids(&tokenizer, &sd2);
}

#[test]
fn tokenizer_from_diffusers_folder() {
    let tokenizer = ClipTokenizer::from_folder(&fixture("tiny-sd/tokenizer")).unwrap();
    assert_eq!(tokenizer.pad_id(), 49407);
    assert_ids(&tokenizer, &expected_ids("input_ids_sd1"));
}

/// A copy of the fixture's vocab.json + merges.txt with the given extra files.
fn tokenizer_folder(extra: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in ["vocab.json", "merges.txt"] {
        std::fs::copy(fixture(&format!("clip/{name}")), dir.path().join(name)).unwrap();
    }
    for (name, text) in extra {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

#[test]
fn tokenizer_folder_pad_token_sources() {
    let sd2 = expected_ids("input_ids_sd2");
    // SD 2.x repos: "!" in special_tokens_map.json wins over tokenizer_config.json.
    let dir = tokenizer_folder(&[
        ("special_tokens_map.json", r#"{"pad_token": "!"}"#),
        ("tokenizer_config.json", r#"{"pad_token": "<|endoftext|>"}"#),
    ]);
    let tokenizer = ClipTokenizer::from_folder(dir.path()).unwrap();
    assert_eq!(tokenizer.pad_id(), 0);
    assert_ids(&tokenizer, &sd2);

    // The added-token object form.
    let dir = tokenizer_folder(&[(
        "tokenizer_config.json",
        r#"{"pad_token": {"__type": "AddedToken", "content": "!", "lstrip": false}}"#,
    )]);
    assert_eq!(ClipTokenizer::from_folder(dir.path()).unwrap().pad_id(), 0);

    // No config at all: <|endoftext|>.
    let dir = tokenizer_folder(&[]);
    assert_eq!(
        ClipTokenizer::from_folder(dir.path()).unwrap().pad_id(),
        49407
    );
}

#[test]
fn tokenizer_errors_name_the_file() {
    let dir = tokenizer_folder(&[]);
    let vocab = dir.path().join("vocab.json");
    let merges = dir.path().join("merges.txt");

    let missing = dir.path().join("nope.json");
    let err = ClipTokenizer::from_files(&missing, &merges, PadToken::EndOfText).unwrap_err();
    assert!(err.to_string().contains("nope.json"), "{err}");

    let bad_merges = dir.path().join("bad_merges.txt");
    std::fs::write(&bad_merges, "#version: 0.2\ni n\nthree symbols here\n").unwrap();
    let err = ClipTokenizer::from_files(&vocab, &bad_merges, PadToken::EndOfText).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("bad_merges.txt") && message.contains("line 3"),
        "{message}"
    );

    let bad_vocab = dir.path().join("bad_vocab.json");
    std::fs::write(&bad_vocab, r#"{"a": 0"#).unwrap();
    let err = ClipTokenizer::from_files(&bad_vocab, &merges, PadToken::EndOfText).unwrap_err();
    assert!(err.to_string().contains("bad_vocab.json"), "{err}");

    let err =
        ClipTokenizer::from_files(&vocab, &merges, PadToken::Other("<pad>".into())).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("vocab.json") && message.contains("<pad>"),
        "{message}"
    );
}

#[test]
fn bytes_only_tokenizer() {
    let tokenizer = ClipTokenizer::bytes_only();
    assert_eq!(tokenizer.vocab_size(), 514);
    assert_eq!(
        (tokenizer.bos_id(), tokenizer.eos_id(), tokenizer.pad_id()),
        (512, 513, 513)
    );
    for prompt in prompts() {
        let ids = tokenizer.encode(&prompt);
        assert_eq!(ids.len(), MAX_TOKENS);
        assert_eq!(ids, tokenizer.encode(&prompt), "deterministic");
        assert_eq!(ids[0], 512);
        assert!(ids.contains(&513));
        assert!(ids.iter().all(|&id| id < 514), "{ids:?}");
    }
    // One id per byte, the word's last byte marked end-of-word (id + 256), and the
    // first 256 ids in CLIP's byte order ("a" is 64, "a</w>" is 320 in the real vocab).
    let ids = tokenizer.encode("ab  a");
    assert_eq!(&ids[..5], &[512, 64, 321, 320, 513]);
    assert!(ids[5..].iter().all(|&id| id == 513));
}

// ---- text encoder ----

fn case_ids(name: &str) -> Tensor {
    load_tensors("clip/case.safetensors")[name].clone()
}

fn assert_matches_fixture(out: &ClipTextOutput) {
    let case = load_tensors("clip/case.safetensors");
    for (name, got) in [
        ("last_hidden_state", &out.last_hidden_state),
        ("penultimate_hidden_state", &out.penultimate_hidden_state),
        ("pooled_output", &out.pooled_output),
    ] {
        let diff = max_abs_diff(got, &case[name]);
        println!("{name}: max |diff| = {diff:.3e}");
        assert!(
            diff <= ENCODER_TOLERANCE,
            "{name}: max |diff| {diff} > {ENCODER_TOLERANCE}"
        );
    }
}

fn assert_same_outputs(a: &ClipTextOutput, b: &ClipTextOutput) {
    assert_eq!(
        max_abs_diff(&a.last_hidden_state, &b.last_hidden_state),
        0.0
    );
    assert_eq!(
        max_abs_diff(&a.penultimate_hidden_state, &b.penultimate_hidden_state),
        0.0
    );
    assert_eq!(max_abs_diff(&a.pooled_output, &b.pooled_output), 0.0);
}

#[test]
fn text_encoder_matches_transformers() {
    let encoder = ClipTextEncoder::load(&fixture("clip"), &Device::Cpu).unwrap();
    assert_eq!(encoder.hidden_size(), 32);
    let ids = case_ids("input_ids_sd1");
    let start = std::time::Instant::now();
    let out = encoder.forward(&ids).unwrap();
    println!(
        "forward batch 7: {:.2} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    assert_matches_fixture(&out);

    // U32 ids (what the tokenizer gives) are the same input.
    let out_u32 = encoder.forward(&ids.to_dtype(DType::U32).unwrap()).unwrap();
    assert_same_outputs(&out, &out_u32);

    // A batch of 1 (candle-transformers' mask is only right for 1 or n_heads) and of 3
    // give the rows of the batch of 7: rows do not see each other.
    for rows in [3..4, 2..5] {
        let part = encoder
            .forward(&ids.narrow(0, rows.start, rows.len()).unwrap())
            .unwrap();
        let whole = out
            .last_hidden_state
            .narrow(0, rows.start, rows.len())
            .unwrap();
        let diff = max_abs_diff(&part.last_hidden_state, &whole);
        // Same arithmetic per row; only the matmul blocking may differ with the batch.
        assert!(diff <= 1e-6, "rows {rows:?}: {diff}");
    }
}

#[test]
fn text_encoder_from_diffusers_folder() {
    // tiny-sd/text_encoder: prefixed keys plus the int64 position_ids buffer.
    let ids = case_ids("input_ids_sd1");
    let from_sd = ClipTextEncoder::load(&fixture("tiny-sd/text_encoder"), &Device::Cpu).unwrap();
    let from_clip = ClipTextEncoder::load(&fixture("clip"), &Device::Cpu).unwrap();
    let out = from_sd.forward(&ids).unwrap();
    assert_same_outputs(&out, &from_clip.forward(&ids).unwrap());
    assert_matches_fixture(&out);
}

/// The fixture's text-encoder tensors, keyed as in clip/model.safetensors.
fn clip_weights() -> HashMap<String, Tensor> {
    load_tensors("clip/model.safetensors")
}

/// A text_encoder folder with the fixture's config.json and the given tensors.
fn encoder_folder(tensors: &HashMap<String, Tensor>) -> (tempfile::TempDir, PathBuf) {
    model_folder("clip/config.json", tensors, "model.safetensors")
}

#[test]
fn text_encoder_loads_keys_without_prefix() {
    let unprefixed: HashMap<String, Tensor> = clip_weights()
        .into_iter()
        .map(|(name, t)| (name.strip_prefix("text_model.").unwrap().to_string(), t))
        .collect();
    let (dir, _) = encoder_folder(&unprefixed);
    let encoder = ClipTextEncoder::load(dir.path(), &Device::Cpu).unwrap();
    let out = encoder.forward(&case_ids("input_ids_sd1")).unwrap();
    assert_matches_fixture(&out);
}

fn load_error(dir: &Path) -> String {
    ClipTextEncoder::load(dir, &Device::Cpu)
        .unwrap_err()
        .to_string()
}

#[test]
fn text_encoder_errors_name_the_file() {
    const MISSING: &str = "text_model.encoder.layers.1.mlp.fc2.weight";
    let mut tensors = clip_weights();
    tensors.remove(MISSING);
    let (dir, weights) = encoder_folder(&tensors);
    let message = load_error(dir.path());
    assert!(
        message.contains(&weights.display().to_string()),
        "{message}"
    );
    assert!(message.contains(MISSING), "{message}");

    let mut tensors = clip_weights();
    tensors.insert(
        "text_model.encoder.layers.0.self_attn.q_proj.weight".into(),
        Tensor::zeros((32, 31), DType::F32, &Device::Cpu).unwrap(),
    );
    let (dir, weights) = encoder_folder(&tensors);
    let message = load_error(dir.path());
    assert!(
        message.contains(&weights.display().to_string()),
        "{message}"
    );
    assert!(message.contains("q_proj"), "{message}");

    let (dir, weights) = encoder_folder(&clip_weights());
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let message = load_error(dir.path());
    assert!(
        message.contains(&weights.display().to_string()),
        "{message}"
    );

    let (dir, _) = encoder_folder(&clip_weights());
    let config_path = dir.path().join("config.json");
    let mut config: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config.remove("hidden_size");
    std::fs::write(&config_path, serde_json::to_string(&config).unwrap()).unwrap();
    let message = load_error(dir.path());
    assert!(
        message.contains(&config_path.display().to_string()),
        "{message}"
    );
    assert!(message.contains("hidden_size"), "{message}");
}

#[test]
fn text_encoder_rejects_ids_it_cannot_embed() {
    let encoder = ClipTextEncoder::load(&fixture("clip"), &Device::Cpu).unwrap();
    let too_large = Tensor::new(&[[49406u32, 49408, 49407]], &Device::Cpu).unwrap();
    assert!(encoder.forward(&too_large).is_err());
    let negative = Tensor::new(&[[49406i64, -1, 49407]], &Device::Cpu).unwrap();
    assert!(encoder.forward(&negative).is_err());
    let too_long = Tensor::zeros((1, 78), DType::U32, &Device::Cpu).unwrap();
    assert!(encoder.forward(&too_long).is_err());
    let floats = Tensor::zeros((1, 77), DType::F32, &Device::Cpu).unwrap();
    assert!(encoder.forward(&floats).is_err());
}

/// A folder as transformers 5 saves it: `tokenizer.json` alone (plus `extra` files).
fn tokenizer_json_folder(extra: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("clip/tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    for (name, text) in extra {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

#[test]
fn tokenizer_json_only_folders_give_the_same_ids_sd1_and_sd2() {
    let dir = tokenizer_json_folder(&[]);
    let tokenizer = ClipTokenizer::from_folder(dir.path()).unwrap();
    assert_eq!(tokenizer.vocab_size(), 49408);
    assert_eq!(tokenizer.pad_id(), 49407);
    assert_ids(&tokenizer, &expected_ids("input_ids_sd1"));

    let dir = tokenizer_json_folder(&[("tokenizer_config.json", r#"{"pad_token": "!"}"#)]);
    let tokenizer = ClipTokenizer::from_folder(dir.path()).unwrap();
    assert_eq!(tokenizer.pad_id(), 0);
    assert_ids(&tokenizer, &expected_ids("input_ids_sd2"));
}

#[test]
fn tokenizer_json_merges_as_strings_read_the_same() {
    // Older `tokenizers` versions write each merge as one "left right" string.
    let text = std::fs::read_to_string(fixture("clip/tokenizer.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let merges = json["model"]["merges"].as_array_mut().unwrap();
    for merge in merges.iter_mut() {
        if let Some(pair) = merge.as_array() {
            *merge = serde_json::Value::String(format!(
                "{} {}",
                pair[0].as_str().unwrap(),
                pair[1].as_str().unwrap()
            ));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, serde_json::to_string(&json).unwrap()).unwrap();
    let tokenizer = ClipTokenizer::from_tokenizer_json(&path, PadToken::EndOfText).unwrap();
    assert_ids(&tokenizer, &expected_ids("input_ids_sd1"));
}

#[test]
fn tokenizer_json_errors_name_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    for (text, expected) in [
        ("{ not json", "invalid JSON"),
        (r#"{"model": {"type": "WordPiece"}}"#, "model.type"),
        (r#"{"model": {"type": "BPE", "vocab": {}}}"#, "model.merges"),
    ] {
        std::fs::write(&path, text).unwrap();
        let err = ClipTokenizer::from_tokenizer_json(&path, PadToken::EndOfText).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("tokenizer.json") && message.contains(expected),
            "{message}"
        );
    }
    // A folder with none of the files names what it looked for.
    let empty = tempfile::tempdir().unwrap();
    let err = ClipTokenizer::from_folder(empty.path()).unwrap_err();
    assert!(err.to_string().contains("vocab.json"), "{err}");
}
