//! The CLIP byte-pair-encoding tokenizer: prompt text -> 77 token ids, as transformers'
//! `CLIPTokenizer` makes them for Stable Diffusion.
//!
//! Written here over `vocab.json` + `merges.txt` because that is what diffusers model
//! folders ship (SD 1.5, SD 2.1 and SD-Turbo have no `tokenizer.json`), and the BPE itself
//! is a few dozen lines. Folders saved by transformers 5 hold only `tokenizer.json`: its BPE
//! tables are read into the same tokenizer.
//!
//! The steps, each matching the reference:
//! 1. the special tokens (`<|startoftext|>`, `<|endoftext|>` and the pad token) are cut out
//!    of the raw text and become their ids;
//! 2. the text between them: NFC, whitespace runs collapsed to one space, trimmed,
//!    lower-cased;
//! 3. split with CLIP's regex (English contractions, letter runs, single digits, runs of
//!    other symbols); whitespace is dropped;
//! 4. each piece's UTF-8 bytes mapped to printable characters (GPT-2's byte-to-unicode
//!    table), the last one marked with `</w>`, then merged by BPE rank;
//! 5. `[bos] + ids + [eos]`, truncated to 77 (keeping eos last), padded with the pad id.
//!
//! Step 1 is why the pad token matters beyond padding: transformers registers it as a
//! special token, so with SD 2.x's pad `!` every `!` of a prompt is its own id 0 (`"wow!!"`
//! gives `wow</w>`, 0, 0, where SD 1.x gives `wow</w>`, `!!</w>`).

use std::collections::HashMap;
use std::path::Path;

use parking_lot::Mutex;
use regex::Regex;
use unicode_normalization::UnicodeNormalization;

use crate::model::{ModelError, Result};

/// Number of ids `encode` returns: CLIP's context length in every Stable Diffusion.
pub const MAX_TOKENS: usize = 77;

const START_OF_TEXT: &str = "<|startoftext|>";
const END_OF_TEXT: &str = "<|endoftext|>";
const END_OF_WORD: &str = "</w>";

/// CLIP's pre-tokenizer pattern (OpenAI `simple_tokenizer.py`, transformers' `Split`)
/// without its two leading alternatives `<\|startoftext\|>|<\|endoftext\|>`: the real
/// special tokens are cut out of the raw text before this runs, and the lookalikes that
/// can still reach it (`<|ENDOFTEXT|>` once lower-cased) are split by transformers into
/// `<|`, `endoftext`, `|>` (its byte-level step re-splits with GPT-2's regex), which is
/// what the rest of the pattern gives. Text is lower-cased before the pattern is applied,
/// so the reference's IGNORECASE flag changes nothing.
const PIECE_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// Above this many cached words the cache is emptied, so a long session of typed prompts
/// cannot grow it without bound.
const CACHE_LIMIT: usize = 100_000;

/// Which token fills the ids after the end of the prompt.
///
/// It changes the text embedding at the padded positions, and SD 2.x was trained with a
/// different one than SD 1.x, so it must follow the model's tokenizer config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PadToken {
    /// `<|endoftext|>`, the end-of-text id (49407): SD 1.x and the transformers default.
    EndOfText,
    /// `!`, id 0: SD 2.x (OpenCLIP) tokenizers.
    Exclamation,
    /// Any other token of the vocabulary, by its text.
    Other(String),
}

impl PadToken {
    /// The pad token named by its text, as tokenizer configs write it.
    pub fn from_text(text: &str) -> Self {
        match text {
            END_OF_TEXT => Self::EndOfText,
            "!" => Self::Exclamation,
            other => Self::Other(other.to_string()),
        }
    }

    /// The token's text, as it appears in `vocab.json`.
    pub fn text(&self) -> &str {
        match self {
            Self::EndOfText => END_OF_TEXT,
            Self::Exclamation => "!",
            Self::Other(text) => text,
        }
    }
}

/// One BPE merge: a pair of adjacent symbols and what they become.
#[derive(Debug, Clone, Copy)]
struct Merge {
    /// Line order in `merges.txt`: lower merges first.
    rank: u32,
    /// The id of the merged symbol.
    merged_id: u32,
}

/// The CLIP tokenizer. Thread-safe; `encode` caches the BPE of each word it has seen.
#[derive(Debug)]
pub struct ClipTokenizer {
    vocab_size: usize,
    /// Merges keyed by the ids of the two symbols.
    merges: HashMap<(u32, u32), Merge>,
    /// Vocabulary id of each byte's symbol, indexed by byte value.
    byte_ids: [u32; 256],
    /// The same with the end-of-word mark (`</w>`), for the last byte of a word.
    byte_end_ids: [u32; 256],
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
    /// Texts cut out of the raw prompt as single ids, longest first.
    special_tokens: Vec<(String, u32)>,
    pieces: Regex,
    cache: Mutex<HashMap<String, Vec<u32>>>,
}

impl ClipTokenizer {
    /// Loads the tokenizer from a `vocab.json` (token -> id) and a `merges.txt` (one
    /// `left right` merge per line, highest priority first, after a `#version` line).
    pub fn from_files(vocab_json: &Path, merges_txt: &Path, pad: PadToken) -> Result<Self> {
        let vocab_text = read_text(vocab_json)?;
        let vocab: HashMap<String, u32> = serde_json::from_str(&vocab_text).map_err(|e| {
            ModelError::bad_file(vocab_json, format!("not a token -> id JSON map: {e}"))
        })?;
        let merges_text = read_text(merges_txt)?;
        let mut merges = Vec::new();
        for (line_index, line) in merges_text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || (line_index == 0 && line.starts_with("#version")) {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(left), Some(right), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(ModelError::bad_file(
                    merges_txt,
                    format!(
                        "line {}: expected two symbols, got `{line}`",
                        line_index + 1
                    ),
                ));
            };
            merges.push((left.to_string(), right.to_string(), line_index + 1));
        }
        Self::from_tables(vocab, &merges, pad, vocab_json, |line, message| {
            ModelError::bad_file(merges_txt, format!("line {line}: {message}"))
        })
    }

    /// Loads the tokenizer from a `tokenizer.json` as the `tokenizers` library saves it (what
    /// transformers 5 writes instead of `vocab.json` + `merges.txt`): its BPE model's
    /// vocabulary and merges (as `"left right"` strings or `["left", "right"]` pairs), and
    /// its added tokens (`<|startoftext|>`, `<|endoftext|>`).
    pub fn from_tokenizer_json(path: &Path, pad: PadToken) -> Result<Self> {
        let text = read_text(path)?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::bad_file(path, format!("invalid JSON: {e}")))?;
        let config_error = |key: &str, message: String| ModelError::Config {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        let model = json
            .get("model")
            .ok_or_else(|| config_error("model", "missing".into()))?;
        match model.get("type").and_then(|t| t.as_str()) {
            Some("BPE") | None => {}
            Some(other) => {
                return Err(config_error(
                    "model.type",
                    format!("a CLIP tokenizer is BPE, not {other}"),
                ))
            }
        }
        let mut vocab: HashMap<String, u32> = model
            .get("vocab")
            .cloned()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| config_error("model.vocab", format!("not a token -> id map: {e}")))?
            .ok_or_else(|| config_error("model.vocab", "missing".into()))?;
        // Special tokens may live only among the added tokens.
        for added in json
            .get("added_tokens")
            .and_then(|a| a.as_array())
            .into_iter()
            .flatten()
        {
            if let (Some(content), Some(id)) = (
                added.get("content").and_then(|c| c.as_str()),
                added.get("id").and_then(|i| i.as_u64()),
            ) {
                vocab.entry(content.to_string()).or_insert(id as u32);
            }
        }
        let listed = model
            .get("merges")
            .and_then(|m| m.as_array())
            .ok_or_else(|| config_error("model.merges", "missing, or not a list".into()))?;
        let mut merges = Vec::with_capacity(listed.len());
        for (index, merge) in listed.iter().enumerate() {
            let pair = match merge {
                serde_json::Value::String(text) => {
                    let mut parts = text.split(' ');
                    match (parts.next(), parts.next(), parts.next()) {
                        (Some(left), Some(right), None) => Some((left, right)),
                        _ => None,
                    }
                }
                serde_json::Value::Array(items) => match &items[..] {
                    [serde_json::Value::String(left), serde_json::Value::String(right)] => {
                        Some((left.as_str(), right.as_str()))
                    }
                    _ => None,
                },
                _ => None,
            };
            let Some((left, right)) = pair else {
                return Err(config_error(
                    "model.merges",
                    format!("merge {index}: expected two symbols, got {merge}"),
                ));
            };
            merges.push((left.to_string(), right.to_string(), index));
        }
        Self::from_tables(vocab, &merges, pad, path, |index, message| {
            config_error("model.merges", format!("merge {index}: {message}"))
        })
    }

    /// The tokenizer of a vocabulary (read from `vocab_file`, named in errors) and its merges
    /// `(left, right, where)` in priority order; `bad_merge(where, message)` is the error of a
    /// merge that does not fit the vocabulary.
    fn from_tables(
        vocab: HashMap<String, u32>,
        merges_list: &[(String, String, usize)],
        pad: PadToken,
        vocab_file: &Path,
        bad_merge: impl Fn(usize, String) -> ModelError,
    ) -> Result<Self> {
        let id_of = |token: &str| {
            vocab.get(token).copied().ok_or_else(|| {
                ModelError::bad_file(
                    vocab_file,
                    format!("token `{token}` is not in the vocabulary"),
                )
            })
        };

        let byte_chars = bytes_to_unicode();
        let mut byte_ids = [0u32; 256];
        let mut byte_end_ids = [0u32; 256];
        for (byte, ch) in byte_chars.iter().enumerate() {
            byte_ids[byte] = id_of(&ch.to_string())?;
            byte_end_ids[byte] = id_of(&format!("{ch}{END_OF_WORD}"))?;
        }
        let bos_id = id_of(START_OF_TEXT)?;
        let eos_id = id_of(END_OF_TEXT)?;
        let pad_id = id_of(pad.text())?;
        // Ids index the embedding table, so the table must cover the largest one.
        let vocab_size = vocab.values().max().map_or(0, |&max| max as usize + 1);

        let mut merges = HashMap::new();
        for (rank, (left, right, place)) in merges_list.iter().enumerate() {
            let lookup = |token: &str| {
                vocab.get(token).copied().ok_or_else(|| {
                    bad_merge(
                        *place,
                        format!("`{token}` is not in {}", vocab_file.display()),
                    )
                })
            };
            let pair = (lookup(left)?, lookup(right)?);
            let merged_id = lookup(&format!("{left}{right}"))?;
            // A repeated pair keeps its first (highest-priority) rank, as the reference's
            // rank dictionary would if built first-wins; real files have no repeats.
            merges.entry(pair).or_insert(Merge {
                rank: rank as u32,
                merged_id,
            });
        }

        Ok(Self {
            vocab_size,
            merges,
            byte_ids,
            byte_end_ids,
            bos_id,
            eos_id,
            pad_id,
            special_tokens: special_tokens(bos_id, eos_id, &pad, pad_id),
            pieces: piece_regex(),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Loads a diffusers `tokenizer/` folder: `vocab.json` + `merges.txt` (or, when neither
    /// is there, `tokenizer.json`), with the pad
    /// token from `special_tokens_map.json` or `tokenizer_config.json` (`<|endoftext|>`
    /// when neither names one).
    ///
    /// `special_tokens_map.json` is read first because transformers lets it override
    /// `tokenizer_config.json`. SD 2.x folders name `!`, SD 1.x `<|endoftext|>`.
    pub fn from_folder(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(ModelError::Missing {
                path: dir.to_path_buf(),
            });
        }
        let mut pad = None;
        for name in ["special_tokens_map.json", "tokenizer_config.json"] {
            pad = read_pad_token(&dir.join(name))?;
            if pad.is_some() {
                break;
            }
        }
        let pad = pad.unwrap_or(PadToken::EndOfText);
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        let tokenizer_json = dir.join("tokenizer.json");
        // The two-file form when it is there (real SD repositories), else what
        // transformers 5 saves alone.
        if !vocab.is_file() && !merges.is_file() && tokenizer_json.is_file() {
            return Self::from_tokenizer_json(&tokenizer_json, pad);
        }
        Self::from_files(&vocab, &merges, pad)
    }

    /// A tokenizer made without files, for the built-in demo model: the 256 byte symbols,
    /// the same 256 with `</w>`, no merges, then `<|startoftext|>` (512) and
    /// `<|endoftext|>` (513), which also pads. Every byte becomes one id.
    pub fn bytes_only() -> Self {
        let mut byte_ids = [0u32; 256];
        let mut byte_end_ids = [0u32; 256];
        // Ids follow the table's order, not byte order, exactly as CLIP's vocabulary
        // begins, so a real vocabulary's first 512 ids mean the same symbols.
        let order = byte_order();
        for (id, &byte) in order.iter().enumerate() {
            byte_ids[byte as usize] = id as u32;
            byte_end_ids[byte as usize] = (id + 256) as u32;
        }
        Self {
            vocab_size: 514,
            merges: HashMap::new(),
            byte_ids,
            byte_end_ids,
            bos_id: 512,
            eos_id: 513,
            pad_id: 513,
            special_tokens: special_tokens(512, 513, &PadToken::EndOfText, 513),
            pieces: piece_regex(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The 77 ids of a prompt: `[bos] + ids + [eos]`, truncated (eos kept last) and
    /// padded with the pad id. Special tokens written in the text (`<|endoftext|>`, the
    /// pad token) become their ids.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        // Room is left for the final eos; what comes after would be cut anyway.
        const LIMIT: usize = MAX_TOKENS - 1;
        let mut ids = self.ids_up_to(text, LIMIT);
        ids.truncate(LIMIT);
        ids.push(self.eos_id);
        ids.resize(MAX_TOKENS, self.pad_id);
        ids
    }

    /// How many tokens the prompt is, start and end tokens included, before truncation to
    /// [`MAX_TOKENS`]: more than that and CLIP reads only the first [`MAX_TOKENS`].
    pub fn token_count(&self, text: &str) -> usize {
        self.ids_up_to(text, usize::MAX).len() + 1
    }

    /// `[bos] + ids` of `text`, stopping once `limit` ids are reached.
    fn ids_up_to(&self, text: &str, limit: usize) -> Vec<u32> {
        let mut ids = Vec::with_capacity(MAX_TOKENS);
        ids.push(self.bos_id);
        let mut rest = text;
        while !rest.is_empty() && ids.len() < limit {
            let (plain, special) = self.next_special(rest);
            let normalized = normalize(&rest[..plain]);
            for piece in self.pieces.find_iter(&normalized) {
                if ids.len() >= limit {
                    break;
                }
                self.push_word_ids(piece.as_str(), &mut ids);
            }
            match special {
                Some((len, id)) => {
                    ids.push(id);
                    rest = &rest[plain + len..];
                }
                None => rest = "",
            }
        }
        ids
    }

    /// Number of ids in the vocabulary (49,408 for CLIP, 514 for [`Self::bytes_only`]).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The id that fills the ids after the prompt.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The end-of-text id, which closes every prompt.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// The start-of-text id, which opens every prompt.
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    /// The first special token of `text`: the byte length of the plain text before it,
    /// and its own byte length and id (`None` when there is none). At one position the
    /// longest special token wins, as transformers' added-token matcher does.
    fn next_special(&self, text: &str) -> (usize, Option<(usize, u32)>) {
        for (start, _) in text.char_indices() {
            let tail = &text[start..];
            // `special_tokens` is sorted longest first.
            if let Some((token, id)) = self
                .special_tokens
                .iter()
                .find(|(t, _)| tail.starts_with(t.as_str()))
            {
                return (start, Some((token.len(), *id)));
            }
        }
        (text.len(), None)
    }

    fn push_word_ids(&self, word: &str, ids: &mut Vec<u32>) {
        if let Some(cached) = self.cache.lock().get(word) {
            ids.extend_from_slice(cached);
            return;
        }
        let word_ids = self.bpe(word.as_bytes());
        ids.extend_from_slice(&word_ids);
        let mut cache = self.cache.lock();
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(word.to_string(), word_ids);
    }

    /// Byte-pair encoding of one word: start from one symbol per byte (the last with
    /// `</w>`), then repeatedly merge every occurrence, left to right, of the adjacent
    /// pair with the lowest rank, until no pair has a merge.
    fn bpe(&self, bytes: &[u8]) -> Vec<u32> {
        let Some((&last, rest)) = bytes.split_last() else {
            return Vec::new();
        };
        let mut symbols: Vec<u32> = rest.iter().map(|&b| self.byte_ids[b as usize]).collect();
        symbols.push(self.byte_end_ids[last as usize]);

        loop {
            let best = symbols
                .windows(2)
                .filter_map(|pair| {
                    let key = (pair[0], pair[1]);
                    self.merges
                        .get(&key)
                        .map(|merge| (merge.rank, key, merge.merged_id))
                })
                .min_by_key(|&(rank, _, _)| rank);
            let Some((_, (left, right), merged_id)) = best else {
                break;
            };
            let mut merged = Vec::with_capacity(symbols.len());
            let mut i = 0;
            while i < symbols.len() {
                if i + 1 < symbols.len() && symbols[i] == left && symbols[i + 1] == right {
                    merged.push(merged_id);
                    i += 2;
                } else {
                    merged.push(symbols[i]);
                    i += 1;
                }
            }
            symbols = merged;
        }
        symbols
    }
}

/// NFC, whitespace runs to one space, trimmed, lower-cased character by character.
///
/// Per character, like transformers' `Lowercase` normalizer: `str::to_lowercase` would
/// turn a word-final capital sigma into `ς` where transformers gives `σ`.
fn normalize(text: &str) -> String {
    let nfc: String = text.nfc().collect();
    let mut normalized = String::with_capacity(nfc.len());
    for word in nfc.split_whitespace() {
        if !normalized.is_empty() {
            normalized.push(' ');
        }
        normalized.extend(word.chars().flat_map(char::to_lowercase));
    }
    normalized
}

/// The texts transformers cuts out as single ids: bos, eos and the pad token (unk is eos).
fn special_tokens(bos_id: u32, eos_id: u32, pad: &PadToken, pad_id: u32) -> Vec<(String, u32)> {
    let mut tokens = vec![
        (START_OF_TEXT.to_string(), bos_id),
        (END_OF_TEXT.to_string(), eos_id),
    ];
    if !tokens.iter().any(|(text, _)| text == pad.text()) && !pad.text().is_empty() {
        tokens.push((pad.text().to_string(), pad_id));
    }
    tokens.sort_by_key(|(text, _)| std::cmp::Reverse(text.len()));
    tokens
}

fn piece_regex() -> Regex {
    // The pattern is a constant, tested by every encode test: it cannot fail at run time.
    Regex::new(PIECE_PATTERN).expect("CLIP pre-tokenizer pattern is valid")
}

/// Bytes in the order of GPT-2's byte-to-unicode table: the printable Latin-1 bytes
/// (`!`..`~`, `¡`..`¬`, `®`..`ÿ`) first, then the other 68 in byte order.
fn byte_order() -> [u8; 256] {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut order = [0u8; 256];
    let firsts = (0..=255u8).filter(|&b| printable(b));
    let others = (0..=255u8).filter(|&b| !printable(b));
    for (slot, byte) in order.iter_mut().zip(firsts.chain(others)) {
        *slot = byte;
    }
    order
}

/// GPT-2's byte-to-unicode map, indexed by byte: printable Latin-1 bytes stand for
/// themselves, the others (controls, space, ...) for U+0100 onwards in byte order, so
/// every byte is a visible, non-space character BPE symbols can be made of.
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next_shifted = 256u32;
    for byte in 0..=255u8 {
        let printable = matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[byte as usize] = if printable {
            char::from(byte)
        } else {
            let shifted = char::from_u32(next_shifted).unwrap_or(char::REPLACEMENT_CHARACTER);
            next_shifted += 1;
            shifted
        };
    }
    table
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ModelError::Missing {
            path: path.to_path_buf(),
        },
        _ => ModelError::bad_file(path, e),
    })
}

/// The `pad_token` of a tokenizer config file, written either as a string or as an
/// added-token object `{"content": "..."}`; `None` when the file or the key is absent.
fn read_pad_token(path: &Path) -> Result<Option<PadToken>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = read_text(path)?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::bad_file(path, format!("invalid JSON: {e}")))?;
    let pad = match json.get("pad_token") {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::String(text)) => text.as_str(),
        Some(value) => value
            .get("content")
            .and_then(|content| content.as_str())
            .ok_or_else(|| ModelError::Config {
                path: path.to_path_buf(),
                key: "pad_token".into(),
                message: format!("expected a string or {{\"content\": ...}}, got {value}"),
            })?,
    };
    Ok(Some(PadToken::from_text(pad)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_count_counts_past_the_cut() {
        let tokenizer = ClipTokenizer::bytes_only();
        let short = tokenizer.token_count("a fox");
        assert!(short <= MAX_TOKENS, "{short}");
        let long = "a red fox in the snow ".repeat(20);
        let count = tokenizer.token_count(&long);
        assert!(count > MAX_TOKENS, "{count}");
        // What encode keeps is the first MAX_TOKENS - 1 ids, then the end token.
        let ids = tokenizer.encode(&long);
        assert_eq!(ids.len(), MAX_TOKENS);
        assert_eq!(ids[MAX_TOKENS - 1], tokenizer.eos_id());
    }

    #[test]
    fn byte_table_matches_order() {
        let table = bytes_to_unicode();
        let order = byte_order();
        // The first 188 are the printable bytes standing for themselves.
        assert_eq!(table[order[0] as usize], '!');
        assert_eq!(table[order[188] as usize], '\u{100}');
        assert_eq!(table[b' ' as usize], 'Ġ');
        let mut sorted = order;
        sorted.sort_unstable();
        assert!(sorted.iter().enumerate().all(|(i, &b)| i == b as usize));
    }
}
