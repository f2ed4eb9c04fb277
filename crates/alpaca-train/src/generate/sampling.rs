//! Choosing the next token from the logits, as transformers' `generate` does: the repetition
//! penalty (a logits processor, also applied when decoding greedily), then with sampling the
//! warpers temperature → top-k → top-p in that order, softmax, and one draw.
//!
//! Each step is a plain function on a logits slice so that it can be checked on hand-made
//! numbers against the formulas of transformers' `RepetitionPenaltyLogitsProcessor`,
//! `TemperatureLogitsWarper`, `TopKLogitsWarper` and `TopPLogitsWarper`.

use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How the next token is picked.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 means greedy (the most likely token; top-k and top-p are then ignored, as with
    /// transformers' `do_sample=False`).
    pub temperature: f32,
    /// Keep only the k most likely tokens (ties with the k-th kept, as transformers does).
    pub top_k: Option<usize>,
    /// Keep the most likely tokens whose probabilities add up to at least p (nucleus).
    pub top_p: Option<f32>,
    /// 1 means none; above 1 discourages tokens already in the prompt or the output.
    pub repetition_penalty: f32,
    /// Seed of the sampling generator: the same seed gives the same text.
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            repetition_penalty: 1.0,
            seed: 42,
        }
    }
}

impl Sampling {
    /// Refuses values the formulas are not defined for, naming the flag.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            bail!(
                "--temperature must be a number ≥ 0 (0: greedy), got {}",
                self.temperature
            );
        }
        if self.top_k == Some(0) {
            bail!("--top-k must be at least 1 (leave it out to keep every token)");
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                bail!("--top-p must be in (0, 1], got {p}");
            }
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            bail!(
                "--repetition-penalty must be a positive number (1: none), got {}",
                self.repetition_penalty
            );
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// transformers' `RepetitionPenaltyLogitsProcessor`: for every distinct token already seen,
/// a positive logit is divided by the penalty and a negative one multiplied by it.
pub fn apply_repetition_penalty(logits: &mut [f32], seen: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut done = vec![false; logits.len()];
    for &id in seen {
        let index = id as usize;
        // Ids outside the logits (a tokenizer larger than the head) have no score to change.
        if index >= logits.len() || done[index] {
            continue;
        }
        done[index] = true;
        let score = logits[index];
        logits[index] = if score < 0.0 {
            score * penalty
        } else {
            score / penalty
        };
    }
}

/// `TemperatureLogitsWarper`: logits / temperature.
pub fn apply_temperature(logits: &mut [f32], temperature: f32) {
    if temperature == 1.0 {
        return;
    }
    for score in logits.iter_mut() {
        *score /= temperature;
    }
}

/// `TopKLogitsWarper`: every logit below the k-th largest becomes −∞.
pub fn apply_top_k(logits: &mut [f32], k: usize) {
    let k = k.max(1);
    if k >= logits.len() {
        return;
    }
    let mut sorted: Vec<f32> = logits.to_vec();
    // The k-th largest value: select_nth on the descending order.
    sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let threshold = sorted[k - 1];
    for score in logits.iter_mut() {
        if *score < threshold {
            *score = f32::NEG_INFINITY;
        }
    }
}

/// `TopPLogitsWarper`: sorts ascending, and removes every token whose cumulative probability
/// (its own included, from the least likely up) is ≤ 1 − p; the most likely token always stays.
pub fn apply_top_p(logits: &mut [f32], p: f32) {
    if p >= 1.0 {
        return;
    }
    let probabilities = softmax(logits);
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[a].total_cmp(&logits[b]));
    let mut cumulative = 0.0f64;
    let last = order.len().saturating_sub(1);
    let removed_mass = 1.0 - p as f64;
    for (rank, &index) in order.iter().enumerate() {
        cumulative += probabilities[index];
        if rank < last && cumulative <= removed_mass {
            logits[index] = f32::NEG_INFINITY;
        }
    }
}

/// Softmax in f64 (−∞ → 0).
pub fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
        .max(f32::MIN) as f64;
    let exps: Vec<f64> = logits.iter().map(|&s| (s as f64 - max).exp()).collect();
    let total: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / total).collect()
}

/// The index of the largest logit; the first one on ties, as `torch.argmax`.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (index, &score) in logits.iter().enumerate() {
        if score > logits[best] {
            best = index;
        }
    }
    best as u32
}

/// Picks tokens step by step with one seeded generator, so a run is reproducible.
pub struct Sampler {
    sampling: Sampling,
    rng: StdRng,
}

impl Sampler {
    pub fn new(sampling: Sampling) -> Self {
        let rng = StdRng::seed_from_u64(sampling.seed);
        Self { sampling, rng }
    }

    /// The next token from `logits` (modified in place), given every token `seen` so far
    /// (prompt and output, for the repetition penalty).
    pub fn next_token(&mut self, logits: &mut [f32], seen: &[u32]) -> u32 {
        apply_repetition_penalty(logits, seen, self.sampling.repetition_penalty);
        if self.sampling.is_greedy() {
            return argmax(logits);
        }
        apply_temperature(logits, self.sampling.temperature);
        if let Some(k) = self.sampling.top_k {
            apply_top_k(logits, k);
        }
        if let Some(p) = self.sampling.top_p {
            apply_top_p(logits, p);
        }
        let probabilities = softmax(logits);
        draw(&probabilities, self.rng.gen::<f64>())
    }
}

/// The token whose cumulative-probability interval holds `uniform` ∈ [0, 1).
pub fn draw(probabilities: &[f64], uniform: f64) -> u32 {
    let total: f64 = probabilities.iter().sum();
    let target = uniform * total;
    let mut cumulative = 0.0;
    let mut last_possible = 0;
    for (index, &probability) in probabilities.iter().enumerate() {
        if probability > 0.0 {
            last_possible = index;
            cumulative += probability;
            if target < cumulative {
                return index as u32;
            }
        }
    }
    // Rounding left `target` just past the sum: the last token that could be drawn.
    last_possible as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(logits: &[f32]) -> Vec<usize> {
        logits
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_finite())
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_scores_once() {
        let mut logits = vec![2.0, -1.0, 0.5, 3.0];
        // Token 0 seen twice: penalised once, as transformers' gather/scatter does.
        apply_repetition_penalty(&mut logits, &[0, 1, 0], 2.0);
        assert_eq!(logits, vec![1.0, -2.0, 0.5, 3.0]);
        // An id beyond the logits is ignored rather than indexing out of bounds.
        apply_repetition_penalty(&mut logits, &[9], 2.0);
        assert_eq!(logits, vec![1.0, -2.0, 0.5, 3.0]);
    }

    #[test]
    fn repetition_penalty_can_change_the_greedy_choice() {
        let mut sampler = Sampler::new(Sampling {
            repetition_penalty: 1.5,
            ..Sampling::default()
        });
        // 3.0 / 1.5 = 2.0 < 2.5: the seen token loses.
        assert_eq!(sampler.next_token(&mut [3.0, 2.5, 0.0], &[0]), 1);
        assert_eq!(sampler.next_token(&mut [3.0, 2.5, 0.0], &[2]), 0);
    }

    #[test]
    fn temperature_scales_logits() {
        let mut logits = vec![1.0, -2.0, 4.0];
        apply_temperature(&mut logits, 0.5);
        assert_eq!(logits, vec![2.0, -4.0, 8.0]);
    }

    #[test]
    fn top_k_keeps_the_k_largest_and_their_ties() {
        let mut logits = vec![0.1, 3.0, 2.0, -1.0, 2.5];
        apply_top_k(&mut logits, 2);
        assert_eq!(kept(&logits), vec![1, 4]);
        let mut ties = vec![1.0, 2.0, 2.0, 0.0];
        apply_top_k(&mut ties, 1);
        assert_eq!(kept(&ties), vec![1, 2]);
        let mut all = vec![1.0, 2.0];
        apply_top_k(&mut all, 5);
        assert_eq!(kept(&all), vec![0, 1]);
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // Probabilities 0.5, 0.3, 0.15, 0.05 (logits are their logs).
        let probabilities = [0.5f32, 0.3, 0.15, 0.05];
        let logits: Vec<f32> = probabilities.iter().map(|p| p.ln()).collect();
        let cases: [(f32, Vec<usize>); 4] = [
            (0.45, vec![0]),
            (0.75, vec![0, 1]),
            (0.85, vec![0, 1, 2]),
            (0.99, vec![0, 1, 2, 3]),
        ];
        for (p, expected) in cases {
            let mut warped = logits.clone();
            apply_top_p(&mut warped, p);
            assert_eq!(kept(&warped), expected, "top_p {p}");
        }
        // The most likely token stays even when it alone exceeds p.
        let mut peaked = vec![10.0, 0.0, 0.0];
        apply_top_p(&mut peaked, 0.01);
        assert_eq!(kept(&peaked), vec![0]);
    }

    #[test]
    fn draw_follows_cumulative_probabilities() {
        let probabilities = [0.2, 0.0, 0.5, 0.3];
        assert_eq!(draw(&probabilities, 0.0), 0);
        assert_eq!(draw(&probabilities, 0.19), 0);
        assert_eq!(draw(&probabilities, 0.21), 2);
        assert_eq!(draw(&probabilities, 0.69), 2);
        assert_eq!(draw(&probabilities, 0.71), 3);
        assert_eq!(draw(&probabilities, 0.999_999_999), 3);
        // Never a zero-probability token, even at the upper edge.
        assert_eq!(draw(&[0.5, 0.5, 0.0], 1.0), 1);
    }

    #[test]
    fn sampling_frequencies_follow_the_warped_distribution() {
        let logits = [1.0f32.ln(), 2.0f32.ln(), 7.0f32.ln(), -30.0];
        let mut sampler = Sampler::new(Sampling {
            temperature: 1.0,
            top_k: Some(3),
            seed: 7,
            ..Sampling::default()
        });
        let mut counts = [0usize; 4];
        let draws = 20_000;
        for _ in 0..draws {
            counts[sampler.next_token(&mut logits.clone(), &[]) as usize] += 1;
        }
        assert_eq!(counts[3], 0, "top-k removed token 3");
        for (index, expected) in [(0, 0.1), (1, 0.2), (2, 0.7)] {
            let observed = counts[index] as f64 / draws as f64;
            assert!(
                (observed - expected).abs() < 0.015,
                "token {index}: {observed} vs {expected}"
            );
        }
    }

    #[test]
    fn low_temperature_sharpens_and_the_same_seed_repeats() {
        let logits = [0.0f32, 0.5, 1.0];
        let run = |temperature: f32, seed: u64| -> Vec<u32> {
            let mut sampler = Sampler::new(Sampling {
                temperature,
                seed,
                ..Sampling::default()
            });
            (0..200)
                .map(|_| sampler.next_token(&mut logits.to_vec(), &[]))
                .collect()
        };
        assert_eq!(run(1.0, 3), run(1.0, 3));
        assert_ne!(run(1.0, 3), run(1.0, 4));
        let top_share =
            |ids: &[u32]| ids.iter().filter(|&&id| id == 2).count() as f64 / ids.len() as f64;
        assert!(top_share(&run(0.05, 3)) > 0.99);
        assert!(top_share(&run(1.0, 3)) < 0.7);
    }

    #[test]
    fn invalid_settings_are_refused_with_the_flag_named() {
        let bad = [
            Sampling {
                temperature: -1.0,
                ..Sampling::default()
            },
            Sampling {
                top_k: Some(0),
                ..Sampling::default()
            },
            Sampling {
                top_p: Some(1.5),
                ..Sampling::default()
            },
            Sampling {
                repetition_penalty: 0.0,
                ..Sampling::default()
            },
        ];
        let flags = [
            "--temperature",
            "--top-k",
            "--top-p",
            "--repetition-penalty",
        ];
        for (sampling, flag) in bad.iter().zip(flags) {
            let message = sampling.validate().unwrap_err().to_string();
            assert!(message.contains(flag), "{message}");
        }
        Sampling::default().validate().unwrap();
    }
}
