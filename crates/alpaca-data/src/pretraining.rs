//! Training examples for BERT's self-supervised tasks, built from tokenized documents:
//! - masked LM alone: each document's token stream cut into blocks of `max_len - 2` tokens,
//!   `[CLS] block [SEP]` (blocks never cross documents);
//! - masked LM + next-sentence prediction: `[CLS] A [SEP] B [SEP]` pairs as BERT's
//!   `create_pretraining_data.py` builds them, rebuilt every epoch so the random next
//!   sentences change;
//! - dynamic masking ([`mask_tokens`]), redone every time an example is drawn: 15% of the
//!   non-special tokens are selected (whole words with `whole_word`), of those 80% become
//!   [MASK], 10% a random token, 10% stay, as HF's `DataCollatorForLanguageModeling` does.

use rand::rngs::StdRng;
use rand::Rng;
use tokenizers::Tokenizer;

use crate::align::{Encoded, IGNORE_INDEX};
use crate::corpus::{split_sentences, Document};
use crate::error::{DataError, Result};

/// Next-sentence label of a pair whose B follows A in the document (HF's convention).
pub const IS_NEXT: i64 = 0;
/// Next-sentence label of a pair whose B is a random sentence from another document.
pub const IS_RANDOM: i64 = 1;

/// A run of tokens, each flagged when it continues the word of the token before it (a
/// WordPiece `##` piece or a byte-level piece without a leading space).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Segment {
    pub ids: Vec<u32>,
    pub continues_word: Vec<bool>,
}

impl Segment {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    fn extend(&mut self, other: &Segment) {
        self.ids.extend_from_slice(&other.ids);
        self.continues_word.extend_from_slice(&other.continues_word);
    }

    fn slice(&self, range: std::ops::Range<usize>) -> Segment {
        Segment {
            ids: self.ids[range.clone()].to_vec(),
            continues_word: self.continues_word[range].to_vec(),
        }
    }
}

/// A document as its sentences, tokenized without special tokens.
pub type TokenizedDocument = Vec<Segment>;

/// Tokenizes every document sentence by sentence (no special tokens, no padding or
/// truncation). Sentences that give no tokens are dropped.
pub fn tokenize_documents(
    tokenizer: &Tokenizer,
    documents: &[Document],
) -> Result<Vec<TokenizedDocument>> {
    let mut tokenizer = tokenizer.clone();
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(None)
        .map_err(|e| DataError::Tokenizer(e.to_string()))?;
    let mut owners = Vec::new();
    let mut sentences = Vec::new();
    for (index, document) in documents.iter().enumerate() {
        for sentence in split_sentences(&document.text) {
            owners.push(index);
            sentences.push(sentence);
        }
    }
    let encodings = tokenizer
        .encode_batch(sentences, false)
        .map_err(|e| DataError::Tokenizer(format!("tokenizing the corpus: {e}")))?;
    let mut tokenized: Vec<TokenizedDocument> = vec![Vec::new(); documents.len()];
    for (owner, encoding) in owners.into_iter().zip(encodings) {
        if encoding.get_ids().is_empty() {
            continue;
        }
        let word_ids = encoding.get_word_ids();
        let continues_word = (0..word_ids.len())
            .map(|i| i > 0 && word_ids[i].is_some() && word_ids[i] == word_ids[i - 1])
            .collect();
        tokenized[owner].push(Segment {
            ids: encoding.get_ids().to_vec(),
            continues_word,
        });
    }
    Ok(tokenized)
}

/// The ids of the special tokens an example is framed with, and of the vocabulary's other
/// special tokens (unknown, padding), which are never chosen as masked-LM targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialIds {
    pub cls: u32,
    pub sep: u32,
    pub mask: u32,
    /// `[UNK]` / `<unk>`, when the vocabulary has one.
    pub unk: Option<u32>,
    /// `[PAD]` / `<pad>`, when the vocabulary has one.
    pub pad: Option<u32>,
}

impl SpecialIds {
    /// BERT's `[CLS] [SEP] [MASK]`, or RoBERTa's `<s> </s> <mask>`, from the tokenizer's
    /// vocabulary.
    pub fn of(tokenizer: &Tokenizer) -> Result<Self> {
        for [cls, sep, mask, unk, pad] in [
            ["[CLS]", "[SEP]", "[MASK]", "[UNK]", "[PAD]"],
            ["<s>", "</s>", "<mask>", "<unk>", "<pad>"],
        ] {
            if let (Some(cls), Some(sep), Some(mask)) = (
                tokenizer.token_to_id(cls),
                tokenizer.token_to_id(sep),
                tokenizer.token_to_id(mask),
            ) {
                return Ok(SpecialIds {
                    cls,
                    sep,
                    mask,
                    unk: tokenizer.token_to_id(unk),
                    pad: tokenizer.token_to_id(pad),
                });
            }
        }
        Err(DataError::Tokenizer(
            "the tokenizer has neither [CLS] [SEP] [MASK] nor <s> </s> <mask>; masked-LM \
             training needs a BERT- or RoBERTa-style vocabulary"
                .into(),
        ))
    }

    /// Whether `id` is one of these special tokens: such a token found in the text itself
    /// (mostly `[UNK]`, for characters the vocabulary lacks) is never a masked-LM target,
    /// as transformers' `DataCollatorForLanguageModeling` excludes every special id.
    pub fn is_special(&self, id: u32) -> bool {
        id == self.cls
            || id == self.sep
            || id == self.mask
            || Some(id) == self.unk
            || Some(id) == self.pad
    }
}

/// One unmasked example: `[CLS] A [SEP] (B [SEP])`.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// True on the [CLS]/[SEP] framing and on special tokens inside the text ([UNK]):
    /// never masked.
    pub special: Vec<bool>,
    pub continues_word: Vec<bool>,
    /// [`IS_NEXT`] or [`IS_RANDOM`] for NSP pairs.
    pub next_sentence: Option<i64>,
}

impl Instance {
    fn new(first: &Segment, second: Option<&Segment>, special: SpecialIds) -> Self {
        let mut instance = Instance {
            ids: vec![special.cls],
            type_ids: vec![0],
            special: vec![true],
            continues_word: vec![false],
            next_sentence: None,
        };
        let mut push = |segment: &Segment, type_id: u32| {
            instance.ids.extend_from_slice(&segment.ids);
            instance
                .continues_word
                .extend_from_slice(&segment.continues_word);
            instance
                .type_ids
                .extend(std::iter::repeat_n(type_id, segment.len() + 1));
            instance
                .special
                .extend(segment.ids.iter().map(|&id| special.is_special(id)));
            instance.ids.push(special.sep);
            instance.continues_word.push(false);
            instance.special.push(true);
        };
        push(first, 0);
        if let Some(second) = second {
            push(second, 1);
        }
        instance
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Masked-LM examples: every document's tokens (its sentences joined) cut into blocks of
/// `max_len - 2`, each framed as `[CLS] block [SEP]`. A block is never split inside a word
/// when the word can go whole into the next one.
pub fn pack_blocks(
    documents: &[TokenizedDocument],
    max_len: usize,
    special: SpecialIds,
) -> Vec<Instance> {
    let room = max_len.saturating_sub(2).max(1);
    let mut instances = Vec::new();
    for document in documents {
        let mut stream = Segment::default();
        for sentence in document {
            stream.extend(sentence);
        }
        let mut start = 0;
        while start < stream.len() {
            let mut end = (start + room).min(stream.len());
            if end < stream.len() {
                // Back up to the start of the word that would be cut, unless that word alone
                // fills the block.
                let mut word_start = end;
                while word_start > start && stream.continues_word[word_start] {
                    word_start -= 1;
                }
                if word_start > start {
                    end = word_start;
                }
            }
            instances.push(Instance::new(&stream.slice(start..end), None, special));
            start = end;
        }
    }
    instances
}

/// Next-sentence-prediction pairs for one epoch. Each document is walked sentence by
/// sentence, filling a chunk up to `max_len - 3` tokens; the chunk is split at a random
/// sentence boundary into A and B. With probability ½ B is replaced by sentences from a
/// random other document (and the unused sentences of this chunk go back into the walk).
/// A chunk of a single sentence is split inside it, so the ½ holds for every pair.
/// Pairs too long are cut from a random end of the longer side, as BERT does.
pub fn nsp_pairs(
    documents: &[TokenizedDocument],
    max_len: usize,
    special: SpecialIds,
    rng: &mut StdRng,
) -> Vec<Instance> {
    let room = max_len.saturating_sub(3).max(2);
    let mut instances = Vec::new();
    for (index, document) in documents.iter().enumerate() {
        let mut chunk: Vec<&Segment> = Vec::new();
        let mut length = 0;
        let mut position = 0;
        while position < document.len() {
            let sentence = &document[position];
            if !sentence.is_empty() {
                chunk.push(sentence);
                length += sentence.len();
            }
            let last = position + 1 == document.len();
            if (last || length >= room) && !chunk.is_empty() {
                let (mut first, continuation, unused) = split_chunk(&chunk, rng);
                let random_next = documents.len() > 1 && rng.gen_bool(0.5);
                let mut second = if random_next {
                    // The sentences after A stay in this document's walk.
                    position -= unused;
                    random_segment(documents, index, room.saturating_sub(first.len()), rng)
                } else {
                    continuation
                };
                truncate_pair(&mut first, &mut second, room, rng);
                if !first.is_empty() && !second.is_empty() {
                    let mut instance = Instance::new(&first, Some(&second), special);
                    instance.next_sentence = Some(if random_next { IS_RANDOM } else { IS_NEXT });
                    instances.push(instance);
                }
                chunk.clear();
                length = 0;
            }
            position += 1;
        }
    }
    instances
}

/// A and B from a chunk, and how many of the chunk's sentences went into B.
fn split_chunk(chunk: &[&Segment], rng: &mut StdRng) -> (Segment, Segment, usize) {
    let mut first = Segment::default();
    let mut second = Segment::default();
    if chunk.len() == 1 {
        let sentence = chunk[0];
        if sentence.len() < 2 {
            return (sentence.clone(), Segment::default(), 0);
        }
        let cut = rng.gen_range(1..sentence.len());
        return (
            sentence.slice(0..cut),
            sentence.slice(cut..sentence.len()),
            0,
        );
    }
    let first_end = rng.gen_range(1..chunk.len());
    for sentence in &chunk[..first_end] {
        first.extend(sentence);
    }
    for sentence in &chunk[first_end..] {
        second.extend(sentence);
    }
    (first, second, chunk.len() - first_end)
}

/// Sentences from a random start in a random document other than `exclude`, up to `room`
/// tokens (at least one sentence).
fn random_segment(
    documents: &[TokenizedDocument],
    exclude: usize,
    room: usize,
    rng: &mut StdRng,
) -> Segment {
    let mut other = rng.gen_range(0..documents.len() - 1);
    if other >= exclude {
        other += 1;
    }
    let document = &documents[other];
    let mut segment = Segment::default();
    if document.is_empty() {
        return segment;
    }
    let start = rng.gen_range(0..document.len());
    for sentence in &document[start..] {
        segment.extend(sentence);
        if segment.len() >= room {
            break;
        }
    }
    segment
}

fn truncate_pair(first: &mut Segment, second: &mut Segment, room: usize, rng: &mut StdRng) {
    while first.len() + second.len() > room {
        let longer = if first.len() > second.len() {
            &mut *first
        } else {
            &mut *second
        };
        if rng.gen_bool(0.5) {
            longer.ids.remove(0);
            longer.continues_word.remove(0);
        } else {
            longer.ids.pop();
            longer.continues_word.pop();
        }
    }
}

/// How tokens are chosen and replaced.
#[derive(Debug, Clone, Copy)]
pub struct MaskingSpec {
    /// Share of non-special tokens (or words) selected for prediction.
    pub probability: f64,
    /// Select whole words: a word's pieces are all selected or none is.
    pub whole_word: bool,
    pub mask_id: u32,
    /// Random replacements are drawn uniformly from `0..vocab_size`, as HF does.
    pub vocab_size: u32,
}

/// Masks one instance: returns the model input (ids with replacements; `labels` holding the
/// original id on selected tokens and [`IGNORE_INDEX`] elsewhere). At least one token is
/// selected in any instance that has a non-special token, so no batch is without a target.
pub fn mask_tokens(instance: &Instance, spec: &MaskingSpec, rng: &mut StdRng) -> Encoded {
    let length = instance.len();
    let mut selected = vec![false; length];
    let mut position = 0;
    while position < length {
        // A unit is one token, or with `whole_word` a word's run of pieces.
        let mut end = position + 1;
        if spec.whole_word {
            while end < length && instance.continues_word[end] && !instance.special[end] {
                end += 1;
            }
        }
        if !instance.special[position] && rng.gen_bool(spec.probability) {
            selected[position..end].iter_mut().for_each(|s| *s = true);
        }
        position = end;
    }
    if !selected.iter().any(|&s| s) {
        let candidates: Vec<usize> = (0..length).filter(|&i| !instance.special[i]).collect();
        if !candidates.is_empty() {
            selected[candidates[rng.gen_range(0..candidates.len())]] = true;
        }
    }
    let mut input_ids = instance.ids.clone();
    let mut labels = vec![IGNORE_INDEX; length];
    for position in 0..length {
        if !selected[position] {
            continue;
        }
        labels[position] = instance.ids[position] as i64;
        let draw: f64 = rng.gen();
        if draw < 0.8 {
            input_ids[position] = spec.mask_id;
        } else if draw < 0.9 {
            input_ids[position] = rng.gen_range(0..spec.vocab_size);
        }
    }
    Encoded {
        input_ids,
        type_ids: instance.type_ids.clone(),
        labels,
        word_ids: Vec::new(),
        words_kept: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    const SPECIAL: SpecialIds = SpecialIds {
        cls: 2,
        sep: 3,
        mask: 4,
        unk: Some(1),
        pad: Some(0),
    };

    /// A sentence of `length` tokens with ids from `first`; every third token continues a word.
    fn sentence(first: u32, length: usize) -> Segment {
        Segment {
            ids: (first..first + length as u32).collect(),
            continues_word: (0..length).map(|i| i % 3 == 2).collect(),
        }
    }

    fn documents(count: usize, sentences: usize, length: usize) -> Vec<TokenizedDocument> {
        (0..count)
            .map(|d| {
                (0..sentences)
                    .map(|s| sentence(100 + (d * 1000 + s * 20) as u32, length))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn blocks_cover_every_token_once_within_documents() {
        let docs = documents(3, 7, 9);
        let instances = pack_blocks(&docs, 16, SPECIAL);
        let mut seen = Vec::new();
        for instance in &instances {
            assert!(instance.len() <= 16);
            assert_eq!(instance.ids[0], SPECIAL.cls);
            assert_eq!(*instance.ids.last().unwrap(), SPECIAL.sep);
            // No block starts inside a word.
            assert!(!instance.continues_word[1]);
            seen.extend_from_slice(&instance.ids[1..instance.len() - 1]);
        }
        let all: Vec<u32> = docs.iter().flatten().flat_map(|s| s.ids.clone()).collect();
        assert_eq!(seen, all);
    }

    #[test]
    fn nsp_pairs_are_balanced_framed_and_fit() {
        let docs = documents(20, 30, 12);
        let mut rng = StdRng::seed_from_u64(7);
        let mut random = 0;
        let mut total = 0;
        for _ in 0..20 {
            for instance in nsp_pairs(&docs, 64, SPECIAL, &mut rng) {
                assert!(instance.len() <= 64);
                assert_eq!(instance.ids[0], SPECIAL.cls);
                assert_eq!(
                    instance.ids.iter().filter(|&&i| i == SPECIAL.sep).count(),
                    2
                );
                let first_sep = instance.ids.iter().position(|&i| i == SPECIAL.sep).unwrap();
                assert!(instance.type_ids[..=first_sep].iter().all(|&t| t == 0));
                assert!(instance.type_ids[first_sep + 1..].iter().all(|&t| t == 1));
                let label = instance.next_sentence.unwrap();
                if label == IS_NEXT {
                    // A continuation: B's first token follows A's last within one document.
                    let a_last = instance.ids[first_sep - 1];
                    let b_first = instance.ids[first_sep + 1];
                    assert_eq!(a_last / 1000, b_first / 1000, "B from another document");
                }
                random += (label == IS_RANDOM) as usize;
                total += 1;
            }
        }
        let share = random as f64 / total as f64;
        assert!((share - 0.5).abs() < 0.03, "{random} of {total} random");
    }

    #[test]
    fn masking_proportions_hold_and_specials_are_never_masked() {
        let docs = documents(1, 1, 126);
        let instance = &pack_blocks(&docs, 128, SPECIAL)[0];
        let spec = MaskingSpec {
            probability: 0.15,
            whole_word: false,
            mask_id: SPECIAL.mask,
            vocab_size: 30_000,
        };
        let mut rng = StdRng::seed_from_u64(1);
        let (mut selected, mut masked, mut random, mut kept) = (0usize, 0usize, 0usize, 0usize);
        let draws = 4_000;
        for _ in 0..draws {
            let example = mask_tokens(instance, &spec, &mut rng);
            assert_eq!(example.labels[0], IGNORE_INDEX);
            assert_eq!(*example.labels.last().unwrap(), IGNORE_INDEX);
            assert_eq!(example.input_ids[0], SPECIAL.cls);
            for position in 0..instance.len() {
                if example.labels[position] == IGNORE_INDEX {
                    assert_eq!(example.input_ids[position], instance.ids[position]);
                    continue;
                }
                assert_eq!(example.labels[position], instance.ids[position] as i64);
                selected += 1;
                match example.input_ids[position] {
                    id if id == SPECIAL.mask => masked += 1,
                    id if id == instance.ids[position] => kept += 1,
                    _ => random += 1,
                }
            }
        }
        let share = selected as f64 / (draws * 126) as f64;
        assert!((share - 0.15).abs() < 0.005, "selected {share}");
        let of = |n: usize| n as f64 / selected as f64;
        assert!((of(masked) - 0.8).abs() < 0.01, "mask {}", of(masked));
        assert!((of(random) - 0.1).abs() < 0.01, "random {}", of(random));
        assert!((of(kept) - 0.1).abs() < 0.01, "kept {}", of(kept));
    }

    #[test]
    fn special_tokens_in_the_text_are_never_targets() {
        // [UNK] (a character the vocabulary lacks), [PAD] and [MASK] written in the text: as
        // in transformers' collator, only the other tokens are selected, at the same rate.
        let mut text = sentence(100, 60);
        for position in (0..60).step_by(4) {
            text.ids[position] = [1, 0, 4][position % 3];
        }
        let instance = Instance::new(&text, None, SPECIAL);
        let eligible = instance.ids.iter().filter(|&&id| id >= 100).count();
        for whole_word in [false, true] {
            let spec = MaskingSpec {
                probability: 0.15,
                whole_word,
                mask_id: SPECIAL.mask,
                vocab_size: 1000,
            };
            let mut rng = StdRng::seed_from_u64(5);
            let mut selected = 0usize;
            let draws = 4_000;
            for _ in 0..draws {
                let example = mask_tokens(&instance, &spec, &mut rng);
                for (position, &label) in example.labels.iter().enumerate() {
                    if label != IGNORE_INDEX {
                        assert!(instance.ids[position] >= 100, "special token selected");
                        selected += 1;
                    }
                }
            }
            if !whole_word {
                let share = selected as f64 / (draws * eligible) as f64;
                assert!((share - 0.15).abs() < 0.005, "selected {share}");
            }
        }
    }

    #[test]
    fn whole_word_masking_takes_every_piece_of_a_word() {
        let docs = documents(1, 1, 60);
        let instance = &pack_blocks(&docs, 64, SPECIAL)[0];
        let spec = MaskingSpec {
            probability: 0.3,
            whole_word: true,
            mask_id: SPECIAL.mask,
            vocab_size: 1000,
        };
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..200 {
            let example = mask_tokens(instance, &spec, &mut rng);
            for position in 1..instance.len() - 1 {
                if instance.continues_word[position] {
                    let this = example.labels[position] != IGNORE_INDEX;
                    let before = example.labels[position - 1] != IGNORE_INDEX;
                    assert_eq!(this, before, "a word split at {position}");
                }
            }
        }
    }

    #[test]
    fn a_tiny_instance_still_gets_a_target() {
        let instance = Instance::new(&sentence(50, 1), None, SPECIAL);
        let spec = MaskingSpec {
            probability: 0.15,
            whole_word: false,
            mask_id: SPECIAL.mask,
            vocab_size: 100,
        };
        let mut rng = StdRng::seed_from_u64(0);
        for _ in 0..50 {
            let example = mask_tokens(&instance, &spec, &mut rng);
            assert_eq!(example.labels, vec![IGNORE_INDEX, 50, IGNORE_INDEX]);
        }
    }
}
