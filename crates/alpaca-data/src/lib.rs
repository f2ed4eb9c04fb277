//! alpaca-data: from a token-classification file on disk to padded batches of sub-token ids.
//!
//! The path is `conll` (read words and tags) → `labels` (tag set, scheme checks and
//! conversion) → `align` (words to sub-tokens, labels on the first sub-token of each word)
//! → `batch` (length-grouped order and dynamic padding). Every failure that user input can
//! cause is a [`DataError`] naming the file, the line and what was expected.

pub mod align;
pub mod assets;
pub mod batch;
pub mod conll;
pub mod corpus;
pub mod error;
pub mod instructions;
pub mod labels;
pub mod pretraining;
pub mod prompt;
pub mod text_classification;
pub mod tokenizer_training;

pub use align::{encode_sentences, encode_words, word_starts, Encoded, IGNORE_INDEX};
pub use assets::{assets_dir, require_assets};
pub use batch::{collate, length_grouped_order, sequential_order, sorted_by_length_order, Batch};
pub use conll::{parse_conll, parse_conll_bytes, read_conll, Sentence};
pub use error::{DataError, Result};
pub use labels::{check_scheme, convert_scheme, LabelSet};
pub use text_classification::{read_labelled_texts, Columns, LabelledText};
