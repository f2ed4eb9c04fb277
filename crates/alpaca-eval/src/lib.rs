//! alpaca-eval: evaluation metrics whose numbers and printed tables match the Python tools the
//! HF scripts used (seqeval for entities, scikit-learn for labels), so results stay comparable.

pub mod classification;
pub mod rouge;
pub mod scheme;
mod scores;
pub mod seqeval;
mod table;

pub use classification::{classification_report, ClassReport};
pub use scheme::{
    check_sentence, detect_scheme, detect_scheme_in_sentences, entities, split_tag, Entity, Prefix,
    Scheme,
};
pub use seqeval::{entity_report, EntityReport, Scores};
