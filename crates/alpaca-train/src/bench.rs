//! `alpaca bench step`: time the reference training step (issue: train faster than PyTorch).
//!
//! The step: a BERT encoder shaped like all-MiniLM-L6-v2 (hidden 384, 6 layers, 12 heads,
//! ffn 1536, vocab 30522) with a 9-label token-classification head, batch 16 × 128 tokens,
//! dropout 0, AdamW, fp32. Random weights and random token ids (seeded): speed does not depend
//! on the values. bench/torch_step.py is the PyTorch twin.

use std::time::Instant;

use alpaca_models::{BertConfig, BertForTokenClassification, Mode};
use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::optimizer::AdamW;

#[derive(Debug, Clone)]
pub struct StepBenchOptions {
    pub steps: usize,
    pub warmup: usize,
    pub batch_size: usize,
    pub seq_len: usize,
    pub threads: Option<usize>,
    pub precision: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepBenchResult {
    pub threads: usize,
    pub precision: String,
    pub steps: usize,
    pub median_s: f64,
    /// Medians of the three phases of a step.
    pub forward_s: f64,
    pub backward_s: f64,
    pub optimizer_s: f64,
    pub min_s: f64,
    pub max_s: f64,
    pub gflop_per_step: f64,
    pub gflop_per_s: f64,
    pub peak_rss_mb: f64,
    pub final_loss: f32,
}

pub fn reference_config() -> BertConfig {
    serde_json::from_value(serde_json::json!({
        "vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6,
        "num_attention_heads": 12, "intermediate_size": 1536, "max_position_embeddings": 512,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0
    }))
    .expect("a valid config")
}

/// Floating-point operations of one training step (forward + backward ≈ 3 × forward), counting
/// the matmuls only: linear layers and the two attention products.
pub fn step_flops(config: &BertConfig, labels: usize, batch: usize, length: usize) -> f64 {
    let tokens = (batch * length) as f64;
    let hidden = config.hidden_size as f64;
    let linear_weights = config.num_hidden_layers as f64
        * (4.0 * hidden * hidden + 2.0 * hidden * config.intermediate_size as f64)
        + hidden * labels as f64;
    let attention = config.num_hidden_layers as f64
        * 2.0
        * 2.0
        * batch as f64
        * (length * length) as f64
        * hidden;
    3.0 * (2.0 * tokens * linear_weights + attention)
}

/// Peak resident memory of this process (VmHWM), in MB.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// The median of `values` (mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    }
}

pub fn run_step_bench(options: &StepBenchOptions) -> Result<StepBenchResult> {
    let threads = crate::threads::set_threads(options.threads);
    let precision = crate::precision::apply(&options.precision)?;
    if options.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let labels: Vec<String> = (0..9).map(|i| format!("L{i}")).collect();
    let config = reference_config();
    let model = BertForTokenClassification::new_random(config.clone(), labels.clone(), 0)?;
    let mut optimizer = AdamW::new(&model.parameters, 0.01);
    let (batch, length) = (options.batch_size, options.seq_len);
    let mut rng = StdRng::seed_from_u64(0);
    let ids: Vec<u32> = (0..batch * length)
        .map(|_| rng.gen_range(1000..config.vocab_size as u32))
        .collect();
    let targets: Vec<i64> = (0..batch * length)
        .map(|_| rng.gen_range(0..labels.len() as i64))
        .collect();
    let device = Device::Cpu;
    let ids = Tensor::from_vec(ids, (batch, length), &device)?;
    let types = Tensor::zeros((batch, length), candle_core::DType::U32, &device)?;
    let mask = Tensor::ones((batch, length), candle_core::DType::F32, &device)?;
    let targets = Tensor::from_vec(targets, batch * length, &device)?;
    let mut times = Vec::new();
    let mut phases: [Vec<f64>; 3] = Default::default();
    let mut final_loss = 0.0;
    for step in 0..options.warmup + options.steps {
        let started = Instant::now();
        let logits = model.forward(&ids, &types, &mask, Mode::train(step as u64))?;
        let loss = alpaca_kernels::cross_entropy(
            &logits.reshape((batch * length, labels.len()))?,
            &targets,
            -100,
        )?;
        let forward_done = started.elapsed().as_secs_f64();
        let gradients = optimizer.gradients(&loss.backward()?)?;
        let backward_done = started.elapsed().as_secs_f64();
        optimizer.step(&gradients, 5e-5, 1.0)?;
        final_loss = loss.to_scalar::<f32>()?;
        let seconds = started.elapsed().as_secs_f64();
        if step >= options.warmup {
            times.push(seconds);
            phases[0].push(forward_done);
            phases[1].push(backward_done - forward_done);
            phases[2].push(seconds - backward_done);
        }
        eprintln!(
            "step {step}: {seconds:.3}s loss {final_loss:.4}{}",
            if step < options.warmup {
                " (warm-up)"
            } else {
                ""
            }
        );
    }
    times.sort_by(f64::total_cmp);
    let median_of = median;
    let median = median_of(&times);
    let flops = step_flops(&config, labels.len(), batch, length);
    Ok(StepBenchResult {
        threads,
        precision: precision.to_string(),
        steps: options.steps,
        median_s: median,
        forward_s: median_of(&phases[0]),
        backward_s: median_of(&phases[1]),
        optimizer_s: median_of(&phases[2]),
        min_s: times[0],
        max_s: times[times.len() - 1],
        gflop_per_step: flops / 1e9,
        gflop_per_s: flops / 1e9 / median,
        peak_rss_mb: peak_rss_mb(),
        final_loss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_step_is_about_138_gflop() {
        let gflop = step_flops(&reference_config(), 9, 16, 128) / 1e9;
        assert!((gflop - 137.8).abs() < 1.0, "{gflop}");
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PredictBenchResult {
    pub threads: usize,
    pub batch_size: usize,
    pub sentences: usize,
    pub seconds: f64,
    pub sentences_per_s: f64,
    pub words_per_s: f64,
}

/// NER prediction throughput: words of CoNLL sentences → tokenised, padded batch → forward →
/// arg-max tag per word, in file order, `batch_size` sentences at a time. Model loading is not
/// timed; one batch is run first as a warm-up. bench/torch_predict.py is the PyTorch twin.
pub fn run_predict_bench(
    model: &str,
    conll: &std::path::Path,
    batch_size: usize,
    sentences: usize,
    threads: Option<usize>,
) -> Result<PredictBenchResult> {
    use alpaca_data::align::{encode_words, word_starts};
    use alpaca_data::batch::collate;
    let threads = crate::threads::set_threads(threads);
    if batch_size == 0 || sentences == 0 {
        bail!("--batch-size and --sentences must be at least 1");
    }
    let dir = alpaca_models::ModelDir::open(model)?;
    let (mut model, _) = BertForTokenClassification::load(&dir, None, 0)?;
    model.pack_for_inference()?;
    let tokenizer = crate::ner::load_tokenizer(&dir, model.bert.config.vocab_size)?;
    let pad = crate::ner::pad_id(&tokenizer);
    let mut data = alpaca_data::conll::read_conll(conll)?;
    data.truncate(sentences);
    let run = |chunk: &[alpaca_data::conll::Sentence]| -> Result<usize> {
        let encoded = chunk
            .iter()
            .map(|s| encode_words(&tokenizer, &s.words, None, 128))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let references: Vec<_> = encoded.iter().collect();
        let indices: Vec<usize> = (0..chunk.len()).collect();
        let batch = collate(&references, &indices, pad);
        let (ids, types, mask, _) = crate::ner::batch_tensors(&batch)?;
        let logits = model.forward(&ids, &types, &mask, Mode::EVAL)?;
        let best = logits.argmax(2)?.to_vec2::<u32>()?;
        let mut tagged = 0;
        for (row, example) in encoded.iter().enumerate() {
            for start in word_starts(example).into_iter().flatten() {
                let _tag = &model.labels[best[row][start] as usize];
                tagged += 1;
            }
        }
        Ok(tagged)
    };
    run(&data[..batch_size.min(data.len())])?;
    let started = Instant::now();
    let mut words = 0;
    for chunk in data.chunks(batch_size) {
        words += run(chunk)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(PredictBenchResult {
        threads,
        batch_size,
        sentences: data.len(),
        seconds,
        sentences_per_s: data.len() as f64 / seconds,
        words_per_s: words as f64 / seconds,
    })
}
