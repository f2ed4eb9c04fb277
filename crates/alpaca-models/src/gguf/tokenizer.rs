//! The tokenizer a GGUF file carries in its `tokenizer.ggml.*` metadata, rebuilt as a
//! Hugging Face tokenizer.json (plus tokenizer_config.json with the chat template).
//!
//! Only llama.cpp's `gpt2` tokenizer model (byte-level BPE: GPT-2, SmolLM, LLaMA 3, ...) is
//! rebuilt. How text is split before BPE depends on `tokenizer.ggml.pre`; we follow
//! llama.cpp's table for the families we know and refuse the others, since a wrong split
//! gives plausible but different token ids.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use serde_json::{json, Map, Value};
use tokenizers::Tokenizer;

use super::GgufFile;
use crate::error::{ModelError, Result};

/// llama.cpp's token types (`llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// LLaMA 3's split (llama.cpp `LLAMA_VOCAB_PRE_TYPE_LLAMA3`, HF's tokenizer.json of Llama 3).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A tokenizer rebuilt from GGUF metadata, with the files transformers' AutoTokenizer reads.
pub struct GgufTokenizer {
    pub tokenizer: Tokenizer,
    pub tokenizer_config: Value,
    pub special_tokens_map: Value,
    pub vocab_size: usize,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub chat_template: Option<String>,
}

impl GgufTokenizer {
    /// Writes tokenizer.json, tokenizer_config.json and special_tokens_map.json into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join("tokenizer.json");
        let text = self
            .tokenizer
            .to_string(false)
            .map_err(|e| ModelError::checkpoint(&path, format!("cannot serialise: {e}")))?;
        alpaca_track::write_atomic(&path, text.as_bytes())
            .map_err(|source| ModelError::Io { path, source })?;
        super::llama::write_json(&dir.join("tokenizer_config.json"), &self.tokenizer_config)?;
        super::llama::write_json(
            &dir.join("special_tokens_map.json"),
            &self.special_tokens_map,
        )
    }
}

/// GPT-2's byte → printable character table (`bytes_to_unicode`): byte-level BPE vocabularies
/// spell every byte as one of these 256 characters.
pub fn byte_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next_free = 256u32;
    for byte in 0..=255u8 {
        let printable = matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let code = if printable {
            u32::from(byte)
        } else {
            let code = next_free;
            next_free += 1;
            code
        };
        table[byte as usize] = char::from_u32(code).expect("codes below 0x200 are characters");
    }
    table
}

/// The pre-tokenizer (how text is cut before BPE) for a `tokenizer.ggml.pre` value.
fn pre_tokenizer(file: &GgufFile, pre: &str) -> Result<Value> {
    let byte_level = |use_regex: bool| {
        json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
               "use_regex": use_regex})
    };
    Ok(match pre {
        // GPT-2's regex inside ByteLevel.
        "default" | "gpt2" | "gpt-2" => byte_level(true),
        // llama.cpp isolates every digit first (`\p{N}`), then applies GPT-2's regex: what
        // HF's tokenizer.json of these models does with Digits(individual_digits) + ByteLevel.
        "smollm" | "starcoder" | "refact" | "codeshell" | "command-r" | "exaone" | "minerva-7b" => {
            json!({
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Digits", "individual_digits": true},
                    byte_level(true),
                ],
            })
        }
        "llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" | "dbrx" | "falcon3" => json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated",
                 "invert": false},
                byte_level(false),
            ],
        }),
        other => {
            return Err(file.error(format!(
                "tokenizer.ggml.pre is {other:?}, a text split alpaca does not know (known: \
                 default, gpt2, smollm, starcoder, refact, codeshell, command-r, exaone, \
                 minerva-7b, llama3, llama-bpe, smaug-bpe, dbrx, falcon3)"
            )))
        }
    })
}

fn token_id(file: &GgufFile, key: &str, vocab_size: usize) -> Result<Option<u32>> {
    match file.optional_unsigned(key)? {
        None => Ok(None),
        Some(id) if (id as usize) < vocab_size => Ok(Some(id as u32)),
        Some(id) => Err(file.error(format!(
            "{key} is {id}, outside the vocabulary of {vocab_size} tokens"
        ))),
    }
}

/// Rebuilds the tokenizer from `tokenizer.ggml.*`: byte-level BPE with the file's vocabulary
/// and merges, control tokens as special added tokens, user-defined ones as plain added
/// tokens, BOS/EOS added around a text only when the file says so.
pub fn build_tokenizer(file: &GgufFile, context_length: usize) -> Result<GgufTokenizer> {
    let model = file.string("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(file.error(format!(
            "tokenizer.ggml.model is {model:?}; alpaca rebuilds \"gpt2\" (byte-level BPE) \
             tokenizers only"
        )));
    }
    let tokens = file.string_array("tokenizer.ggml.tokens")?;
    let vocab_size = tokens.len();
    let token_types = match file.metadata().contains_key("tokenizer.ggml.token_type") {
        true => file.integer_array("tokenizer.ggml.token_type")?,
        false => vec![1; vocab_size],
    };
    if token_types.len() != vocab_size {
        return Err(file.error(format!(
            "tokenizer.ggml.token_type has {} entries for {vocab_size} tokens",
            token_types.len()
        )));
    }
    let merges = file.string_array("tokenizer.ggml.merges")?;
    let pre = file
        .optional_string("tokenizer.ggml.pre")?
        .unwrap_or("default");

    // Tokens are stored already spelled in the byte alphabet ("Ġthe"); one that is not (a
    // mislabelled raw-text token) is re-spelled from its UTF-8 bytes, as transformers does.
    let alphabet = byte_alphabet();
    let in_alphabet = |token: &str| token.chars().all(|c| alphabet.contains(&c));
    let mut vocab = Map::new();
    for (id, token) in tokens.iter().enumerate() {
        let spelled = match in_alphabet(token) {
            true => token.to_string(),
            false => token.bytes().map(|byte| alphabet[byte as usize]).collect(),
        };
        // A repeated spelling keeps its first id, so every other id still decodes.
        vocab.entry(spelled).or_insert(json!(id));
    }
    let merge_pairs = merges
        .iter()
        .enumerate()
        .map(|(index, merge)| match merge.split_once(' ') {
            Some((left, right)) => Ok(json!([left, right])),
            None => Err(file.error(format!(
                "tokenizer.ggml.merges element {index} ({merge:?}) is not two pieces separated \
                 by a space"
            ))),
        })
        .collect::<Result<Vec<Value>>>()?;

    let mut added_tokens = Vec::new();
    let mut added_decoder = Map::new();
    for (id, (token, token_type)) in tokens.iter().zip(&token_types).enumerate() {
        let special = match *token_type {
            // A control token outside the byte alphabet is a llama.cpp mislabel; adding it
            // would give it an id the model has no embedding for (transformers skips it too).
            TOKEN_TYPE_CONTROL if in_alphabet(token) => true,
            TOKEN_TYPE_USER_DEFINED => false,
            _ => continue,
        };
        let entry = json!({
            "id": id, "content": token, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": special,
        });
        let mut decoder_entry = entry.clone();
        if let Some(object) = decoder_entry.as_object_mut() {
            object.remove("id");
        }
        added_decoder.insert(id.to_string(), decoder_entry);
        added_tokens.push(entry);
    }

    let bos_id = token_id(file, "tokenizer.ggml.bos_token_id", vocab_size)?;
    let eos_id = token_id(file, "tokenizer.ggml.eos_token_id", vocab_size)?;
    let unk_id = token_id(file, "tokenizer.ggml.unknown_token_id", vocab_size)?;
    let pad_id = token_id(file, "tokenizer.ggml.padding_token_id", vocab_size)?;
    let add_bos = file
        .optional_bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(false);
    let add_eos = file
        .optional_bool("tokenizer.ggml.add_eos_token")?
        .unwrap_or(false);
    let token_text = |id: Option<u32>| id.map(|id| tokens[id as usize].to_string());
    let post_processor = template_processor(
        add_bos
            .then(|| bos_id.map(|id| (tokens[id as usize], id)))
            .flatten(),
        add_eos
            .then(|| eos_id.map(|id| (tokens[id as usize], id)))
            .flatten(),
    );

    let tokenizer_json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer(file, pre)?,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                    "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merge_pairs,
        },
    });
    let tokenizer = Tokenizer::from_str(&tokenizer_json.to_string())
        .map_err(|e| file.error(format!("the rebuilt tokenizer does not load: {e}")))?;

    let chat_template = file
        .optional_string("tokenizer.chat_template")?
        .map(str::to_string);
    let mut special_tokens_map = Map::new();
    for (name, id) in [
        ("bos_token", bos_id),
        ("eos_token", eos_id),
        ("unk_token", unk_id),
        ("pad_token", pad_id),
    ] {
        if let Some(text) = token_text(id) {
            special_tokens_map.insert(name.into(), json!(text));
        }
    }
    let mut tokenizer_config = special_tokens_map.clone();
    tokenizer_config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    tokenizer_config.insert("add_bos_token".into(), json!(add_bos));
    tokenizer_config.insert("add_eos_token".into(), json!(add_eos));
    tokenizer_config.insert("model_max_length".into(), json!(context_length));
    tokenizer_config.insert("clean_up_tokenization_spaces".into(), json!(false));
    tokenizer_config.insert("added_tokens_decoder".into(), Value::Object(added_decoder));
    if let Some(template) = &chat_template {
        tokenizer_config.insert("chat_template".into(), json!(template));
    }

    Ok(GgufTokenizer {
        tokenizer,
        tokenizer_config: Value::Object(tokenizer_config),
        special_tokens_map: Value::Object(special_tokens_map),
        vocab_size,
        bos_id,
        eos_id,
        pad_id,
        chat_template,
    })
}

/// A TemplateProcessing post-processor that puts BOS before and/or EOS after each sequence.
fn template_processor(bos: Option<(&str, u32)>, eos: Option<(&str, u32)>) -> Value {
    let mut special_tokens: HashMap<String, Value> = HashMap::new();
    let sequence = |type_id: u32| -> Vec<Value> {
        let mut items = Vec::new();
        if let Some((text, _)) = bos {
            items.push(json!({"SpecialToken": {"id": text, "type_id": type_id}}));
        }
        let id = if type_id == 0 { "A" } else { "B" };
        items.push(json!({"Sequence": {"id": id, "type_id": type_id}}));
        if let Some((text, _)) = eos {
            items.push(json!({"SpecialToken": {"id": text, "type_id": type_id}}));
        }
        items
    };
    for (text, id) in [bos, eos].into_iter().flatten() {
        special_tokens.insert(
            text.to_string(),
            json!({"id": text, "ids": [id], "tokens": [text]}),
        );
    }
    let mut pair = sequence(0);
    pair.extend(sequence(1));
    json!({
        "type": "TemplateProcessing",
        "single": sequence(0),
        "pair": pair,
        "special_tokens": special_tokens,
    })
}
