//! Training a tokenizer from scratch with the `tokenizers` crate, laid out as HF does:
//! - WordPiece as `BertWordPieceTokenizer` builds it: BERT normaliser (lower-casing unless
//!   cased), BERT pre-tokeniser, `##` continuation prefix, `[CLS] A [SEP] B [SEP]` template,
//!   special tokens `[PAD] [UNK] [CLS] [SEP] [MASK]` at ids 0–4;
//! - byte-level BPE as `ByteLevelBPETokenizer`/RoBERTa builds it: byte-level pre-tokeniser
//!   and decoder, the full byte alphabet (no unknown tokens), `<s> A </s></s> B </s>`,
//!   special tokens `<s> <pad> </s> <unk> <mask>` at ids 0–4.
//!
//! The result is a `tokenizer.json` that HF `tokenizers` and `transformers` load as is.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::wordpiece::{WordPiece, WordPieceTrainer};
use tokenizers::models::TrainerWrapper;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{DataError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerKind {
    WordPiece,
    Bpe,
}

impl TokenizerKind {
    /// The special tokens, in id order from 0.
    pub fn special_tokens(self) -> [&'static str; 5] {
        match self {
            TokenizerKind::WordPiece => ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
            TokenizerKind::Bpe => ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        }
    }
}

/// What to train.
#[derive(Debug, Clone, Copy)]
pub struct TokenizerSpec {
    pub kind: TokenizerKind,
    pub vocab_size: usize,
    /// A pair must occur this often to be merged.
    pub min_frequency: u64,
    /// Lower-case and strip accents (WordPiece only; BPE keeps the text as is).
    pub lowercase: bool,
}

/// Trains a tokenizer on `texts`. The vocabulary may come out smaller than asked when the
/// corpus has fewer distinct pieces; the caller reports `get_vocab_size(true)`.
pub fn train_tokenizer<S: AsRef<str> + Send>(
    spec: TokenizerSpec,
    texts: impl Iterator<Item = S> + Send,
) -> Result<Tokenizer> {
    let specials = spec.kind.special_tokens();
    if spec.vocab_size <= specials.len() {
        return Err(DataError::Tokenizer(format!(
            "vocab size {} leaves no room beside the {} special tokens",
            spec.vocab_size,
            specials.len()
        )));
    }
    let special_tokens: Vec<AddedToken> = specials
        .iter()
        .map(|t| AddedToken::from(t.to_string(), true))
        .collect();
    let failed = |e: tokenizers::Error| DataError::Tokenizer(format!("tokenizer training: {e}"));
    let mut tokenizer = match spec.kind {
        TokenizerKind::WordPiece => {
            let model = WordPiece::builder()
                .unk_token("[UNK]".into())
                .build()
                .map_err(failed)?;
            let mut tokenizer = Tokenizer::new(model);
            tokenizer
                .with_normalizer(Some(BertNormalizer::new(
                    true,
                    true,
                    Some(spec.lowercase),
                    spec.lowercase,
                )))
                .with_pre_tokenizer(Some(BertPreTokenizer))
                .with_decoder(Some(WordPieceDecoder::default()));
            let mut trainer: TrainerWrapper = WordPieceTrainer::builder()
                .vocab_size(spec.vocab_size)
                .min_frequency(spec.min_frequency)
                .special_tokens(special_tokens)
                .show_progress(false)
                .build()
                .into();
            tokenizer.train(&mut trainer, texts).map_err(failed)?;
            let id = |t: &str| tokenizer.token_to_id(t).expect("special tokens are added");
            let processor =
                BertProcessing::new(("[SEP]".into(), id("[SEP]")), ("[CLS]".into(), id("[CLS]")));
            tokenizer.with_post_processor(Some(processor));
            tokenizer
        }
        TokenizerKind::Bpe => {
            let mut tokenizer = Tokenizer::new(BPE::default());
            tokenizer
                .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
                .with_decoder(Some(ByteLevelDecoder::default()));
            let mut trainer: TrainerWrapper = BpeTrainer::builder()
                .vocab_size(spec.vocab_size)
                .min_frequency(spec.min_frequency)
                .special_tokens(special_tokens)
                .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
                .show_progress(false)
                .build()
                .into();
            tokenizer.train(&mut trainer, texts).map_err(failed)?;
            let id = |t: &str| tokenizer.token_to_id(t).expect("special tokens are added");
            let processor =
                RobertaProcessing::new(("</s>".into(), id("</s>")), ("<s>".into(), id("<s>")))
                    .trim_offsets(true)
                    .add_prefix_space(false);
            tokenizer.with_post_processor(Some(processor));
            tokenizer
        }
    };
    // Padding and truncation are the caller's business (batches pad themselves).
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(None)
        .map_err(|e| DataError::Tokenizer(e.to_string()))?;
    Ok(tokenizer)
}

/// Writes `tokenizer.json`, plus `tokenizer_config.json` and `special_tokens_map.json` so that
/// `transformers.AutoTokenizer` knows which token is which, into `dir` (created if needed).
/// Each file is written to a temporary name and renamed.
pub fn save_tokenizer(
    tokenizer: &Tokenizer,
    kind: TokenizerKind,
    lowercase: bool,
    dir: &Path,
) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DataError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let json = tokenizer
        .to_string(true)
        .map_err(|e| DataError::Tokenizer(format!("cannot serialise the tokenizer: {e}")))?;
    let [first, second, third, fourth, fifth] = kind.special_tokens();
    let (pad, unk, cls, sep, mask) = match kind {
        TokenizerKind::WordPiece => (first, second, third, fourth, fifth),
        // <s> <pad> </s> <unk> <mask>: <s> plays [CLS], </s> plays [SEP].
        TokenizerKind::Bpe => (second, fourth, first, third, fifth),
    };
    let specials = serde_json::json!({
        "pad_token": pad, "unk_token": unk, "cls_token": cls, "sep_token": sep,
        "mask_token": mask,
    });
    let mut config = specials.clone();
    let extra = match kind {
        TokenizerKind::WordPiece => serde_json::json!({
            "tokenizer_class": "BertTokenizer", "do_lower_case": lowercase,
            "model_max_length": 512,
        }),
        TokenizerKind::Bpe => serde_json::json!({
            "tokenizer_class": "RobertaTokenizer", "bos_token": cls, "eos_token": sep,
            "add_prefix_space": false, "model_max_length": 512,
        }),
    };
    for (key, value) in extra.as_object().expect("an object") {
        config[key] = value.clone();
    }
    let files = [
        ("tokenizer.json", json),
        (
            "tokenizer_config.json",
            serde_json::to_string_pretty(&config).expect("JSON"),
        ),
        (
            "special_tokens_map.json",
            serde_json::to_string_pretty(&specials).expect("JSON"),
        ),
    ];
    for (name, text) in files {
        let path = dir.join(name);
        let temporary = dir.join(format!(".{name}.partial"));
        std::fs::write(&temporary, text + "\n").map_err(io(&temporary))?;
        std::fs::rename(&temporary, &path).map_err(io(&path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: [&str; 4] = [
        "Call me Ishmael. Some years ago, never mind how long precisely, I went to sea.",
        "The whale, the whale! Ahab cried out across the deck of the Pequod.",
        "Fellow citizens of the Senate and House of Representatives: the state of the union.",
        "Whales and ships and the sea; the sea and ships and whales.",
    ];

    fn spec(kind: TokenizerKind, vocab_size: usize) -> TokenizerSpec {
        TokenizerSpec {
            kind,
            vocab_size,
            min_frequency: 1,
            lowercase: true,
        }
    }

    #[test]
    fn wordpiece_has_bert_special_tokens_and_template() {
        let tokenizer = train_tokenizer(spec(TokenizerKind::WordPiece, 200), TEXT.iter()).unwrap();
        for (id, token) in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
            .iter()
            .enumerate()
        {
            assert_eq!(tokenizer.token_to_id(token), Some(id as u32), "{token}");
        }
        let encoding = tokenizer.encode(("The whale", "the sea"), true).unwrap();
        let tokens = encoding.get_tokens();
        assert_eq!(tokens.first().map(String::as_str), Some("[CLS]"));
        assert_eq!(tokens.iter().filter(|t| *t == "[SEP]").count(), 2);
        assert_eq!(*encoding.get_type_ids().last().unwrap(), 1);
        // Round trip: lower-cased text comes back word for word.
        let ids = tokenizer
            .encode("Ahab cried: the whale!", false)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(
            tokenizer.decode(&ids, true).unwrap(),
            "ahab cried : the whale!"
        );
    }

    #[test]
    fn byte_level_bpe_round_trips_any_text_exactly() {
        let tokenizer = train_tokenizer(spec(TokenizerKind::Bpe, 400), TEXT.iter()).unwrap();
        assert_eq!(tokenizer.token_to_id("<s>"), Some(0));
        assert_eq!(tokenizer.token_to_id("<mask>"), Some(4));
        // Characters never seen in training still round-trip (the byte alphabet covers them).
        let text = "Ahab's whale — naïve 東京 🐋!";
        let ids = tokenizer.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(tokenizer.decode(&ids, false).unwrap(), text);
        let with_specials = tokenizer.encode(text, true).unwrap();
        assert_eq!(with_specials.get_ids()[0], 0);
    }

    #[test]
    fn vocabulary_stops_where_the_corpus_runs_out() {
        let tokenizer =
            train_tokenizer(spec(TokenizerKind::WordPiece, 100_000), TEXT.iter()).unwrap();
        let size = tokenizer.get_vocab_size(true);
        assert!(size < 1_000, "{size}");
        let error = train_tokenizer(spec(TokenizerKind::Bpe, 5), TEXT.iter()).unwrap_err();
        assert!(error.to_string().contains("vocab size 5"), "{error}");
    }

    #[test]
    fn saved_tokenizer_loads_back() {
        let tokenizer = train_tokenizer(spec(TokenizerKind::WordPiece, 150), TEXT.iter()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        save_tokenizer(&tokenizer, TokenizerKind::WordPiece, true, dir.path()).unwrap();
        let loaded = Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
        let text = "the whale and the sea";
        assert_eq!(
            loaded.encode(text, true).unwrap().get_ids(),
            tokenizer.encode(text, true).unwrap().get_ids()
        );
        let config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("tokenizer_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(config["mask_token"], "[MASK]");
    }
}
