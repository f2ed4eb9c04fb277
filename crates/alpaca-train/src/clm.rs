//! Causal-LM (continued) pre-training of a LLaMA-family model on raw text: every document's
//! tokens, closed by EOS, cut into blocks of `max_len`, every token a target. The step,
//! held-out evaluation, checkpoints and report are those of instruction tuning
//! ([`crate::causal`]); full training or LoRA as there.

use alpaca_data::corpus::{read_corpus, Document};
use alpaca_models::lora::attach_lora;
use anyhow::{anyhow, bail, Context, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tokenizers::Tokenizer;

use crate::causal::{train_causal, CausalExample, CausalRun, CausalSetup, LoopSettings, Trainable};
use crate::config::ClmConfig;

/// Each document's tokens (BOS first when the model wants it, EOS last) cut into blocks of at
/// most `max_len`; blocks of a single token teach nothing and are dropped.
pub fn blocks(
    documents: &[Document],
    tokenizer: &Tokenizer,
    bos: Option<u32>,
    eos: u32,
    max_len: usize,
) -> Result<Vec<CausalExample>> {
    let texts: Vec<&str> = documents.iter().map(|d| d.text.as_str()).collect();
    let encodings = tokenizer
        .encode_batch(texts, false)
        .map_err(|e| anyhow!("tokenizing the corpus: {e}"))?;
    let mut examples = Vec::new();
    for encoding in encodings {
        let mut ids: Vec<u32> = bos.into_iter().collect();
        ids.extend_from_slice(encoding.get_ids());
        ids.push(eos);
        for block in ids.chunks(max_len.max(2)) {
            if block.len() > 1 {
                examples.push(CausalExample {
                    input_ids: block.to_vec(),
                    labels: block.iter().map(|&id| id as i64).collect(),
                });
            }
        }
    }
    Ok(examples)
}

/// Trains and writes the run directory; returns the report (also printed by the CLI).
pub fn train(config: &ClmConfig) -> Result<CausalRun> {
    let threads = crate::threads::set_threads(config.threads);
    if config.max_len < 2 {
        bail!("max_len must be at least 2");
    }
    if !(0.0..1.0).contains(&config.validation_split) {
        bail!(
            "validation_split must be in [0, 1), not {}",
            config.validation_split
        );
    }
    let settings = LoopSettings::of(config)?;
    // Checked before the data and the model load.
    crate::precision::parse(&settings.precision)?;
    let lora = if config.full {
        None
    } else {
        Some(settings.lora()?)
    };
    crate::resume::check_run_dir(&config.output, config.resume, config.overwrite)?;
    if config.corpus.is_empty() {
        bail!("no corpus: give one or more files or directories of text");
    }
    let mut corpus = read_corpus(&config.corpus, &config.text_field).context("corpus")?;
    if let Some(limit) = config.max_documents {
        corpus.documents.truncate(limit);
    }
    let mut documents = corpus.documents;
    let held_out_documents = if !config.dev.is_empty() {
        read_corpus(&config.dev, &config.text_field)
            .context("dev corpus")?
            .documents
    } else if config.validation_split > 0.0 {
        let held = ((documents.len() as f64 * config.validation_split).ceil() as usize).max(1);
        if held >= documents.len() {
            bail!(
                "the corpus has {} document(s): too few to hold out {:.0}%; pass --dev FILES \
                 or --validation-split 0",
                documents.len(),
                config.validation_split * 100.0
            );
        }
        documents.shuffle(&mut StdRng::seed_from_u64(config.seed));
        documents.split_off(documents.len() - held)
    } else {
        Vec::new()
    };

    let setup = CausalSetup::open(&config.model, config.seed)?;
    let train_blocks = blocks(
        &documents,
        &setup.tokenizer,
        setup.bos,
        setup.eos,
        config.max_len,
    )?;
    let held_out_blocks = blocks(
        &held_out_documents,
        &setup.tokenizer,
        setup.bos,
        setup.eos,
        config.max_len,
    )?;
    if train_blocks.is_empty() {
        bail!("the corpus gives no training block (no tokens after tokenization)");
    }
    eprintln!(
        "corpus: {} training documents in {} blocks, {} held-out documents in {} blocks",
        documents.len(),
        train_blocks.len(),
        held_out_documents.len(),
        held_out_blocks.len()
    );
    let mut model = setup.load_model()?;
    let trainable = match lora {
        None => Trainable::Full,
        Some(lora) => {
            let adapters = attach_lora(&mut model, &lora, config.seed)?;
            Trainable::Lora(lora, adapters)
        }
    };
    let mut run = train_causal(
        &settings,
        config,
        threads,
        &setup,
        &mut model,
        &trainable,
        &train_blocks,
        &held_out_blocks,
    )?;
    // The best epoch's held-out loss, as the checkpoint in best/ scores it.
    run.after = run
        .best_epoch
        .and_then(|best| run.epochs.iter().find(|e| e.epoch == best))
        .and_then(|e| e.held_out.clone());
    alpaca_track::write_json_atomic(&config.output.join("report.json"), &run)?;
    alpaca_track::write_atomic(
        &config.output.join("report.md"),
        run.to_markdown("Causal-LM training report").as_bytes(),
    )?;
    Ok(run)
}
