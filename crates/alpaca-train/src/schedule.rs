//! Learning-rate schedules, as transformers' `get_*_schedule_with_warmup`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Constant,
    Linear,
    Cosine,
}

#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub peak: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl Schedule {
    /// The schedule of a run: one optimiser step per `gradient_accumulation` batches (the last
    /// partial group of an epoch also steps), warm-up as a fraction of all steps.
    pub fn for_run(
        kind: ScheduleKind,
        peak: f64,
        warmup_ratio: f64,
        batches_per_epoch: usize,
        gradient_accumulation: usize,
        epochs: usize,
    ) -> Self {
        Self::for_steps(
            kind,
            peak,
            warmup_ratio,
            batches_per_epoch,
            gradient_accumulation,
            epochs,
            None,
        )
        .0
    }

    /// As [`Schedule::for_run`], or, with `max_steps`, a schedule spanning exactly that many
    /// optimiser steps. Returns the schedule and the epochs needed to take its steps (the
    /// caller stops the last one early).
    pub fn for_steps(
        kind: ScheduleKind,
        peak: f64,
        warmup_ratio: f64,
        batches_per_epoch: usize,
        gradient_accumulation: usize,
        epochs: usize,
        max_steps: Option<usize>,
    ) -> (Self, usize) {
        let steps_per_epoch = batches_per_epoch.div_ceil(gradient_accumulation.max(1));
        let (epochs, total_steps) = match max_steps {
            Some(steps) => (steps.div_ceil(steps_per_epoch.max(1)), steps),
            None => (epochs, steps_per_epoch * epochs),
        };
        let schedule = Schedule {
            kind,
            peak,
            warmup_steps: (warmup_ratio * total_steps as f64).round() as usize,
            total_steps,
        };
        (schedule, epochs)
    }

    /// The learning rate for optimiser step `step` (0-based): linear warm-up from 0 to `peak`
    /// over `warmup_steps`, then constant, linear decay to 0, or half-cosine decay to 0 at
    /// `total_steps`.
    pub fn learning_rate(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.peak * step as f64 / self.warmup_steps.max(1) as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / decay_steps).min(1.0);
        match self.kind {
            ScheduleKind::Constant => self.peak,
            ScheduleKind::Linear => self.peak * (1.0 - progress),
            ScheduleKind::Cosine => {
                self.peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(kind: ScheduleKind) -> Schedule {
        Schedule {
            kind,
            peak: 1.0,
            warmup_steps: 10,
            total_steps: 110,
        }
    }

    #[test]
    fn linear_warms_up_then_decays_to_zero() {
        let s = schedule(ScheduleKind::Linear);
        assert_eq!(s.learning_rate(0), 0.0);
        assert!((s.learning_rate(5) - 0.5).abs() < 1e-12);
        assert!((s.learning_rate(10) - 1.0).abs() < 1e-12);
        assert!((s.learning_rate(60) - 0.5).abs() < 1e-12);
        assert!(s.learning_rate(110).abs() < 1e-12);
        assert!(s.learning_rate(500).abs() < 1e-12);
    }

    #[test]
    fn run_counts_a_partial_accumulation_group_as_a_step() {
        let s = Schedule::for_run(ScheduleKind::Linear, 1.0, 0.1, 10, 4, 5);
        assert_eq!(s.total_steps, 15);
        assert_eq!(s.warmup_steps, 2);
    }

    #[test]
    fn cosine_and_constant() {
        let c = schedule(ScheduleKind::Cosine);
        assert!((c.learning_rate(60) - 0.5).abs() < 1e-12);
        assert!(c.learning_rate(110).abs() < 1e-12);
        let k = schedule(ScheduleKind::Constant);
        assert_eq!(k.learning_rate(100), 1.0);
        assert!((k.learning_rate(3) - 0.3).abs() < 1e-12);
    }
}
