//! One training epoch, shared by every task: micro-batches → loss → backward → gradient
//! accumulation → clipping → AdamW step on the schedule → logging. The task supplies only
//! "the loss of this batch".

use std::time::Instant;

use alpaca_models::Mode;
use alpaca_track::{progress_bar, report_without_terminal, MetricsLog, Throughput};
use anyhow::Result;
use candle_core::Tensor;
use serde_json::json;

use crate::optimizer::{clip_scale, global_norm, AdamW};
use crate::schedule::Schedule;
use alpaca_kernels::Gradient;

/// The knobs of the loop that come from the run config.
#[derive(Debug, Clone, Copy)]
pub struct EpochSettings {
    pub epoch: usize,
    pub gradient_accumulation: usize,
    /// Global-norm clipping; 0 turns it off.
    pub max_grad_norm: f64,
    /// Optimiser steps between `train` lines in metrics.jsonl.
    pub log_every: usize,
    /// Run seed; each micro-batch's dropout seed is derived from it.
    pub seed: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct EpochOutcome {
    /// Mean micro-batch loss over the epoch.
    pub train_loss: f64,
    pub seconds: f64,
    pub tokens_per_second: f64,
}

/// Trains one epoch over `order` (batches of example indices). `loss_of(indices, mode)`
/// returns the batch's mean loss and its number of real (non-padding) tokens.
/// `micro_batch` counts micro-batches across epochs so dropout masks never repeat.
pub fn train_epoch(
    optimizer: &mut AdamW,
    schedule: &Schedule,
    settings: EpochSettings,
    order: &[Vec<usize>],
    micro_batch: &mut u64,
    metrics: &mut MetricsLog,
    mut loss_of: impl FnMut(&[usize], Mode) -> Result<(Tensor, u64)>,
) -> Result<EpochOutcome> {
    let bar = progress_bar(order.len() as u64, &format!("epoch {}", settings.epoch));
    let mut throughput = Throughput::new();
    let started = Instant::now();
    let mut accumulated: Vec<Option<Gradient>> = vec![None; optimizer.parameters().count()];
    let mut pending = 0usize;
    let (mut epoch_loss, mut epoch_batches) = (0.0f64, 0usize);
    let mut window_loss = (0.0f64, 0usize);
    for (batch_index, indices) in order.iter().enumerate() {
        *micro_batch += 1;
        let (loss, tokens) = loss_of(indices, Mode::train(settings.seed ^ *micro_batch))?;
        let loss_value = loss.to_scalar::<f32>()? as f64;
        // The mean over a step's micro-batches, as HF's Trainer scales it.
        let scaled = if settings.gradient_accumulation > 1 {
            loss.affine(1.0 / settings.gradient_accumulation as f64, 0.0)?
        } else {
            loss
        };
        let gradients = optimizer.gradients(&scaled.backward()?)?;
        for (slot, gradient) in accumulated.iter_mut().zip(gradients) {
            if let Some(gradient) = gradient {
                *slot = Some(match slot.take() {
                    Some(sum) => sum.add(&gradient)?,
                    None => gradient,
                });
            }
        }
        pending += 1;
        epoch_loss += loss_value;
        epoch_batches += 1;
        window_loss.0 += loss_value;
        window_loss.1 += 1;
        throughput.add(tokens);

        let last = batch_index + 1 == order.len();
        if pending == settings.gradient_accumulation || last {
            let step = optimizer.steps() as usize;
            let learning_rate = schedule.learning_rate(step);
            let norm = global_norm(&accumulated)?;
            optimizer.step(
                &accumulated,
                learning_rate,
                clip_scale(norm, settings.max_grad_norm),
            )?;
            accumulated.iter_mut().for_each(|g| *g = None);
            pending = 0;
            let step = step + 1;
            if step.is_multiple_of(settings.log_every) || last {
                let mean = window_loss.0 / window_loss.1.max(1) as f64;
                let tokens_per_second = throughput.tokens_per_second();
                let message =
                    format!("loss {mean:.4} lr {learning_rate:.2e} {tokens_per_second:.0} tok/s");
                report_without_terminal(&format!(
                    "epoch {} step {step} (batch {}/{}): {message}",
                    settings.epoch,
                    batch_index + 1,
                    order.len()
                ));
                bar.set_message(message);
                metrics.log(
                    "train",
                    json!({"epoch": settings.epoch, "step": step, "loss": mean, "lr": learning_rate,
                           "grad_norm": norm, "tokens_per_second": tokens_per_second}),
                )?;
                window_loss = (0.0, 0);
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(EpochOutcome {
        train_loss: epoch_loss / epoch_batches.max(1) as f64,
        seconds: started.elapsed().as_secs_f64(),
        tokens_per_second: throughput.tokens_per_second(),
    })
}

/// What an epoch's dev score means for the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Best so far: save the checkpoint.
    Improved,
    /// Not better, keep going.
    NoGain,
    /// Not better for `patience` epochs in a row: stop.
    Stop,
}

/// Keeps the best dev score and counts epochs without a better one (early stopping).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BestTracker {
    best: Option<f64>,
    pub best_epoch: Option<usize>,
    pub epochs_without_gain: usize,
    patience: Option<usize>,
}

impl BestTracker {
    pub fn new(patience: Option<usize>) -> Self {
        Self {
            best: None,
            best_epoch: None,
            epochs_without_gain: 0,
            patience,
        }
    }

    /// Records `score` for `epoch` (higher is better). Without a dev set pass the epoch
    /// number, so the last epoch is the one kept.
    pub fn observe(&mut self, epoch: usize, score: f64) -> Verdict {
        if self.best.is_none_or(|best| score > best) {
            self.best = Some(score);
            self.best_epoch = Some(epoch);
            self.epochs_without_gain = 0;
            return Verdict::Improved;
        }
        self.epochs_without_gain += 1;
        if self
            .patience
            .is_some_and(|patience| self.epochs_without_gain >= patience)
        {
            Verdict::Stop
        } else {
            Verdict::NoGain
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_after_patience_epochs_without_gain() {
        let mut tracker = BestTracker::new(Some(2));
        assert_eq!(tracker.observe(1, 0.5), Verdict::Improved);
        assert_eq!(tracker.observe(2, 0.7), Verdict::Improved);
        assert_eq!(tracker.observe(3, 0.7), Verdict::NoGain);
        assert_eq!(tracker.observe(4, 0.6), Verdict::Stop);
        assert_eq!(tracker.best_epoch, Some(2));
        let mut forever = BestTracker::new(None);
        forever.observe(1, 1.0);
        assert_eq!(forever.observe(2, 0.0), Verdict::NoGain);
    }
}
