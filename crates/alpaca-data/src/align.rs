//! Word → sub-token alignment, the HF run_ner recipe.
//!
//! Each word is tokenized on its own (pre-tokenized input), the label goes on the first
//! sub-token of each word and every other position gets [`IGNORE_INDEX`], so the loss and the
//! predictions count each word exactly once however many pieces it was split into.
//!
//! Truncation is done here rather than by the tokenizer so that it keeps whole words and the
//! closing special token (`[SEP]`): a word cut in half would carry a label the model is then
//! evaluated on from a partial view. Words past the cut are counted in [`Encoded::words_kept`]
//! and are predicted `O` at evaluation time.
//!
//! A word can produce no sub-token at all (a control or zero-width character that the
//! normaliser deletes). It has no position to carry a label or a prediction; it still counts
//! as a word, and [`word_starts`] reports `None` for it so evaluation predicts `O` there.

use std::borrow::Cow;

use tokenizers::Tokenizer;

use crate::conll::Sentence;
use crate::error::{DataError, Result};
use crate::labels::LabelSet;

/// Label of positions that neither the loss nor the metrics look at (PyTorch's default
/// `ignore_index` of cross-entropy).
pub const IGNORE_INDEX: i64 = -100;

/// One sentence as model input.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub input_ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// Label id on the first sub-token of each word; [`IGNORE_INDEX`] on later sub-tokens and
    /// on special tokens.
    pub labels: Vec<i64>,
    /// Per token, the index of the word it came from (`None` for special tokens).
    pub word_ids: Vec<Option<usize>>,
    /// Words that fit before truncation; words from here on get `O` at evaluation time.
    pub words_kept: usize,
}

impl Encoded {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }
}

/// Tokenizes `words` with special tokens, truncates to `max_len` tokens keeping whole words,
/// and labels the first sub-token of each word with `label_ids[word]` (all [`IGNORE_INDEX`]
/// when `label_ids` is `None`, as for prediction).
pub fn encode_words(
    tokenizer: &Tokenizer,
    words: &[String],
    label_ids: Option<&[usize]>,
    max_len: usize,
) -> Result<Encoded> {
    let tokenizer = without_truncation_or_padding(tokenizer)?;
    encode_with(&tokenizer, words, label_ids, max_len)
}

/// Encodes every sentence with its tags mapped through `labels`; also returns how many
/// sentences lost words to truncation, so the caller can warn about it.
pub fn encode_sentences(
    tokenizer: &Tokenizer,
    sentences: &[Sentence],
    labels: &LabelSet,
    max_len: usize,
) -> Result<(Vec<Encoded>, usize)> {
    let tokenizer = without_truncation_or_padding(tokenizer)?;
    let mut encoded = Vec::with_capacity(sentences.len());
    let mut truncated = 0;
    for sentence in sentences {
        let ids = sentence
            .tags
            .iter()
            .enumerate()
            .map(|(index, tag)| {
                labels.id(tag).ok_or_else(|| {
                    DataError::Tokenizer(format!(
                        "line {}: tag {tag:?} is not in the label set ({})",
                        sentence.line + index,
                        labels.labels().join(", ")
                    ))
                })
            })
            .collect::<Result<Vec<usize>>>()?;
        let one = encode_with(&tokenizer, &sentence.words, Some(&ids), max_len)
            .map_err(|error| DataError::Tokenizer(format!("line {}: {error}", sentence.line)))?;
        if one.words_kept < sentence.words.len() {
            truncated += 1;
        }
        encoded.push(one);
    }
    Ok((encoded, truncated))
}

/// For each kept word, the position of its first sub-token, or `None` when it produced none.
/// Predictions are read at these positions.
pub fn word_starts(encoded: &Encoded) -> Vec<Option<usize>> {
    let mut starts = vec![None; encoded.words_kept];
    for (position, word) in encoded.word_ids.iter().enumerate() {
        if let Some(word) = *word {
            if word < starts.len() && starts[word].is_none() {
                starts[word] = Some(position);
            }
        }
    }
    starts
}

/// The tokenizer's own truncation would cut words in half and its padding would defeat
/// dynamic padding, so both are switched off. The clone (a copy of the whole vocabulary) happens
/// only when one of them would change a single encoding; callers that encode many texts
/// should pass a tokenizer prepared with [`prepare_tokenizer`].
fn without_truncation_or_padding(tokenizer: &Tokenizer) -> Result<Cow<'_, Tokenizer>> {
    if tokenizer.get_truncation().is_none() && tokenizer.get_padding().is_none_or(pads_nothing) {
        return Ok(Cow::Borrowed(tokenizer));
    }
    let mut plain = tokenizer.clone();
    plain
        .with_truncation(None)
        .map_err(|error| DataError::Tokenizer(error.to_string()))?;
    plain.with_padding(None);
    Ok(Cow::Owned(plain))
}

/// Padding to the longest of a batch leaves a single encoding as it is.
fn pads_nothing(padding: &tokenizers::PaddingParams) -> bool {
    matches!(padding.strategy, tokenizers::PaddingStrategy::BatchLongest)
        && padding.pad_to_multiple_of.is_none()
}

/// Switches off the tokenizer's truncation, and turns fixed-length padding into
/// pad-to-longest (which leaves single encodings alone) while keeping the pad token and id
/// for the batch collator. Done once at load time, so that encoding does not copy the
/// tokenizer for every text.
pub fn prepare_tokenizer(tokenizer: &mut Tokenizer) -> Result<()> {
    tokenizer
        .with_truncation(None)
        .map_err(|error| DataError::Tokenizer(error.to_string()))?;
    if let Some(padding) = tokenizer.get_padding_mut() {
        padding.strategy = tokenizers::PaddingStrategy::BatchLongest;
        padding.pad_to_multiple_of = None;
    }
    Ok(())
}

fn encode_with(
    tokenizer: &Tokenizer,
    words: &[String],
    label_ids: Option<&[usize]>,
    max_len: usize,
) -> Result<Encoded> {
    if let Some(ids) = label_ids {
        if ids.len() != words.len() {
            return Err(DataError::Tokenizer(format!(
                "{} label ids given for {} words; expected one per word",
                ids.len(),
                words.len()
            )));
        }
    }
    let encoding = tokenizer
        .encode(words, true)
        .map_err(|error| DataError::Tokenizer(format!("tokenizing {words:?}: {error}")))?;
    let word_ids: Vec<Option<usize>> = encoding
        .get_word_ids()
        .iter()
        .map(|word| word.map(|w| w as usize))
        .collect();
    let keep = positions_to_keep(&word_ids, words.len(), max_len)?;

    let mut encoded = Encoded {
        input_ids: Vec::with_capacity(keep.positions.len()),
        type_ids: Vec::with_capacity(keep.positions.len()),
        labels: Vec::with_capacity(keep.positions.len()),
        word_ids: Vec::with_capacity(keep.positions.len()),
        words_kept: keep.words,
    };
    let mut previous_word = None;
    for &position in &keep.positions {
        let word = word_ids[position];
        let label = match (word, label_ids) {
            (Some(word), Some(ids)) if previous_word != Some(word) => ids[word] as i64,
            _ => IGNORE_INDEX,
        };
        previous_word = word;
        encoded.input_ids.push(encoding.get_ids()[position]);
        encoded.type_ids.push(encoding.get_type_ids()[position]);
        encoded.labels.push(label);
        encoded.word_ids.push(word);
    }
    Ok(encoded)
}

/// Which token positions survive truncation, and how many words that keeps.
struct Kept {
    positions: Vec<usize>,
    words: usize,
}

/// Keeps the leading and trailing special tokens and as many whole words, in order, as fit in
/// between. Word tokens of one word are contiguous in a single-sequence encoding.
fn positions_to_keep(
    word_ids: &[Option<usize>],
    word_count: usize,
    max_len: usize,
) -> Result<Kept> {
    let content_start = word_ids.iter().position(Option::is_some);
    let Some(content_start) = content_start else {
        // No word produced a token: only special tokens remain.
        if word_ids.len() > max_len {
            return Err(too_short(max_len, word_ids.len()));
        }
        return Ok(Kept {
            positions: (0..word_ids.len()).collect(),
            words: word_count,
        });
    };
    let content_end = word_ids
        .iter()
        .rposition(Option::is_some)
        .map_or(0, |last| last + 1);
    let specials = content_start + (word_ids.len() - content_end);
    if specials > max_len {
        return Err(too_short(max_len, specials));
    }
    if word_ids.len() <= max_len {
        return Ok(Kept {
            positions: (0..word_ids.len()).collect(),
            words: word_count,
        });
    }
    // Content tokens that fit; then back off to the start of the word that was cut.
    let mut end = content_start + (max_len - specials);
    let mut words = match word_ids[end] {
        Some(word) => word,
        None => word_count,
    };
    while end > content_start && word_ids[end - 1] == Some(words) {
        end -= 1;
    }
    if end == content_start {
        // Not even the first word fits; it and every word after it are dropped.
        words = word_ids[content_start].unwrap_or(0);
    }
    let positions = (0..end).chain(content_end..word_ids.len()).collect();
    Ok(Kept { positions, words })
}

fn too_short(max_len: usize, specials: usize) -> DataError {
    DataError::Tokenizer(format!(
        "max length {max_len} leaves no room for the tokenizer's {specials} special tokens; \
         expected a max length above {specials}"
    ))
}
