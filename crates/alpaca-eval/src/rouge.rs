//! ROUGE-L as Google's `rouge_score` computes it (`RougeScorer(["rougeL"])`, no stemming):
//! texts lower-cased, every run of characters other than a–z and 0–9 a separator, then the
//! longest common subsequence of the two token lists gives precision, recall and their F1.
//! Stanford Alpaca's data generation drops a new instruction whose ROUGE-L F1 against any
//! instruction already in the pool exceeds 0.7.

/// `rouge_score`'s default tokenization.
pub fn rouge_tokens(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// Length of the longest common subsequence (two-row dynamic programme).
fn lcs_length(a: &[String], b: &[String]) -> usize {
    let mut previous = vec![0usize; b.len() + 1];
    let mut current = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            current[j + 1] = if x == y {
                previous[j] + 1
            } else {
                current[j].max(previous[j + 1])
            };
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// ROUGE-L F1 of `candidate` against `reference`, over already tokenized texts.
pub fn rouge_l_tokens(reference: &[String], candidate: &[String]) -> f64 {
    if reference.is_empty() || candidate.is_empty() {
        return 0.0;
    }
    let common = lcs_length(reference, candidate) as f64;
    if common == 0.0 {
        return 0.0;
    }
    let precision = common / candidate.len() as f64;
    let recall = common / reference.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// ROUGE-L F1 of `candidate` against `reference`.
pub fn rouge_l(reference: &str, candidate: &str) -> f64 {
    rouge_l_tokens(&rouge_tokens(reference), &rouge_tokens(candidate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_rouge_score_on_known_pairs() {
        // Values from rouge_score 0.1.2: RougeScorer(["rougeL"]).score(reference, candidate).
        assert!(
            (rouge_l("The cat sat on the mat.", "the cat sat") - 2.0 * 0.5 / 1.5).abs() < 1e-12
        );
        assert_eq!(
            rouge_l(
                "Give three tips for staying healthy.",
                "Give three tips for staying healthy!"
            ),
            1.0
        );
        assert_eq!(rouge_l("abc", "xyz"), 0.0);
        assert_eq!(rouge_l("", "anything"), 0.0);
        // LCS of (a b c d e) and (a x c y e) is a c e: P = R = 3/5.
        assert!((rouge_l("a b c d e", "a x c y e") - 0.6).abs() < 1e-12);
        assert_eq!(
            rouge_tokens("Don't stop—café 42!"),
            ["don", "t", "stop", "caf", "42"]
        );
    }
}
