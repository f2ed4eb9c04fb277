//! Batch order and dynamic padding.
//!
//! Padding every batch only to its own longest example, and grouping examples of similar
//! length into the same batch, is most of the speed of HF's `group_by_length`: little compute
//! is spent on padding.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::align::{Encoded, IGNORE_INDEX};

/// How many batches a mega-batch holds, as in HF's `LengthGroupedSampler`: large enough that
/// sorting inside it makes batches homogeneous, small enough that the order stays random.
const MEGA_BATCH_FACTOR: usize = 50;

/// A padded batch, every tensor row-major `[batch_size, seq_len]`.
#[derive(Debug, Clone)]
pub struct Batch {
    pub input_ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// 1 on real tokens, 0 on padding.
    pub attention_mask: Vec<u32>,
    /// [`IGNORE_INDEX`] on padding.
    pub labels: Vec<i64>,
    pub batch_size: usize,
    pub seq_len: usize,
    /// Dataset index of each row, to map predictions back to sentences.
    pub indices: Vec<usize>,
}

/// Pads `examples` to the longest among them (padding id `pad_id`, mask 0, label
/// [`IGNORE_INDEX`]). `indices[row]` is the dataset index of `examples[row]`.
///
/// # Panics
/// If `examples` and `indices` differ in length, which is a bug in the caller.
pub fn collate(examples: &[&Encoded], indices: &[usize], pad_id: u32) -> Batch {
    assert_eq!(
        examples.len(),
        indices.len(),
        "collate needs one dataset index per example"
    );
    let batch_size = examples.len();
    let seq_len = examples
        .iter()
        .map(|example| example.input_ids.len())
        .max()
        .unwrap_or(0);
    let cells = batch_size * seq_len;
    let mut batch = Batch {
        input_ids: Vec::with_capacity(cells),
        type_ids: Vec::with_capacity(cells),
        attention_mask: Vec::with_capacity(cells),
        labels: Vec::with_capacity(cells),
        batch_size,
        seq_len,
        indices: indices.to_vec(),
    };
    for example in examples {
        let len = example.input_ids.len();
        let padding = seq_len - len;
        batch.input_ids.extend_from_slice(&example.input_ids);
        batch.input_ids.extend(std::iter::repeat_n(pad_id, padding));
        batch.type_ids.extend_from_slice(&example.type_ids);
        batch.type_ids.extend(std::iter::repeat_n(0, padding));
        batch.attention_mask.extend(std::iter::repeat_n(1, len));
        batch.attention_mask.extend(std::iter::repeat_n(0, padding));
        batch.labels.extend_from_slice(&example.labels);
        batch
            .labels
            .extend(std::iter::repeat_n(IGNORE_INDEX, padding));
    }
    batch
}

/// Training order: batches of similar-length examples in a seeded random order, with the batch
/// holding the longest example first so that running out of memory shows at the first step.
/// Every index `0..lengths.len()` appears exactly once. A `batch_size` of 0 is treated as 1.
pub fn length_grouped_order(lengths: &[usize], batch_size: usize, seed: u64) -> Vec<Vec<usize>> {
    let batch_size = batch_size.max(1);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut indices: Vec<usize> = (0..lengths.len()).collect();
    indices.shuffle(&mut rng);

    let mut batches: Vec<Vec<usize>> = Vec::new();
    for mega_batch in indices.chunks_mut(MEGA_BATCH_FACTOR * batch_size) {
        mega_batch.sort_by(|a, b| lengths[*b].cmp(&lengths[*a]));
        batches.extend(mega_batch.chunks(batch_size).map(<[usize]>::to_vec));
    }
    batches.shuffle(&mut rng);

    let longest_length = lengths.iter().copied().max();
    let longest_batch = batches.iter().position(|batch| {
        batch
            .iter()
            .any(|&index| Some(lengths[index]) == longest_length)
    });
    if let Some(longest_batch) = longest_batch {
        batches.swap(0, longest_batch);
    }
    batches
}

/// Evaluation order: `0..len` in order, cut into batches.
pub fn sequential_order(len: usize, batch_size: usize) -> Vec<Vec<usize>> {
    let indices: Vec<usize> = (0..len).collect();
    indices
        .chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect()
}

/// Faster evaluation order: longest first, so batches carry almost no padding and the largest
/// one comes first. Results must be mapped back through [`Batch::indices`].
pub fn sorted_by_length_order(lengths: &[usize], batch_size: usize) -> Vec<Vec<usize>> {
    let mut indices: Vec<usize> = (0..lengths.len()).collect();
    indices.sort_by(|a, b| lengths[*b].cmp(&lengths[*a]));
    indices
        .chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(ids: &[u32], labels: &[i64]) -> Encoded {
        Encoded {
            input_ids: ids.to_vec(),
            type_ids: vec![0; ids.len()],
            labels: labels.to_vec(),
            word_ids: vec![None; ids.len()],
            words_kept: 0,
        }
    }

    fn is_permutation(batches: &[Vec<usize>], len: usize) -> bool {
        let mut all: Vec<usize> = batches.iter().flatten().copied().collect();
        all.sort_unstable();
        all == (0..len).collect::<Vec<_>>()
    }

    /// Pseudo-random lengths between 5 and 120 without another dependency.
    fn lengths(count: usize) -> Vec<usize> {
        (0..count).map(|i| 5 + (i * 7919 + 13) % 116).collect()
    }

    #[test]
    fn collate_pads_to_the_longest() {
        let short = example(&[101, 7, 102], &[-100, 3, -100]);
        let long = example(&[101, 8, 9, 10, 102], &[-100, 1, -100, 2, -100]);
        let batch = collate(&[&short, &long], &[4, 9], 0);
        assert_eq!((batch.batch_size, batch.seq_len), (2, 5));
        assert_eq!(batch.input_ids, vec![101, 7, 102, 0, 0, 101, 8, 9, 10, 102]);
        assert_eq!(batch.attention_mask, vec![1, 1, 1, 0, 0, 1, 1, 1, 1, 1]);
        assert_eq!(
            batch.labels,
            vec![-100, 3, -100, -100, -100, -100, 1, -100, 2, -100]
        );
        assert_eq!(batch.type_ids, vec![0; 10]);
        assert_eq!(batch.indices, vec![4, 9]);
    }

    #[test]
    fn collate_of_nothing_is_empty() {
        let batch = collate(&[], &[], 0);
        assert_eq!((batch.batch_size, batch.seq_len), (0, 0));
        assert!(batch.input_ids.is_empty());
    }

    #[test]
    fn length_grouped_order_is_a_seeded_permutation() {
        let lengths = lengths(1000);
        let order = length_grouped_order(&lengths, 8, 42);
        assert!(is_permutation(&order, lengths.len()));
        assert!(order.iter().all(|batch| batch.len() <= 8));
        assert_eq!(order, length_grouped_order(&lengths, 8, 42));
        assert_ne!(order, length_grouped_order(&lengths, 8, 43));
        let longest = *lengths.iter().max().unwrap();
        assert!(order[0].iter().any(|&index| lengths[index] == longest));
    }

    #[test]
    fn length_grouped_batches_are_homogeneous() {
        let lengths = lengths(2000);
        let spread = |batches: &[Vec<usize>]| -> usize {
            batches
                .iter()
                .map(|batch| {
                    let max = batch.iter().map(|&i| lengths[i]).max().unwrap();
                    let min = batch.iter().map(|&i| lengths[i]).min().unwrap();
                    max - min
                })
                .sum::<usize>()
                / batches.len()
        };
        let grouped = length_grouped_order(&lengths, 8, 1);
        let plain = sequential_order(lengths.len(), 8);
        // Within a 400-example mega-batch of lengths spread over 116 values, neighbours in
        // sorted order differ by about 116 / 400 * 8 ≈ 2; unsorted batches span ~80.
        assert!(spread(&grouped) <= 5, "grouped spread {}", spread(&grouped));
        assert!(spread(&plain) > 40, "plain spread {}", spread(&plain));
    }

    #[test]
    fn length_grouped_order_handles_edge_sizes() {
        assert!(length_grouped_order(&[], 4, 0).is_empty());
        assert_eq!(length_grouped_order(&[3], 4, 0), vec![vec![0]]);
        assert!(is_permutation(&length_grouped_order(&[1, 2, 3], 0, 0), 3));
    }

    #[test]
    fn sequential_and_sorted_orders() {
        assert_eq!(
            sequential_order(5, 2),
            vec![vec![0, 1], vec![2, 3], vec![4]]
        );
        assert_eq!(
            sorted_by_length_order(&[3, 9, 1, 9, 4], 2),
            vec![vec![1, 3], vec![4, 0], vec![2]]
        );
    }
}
