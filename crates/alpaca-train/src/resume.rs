//! The resumable checkpoint `runs/<name>/last/`: weights, AdamW moments and the loop's state
//! after the last finished epoch, written atomically. Everything random in training is derived
//! from the seed, the epoch and the micro-batch counter, so a resumed run continues exactly as
//! the uninterrupted one would have.

use std::collections::HashMap;
use std::path::Path;

use alpaca_models::checkpoint::{save_safetensors, write_dir_atomic};
use alpaca_models::Parameters;
use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::epoch::{BestTracker, Verdict};
use crate::optimizer::AdamW;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState<Record> {
    /// The last finished epoch.
    pub epoch: usize,
    pub micro_batch: u64,
    pub optimizer_steps: u64,
    pub tracker: BestTracker,
    pub records: Vec<Record>,
}

/// Replaces `run/last` with the current weights, optimiser moments and loop state.
pub fn save_last<Record: Serialize>(
    run: &Path,
    parameters: &Parameters,
    optimizer: &AdamW,
    state: &TrainerState<Record>,
) -> Result<()> {
    write_dir_atomic(&run.join("last"), |dir| {
        save_safetensors(&dir.join("model.safetensors"), &parameters.tensors())?;
        save_safetensors(
            &dir.join("optimizer.safetensors"),
            &optimizer.state_tensors()?,
        )?;
        let text = serde_json::to_string_pretty(state).expect("the state serialises");
        std::fs::write(dir.join("trainer_state.json"), text).map_err(|source| {
            alpaca_models::ModelError::Io {
                path: dir.join("trainer_state.json"),
                source,
            }
        })
    })?;
    Ok(())
}

/// How an epoch ended, for [`TrainerState::end_epoch`].
pub struct EpochEnd<'a, Record> {
    pub epoch: usize,
    /// The epoch's line in metrics.jsonl and trainer_state.json.
    pub record: Record,
    /// Higher is better: a dev metric, minus a held-out loss, or the epoch number when there
    /// is nothing to score (so the last epoch is the one kept).
    pub score: f64,
    /// Said when early stopping ends the run, e.g. "no better dev accuracy".
    pub no_gain: &'a str,
    /// Fields the metrics "checkpoint" line carries besides the epoch and the path: a JSON
    /// object, or null for none.
    pub checkpoint: serde_json::Value,
}

impl<Record: Serialize> TrainerState<Record> {
    /// Ends an epoch the same way for every trainer: logs and keeps its record, writes
    /// `run/best` with `save_best` when the score is the best so far, replaces `run/last`
    /// (so a resume starts after this epoch) and returns whether early stopping says stop.
    pub fn end_epoch(
        &mut self,
        end: EpochEnd<'_, Record>,
        run: &Path,
        parameters: &Parameters,
        optimizer: &AdamW,
        metrics: &mut alpaca_track::MetricsLog,
        save_best: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<bool> {
        let EpochEnd {
            epoch,
            record,
            score,
            no_gain,
            checkpoint,
        } = end;
        metrics.log("epoch", &record)?;
        self.records.push(record);
        let verdict = self.tracker.observe(epoch, score);
        if verdict == Verdict::Improved {
            let best = run.join("best");
            save_best(&best)?;
            let mut line = checkpoint;
            line["epoch"] = epoch.into();
            line["path"] = serde_json::json!(best);
            metrics.log("checkpoint", line)?;
        }
        self.epoch = epoch;
        self.optimizer_steps = optimizer.steps();
        save_last(run, parameters, optimizer, self)?;
        if verdict == Verdict::Stop {
            eprintln!(
                "{no_gain} for {} epochs: stopping early",
                self.tracker.epochs_without_gain
            );
        }
        Ok(verdict == Verdict::Stop)
    }
}

/// Loads `run/last` into `parameters` and `optimizer` and returns the loop state, or `None`
/// when there is no such checkpoint.
pub fn load_last<Record: DeserializeOwned>(
    run: &Path,
    parameters: &Parameters,
    optimizer: &mut AdamW,
) -> Result<Option<TrainerState<Record>>> {
    let dir = run.join("last");
    let state_path = dir.join("trainer_state.json");
    if !state_path.is_file() {
        return Ok(None);
    }
    let state: TrainerState<Record> = serde_json::from_str(
        &std::fs::read_to_string(&state_path)
            .with_context(|| format!("{}", state_path.display()))?,
    )
    .with_context(|| format!("{}: not a trainer state", state_path.display()))?;
    let weights_path = dir.join("model.safetensors");
    let weights = candle_core::safetensors::load(&weights_path, &Device::Cpu)
        .with_context(|| format!("{}", weights_path.display()))?;
    for (name, var) in parameters.iter() {
        let Some(tensor) = weights.get(name) else {
            bail!(
                "{}: lacks {name}; was this checkpoint written by a different model?",
                weights_path.display()
            );
        };
        if tensor.dims() != var.dims() {
            bail!(
                "{}: {name} has shape {:?}, the model {:?}",
                weights_path.display(),
                tensor.dims(),
                var.dims()
            );
        }
        var.set(tensor)?;
    }
    let optimizer_path = dir.join("optimizer.safetensors");
    let moments: HashMap<String, candle_core::Tensor> =
        candle_core::safetensors::load(&optimizer_path, &Device::Cpu)
            .with_context(|| format!("{}", optimizer_path.display()))?;
    optimizer
        .load_state(&moments, state.optimizer_steps)
        .map_err(|message| anyhow::anyhow!("{}: {message}", optimizer_path.display()))?;
    Ok(Some(state))
}

/// Where the epoch loop starts: from `run/last` when `resume` is set and it exists, else
/// fresh (epoch 0, nothing recorded).
pub fn starting_state<Record: DeserializeOwned>(
    resume: bool,
    run: &Path,
    parameters: &Parameters,
    optimizer: &mut AdamW,
    metrics: &mut alpaca_track::MetricsLog,
    patience: Option<usize>,
) -> Result<TrainerState<Record>> {
    if resume {
        if let Some(state) = load_last(run, parameters, optimizer)? {
            eprintln!("resuming {} after epoch {}", run.display(), state.epoch);
            metrics.log("resume", serde_json::json!({"after_epoch": state.epoch}))?;
            return Ok(state);
        }
        eprintln!(
            "no checkpoint at {}: starting from epoch 1",
            run.join("last").display()
        );
    }
    Ok(TrainerState {
        epoch: 0,
        micro_batch: 0,
        optimizer_steps: 0,
        tracker: BestTracker::new(patience),
        records: Vec::new(),
    })
}

/// Refuses an output directory that already holds a run (its metrics.jsonl) unless the user
/// asked to continue it (`resume`) or to replace it (`overwrite`). Called before anything is
/// loaded, so the answer comes at once; `open_run_dir` checks again.
pub fn check_run_dir(run: &Path, resume: bool, overwrite: bool) -> Result<()> {
    if run.join("metrics.jsonl").exists() && !resume && !overwrite {
        bail!(
            "{} already holds a run; pass --resume to continue it, --overwrite to replace it, \
             or choose another --output",
            run.display()
        );
    }
    Ok(())
}

/// Creates the run directory, writes the resolved config and opens the metrics log. A
/// directory that already holds a run (metrics.jsonl) is only reused with `resume` (continue
/// it) or `overwrite` (start again, after removing the old run's files), so that one run's
/// history never mixes into another's and nothing is replaced by accident. Pipelines call it
/// once data and model have loaded, so input errors leave no half-made run behind.
pub fn open_run_dir(
    run: &Path,
    config: &impl Serialize,
    resume: bool,
    overwrite: bool,
) -> Result<alpaca_track::MetricsLog> {
    check_run_dir(run, resume, overwrite)?;
    let metrics_path = run.join("metrics.jsonl");
    if metrics_path.exists() && !resume {
        for name in ["metrics.jsonl", "report.md", "report.json"] {
            let path = run.join(name);
            if path.exists() {
                std::fs::remove_file(&path).with_context(|| format!("{}", path.display()))?;
            }
        }
        for name in ["best", "last"] {
            let path = run.join(name);
            if path.exists() {
                std::fs::remove_dir_all(&path).with_context(|| format!("{}", path.display()))?;
            }
        }
    }
    std::fs::create_dir_all(run).with_context(|| format!("cannot create {}", run.display()))?;
    let text = toml::to_string_pretty(config).context("config serialises")?;
    alpaca_track::write_atomic(&run.join("config.toml"), text.as_bytes())?;
    Ok(alpaca_track::MetricsLog::open(&metrics_path)?)
}
