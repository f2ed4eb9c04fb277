//! alpaca-train: the training loop and what it needs (optimiser, schedule, task pipelines).
//!
//! A loop a researcher can read in one sitting: `ner::train` loads data and model, evaluates
//! the fresh model, trains with AdamW + warm-up/decay, evaluates on dev after each epoch, keeps
//! the best checkpoint, stops early, and writes the before/after report.

pub mod bench;
pub mod causal;
pub mod classify;
pub mod classify_predict;
pub mod classify_report;
pub mod clm;
pub mod config;
pub mod epoch;
pub mod evaluate;
pub mod generate;
pub mod inputs;
pub mod instruct;
pub mod mlm;
pub mod mlm_predict;
pub mod mlm_report;
pub mod ner;
pub mod ner_predict;
pub mod optimizer;
pub mod precision;
pub mod report;
pub mod resume;
pub mod schedule;
pub mod self_instruct;
pub mod threads;

pub use config::{ClassifyConfig, ClmConfig, InstructConfig, MlmConfig, NerConfig};
