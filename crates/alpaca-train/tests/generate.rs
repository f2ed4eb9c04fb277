//! Generation on a tiny random LLaMA: the KV-cache loop against recomputing the whole
//! sequence each step, end tokens, stop strings, streaming and the context limit.

use alpaca_models::{LlamaConfig, LlamaForCausalLM, Mode};
use alpaca_train::generate::{
    FinishReason, GenerationOptions, GenerationTokenizer, Generator, Sampler, Sampling,
};
use candle_core::{Device, Tensor};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::Tokenizer;

/// Byte-level BPE whose vocabulary is the 256 byte symbols: any id below 256 decodes to one
/// byte, so random models produce multi-byte and invalid UTF-8 too.
fn byte_tokenizer() -> Tokenizer {
    let mut symbols: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    symbols.sort();
    let vocab: serde_json::Map<String, serde_json::Value> = symbols
        .iter()
        .enumerate()
        .map(|(index, c)| (c.to_string(), index.into()))
        .collect();
    // Built from JSON: BPE's builder wants ahash maps, which tokenizers does not re-export.
    let json = serde_json::json!({
        "version": "1.0",
        "model": {"type": "BPE", "vocab": vocab, "merges": []},
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
    });
    json.to_string().parse().unwrap()
}

fn tiny_model(seed: u64, max_positions: usize) -> LlamaForCausalLM {
    let config: LlamaConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": 256,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": max_positions,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": true,
        // Large weights so that logits are far apart and the greedy path is not decided by
        // rounding.
        "initializer_range": 0.3,
    }))
    .unwrap();
    LlamaForCausalLM::new_random(config, seed).unwrap()
}

fn generator(seed: u64, max_positions: usize, eos: &[u32]) -> Generator {
    Generator::new(
        tiny_model(seed, max_positions),
        GenerationTokenizer {
            tokenizer: byte_tokenizer(),
            chat_template: None,
            eos_token_ids: eos.to_vec(),
        },
    )
}

/// The reference loop: the whole sequence through `forward` (no cache) for every new token.
fn generate_without_cache(
    model: &LlamaForCausalLM,
    prompt: &[u32],
    sampling: &Sampling,
    new_tokens: usize,
) -> Vec<u32> {
    let mut sampler = Sampler::new(sampling.clone());
    let mut ids = prompt.to_vec();
    for _ in 0..new_tokens {
        let input = Tensor::from_slice(&ids, (1, ids.len()), &Device::Cpu).unwrap();
        let logits = model.forward(&input, None, Mode::EVAL).unwrap();
        let last = logits.get(0).unwrap().get(ids.len() - 1).unwrap();
        let mut scores = last.to_vec1::<f32>().unwrap();
        let next = sampler.next_token(&mut scores, &ids);
        ids.push(next);
    }
    ids[prompt.len()..].to_vec()
}

const PROMPT: [u32; 7] = [72, 101, 108, 108, 111, 33, 32];

fn options(sampling: Sampling, max_new_tokens: usize) -> GenerationOptions {
    GenerationOptions {
        max_new_tokens,
        sampling,
        stop_strings: Vec::new(),
        ignore_eos: true,
    }
}

#[test]
fn kv_cache_generation_equals_recomputing_the_whole_sequence() {
    let settings = [
        Sampling::default(),
        Sampling {
            repetition_penalty: 1.3,
            ..Sampling::default()
        },
        Sampling {
            temperature: 0.8,
            top_k: Some(20),
            top_p: Some(0.9),
            repetition_penalty: 1.1,
            seed: 5,
        },
    ];
    for (index, sampling) in settings.iter().enumerate() {
        let mut generator = generator(11, 128, &[]);
        let cached = generator
            .generate_from_ids(&PROMPT, &options(sampling.clone(), 40), |_| {})
            .unwrap();
        let reference = generate_without_cache(generator.model(), &PROMPT, sampling, 40);
        assert_eq!(cached.token_ids, reference, "setting {index}: {sampling:?}");
        assert_eq!(cached.finish, FinishReason::MaxNewTokens);
    }
    // Sampling really samples: another seed gives another continuation.
    let mut generator = generator(11, 128, &[]);
    let sampled = |generator: &mut Generator, seed: u64| {
        let sampling = Sampling {
            temperature: 1.0,
            seed,
            ..Sampling::default()
        };
        generator
            .generate_from_ids(&PROMPT, &options(sampling, 30), |_| {})
            .unwrap()
            .token_ids
    };
    let first = sampled(&mut generator, 1);
    assert_eq!(first, sampled(&mut generator, 1));
    assert_ne!(first, sampled(&mut generator, 2));
}

#[test]
fn an_end_token_ends_generation_and_is_not_output() {
    let mut free = generator(3, 128, &[]);
    let all = free
        .generate_from_ids(&PROMPT, &options(Sampling::default(), 30), |_| {})
        .unwrap()
        .token_ids;
    // The first token that was not generated before it becomes the end token.
    let cut = (1..all.len())
        .find(|&i| !all[..i].contains(&all[i]))
        .expect("a random model repeats itself less than that");
    let mut stopping = generator(3, 128, &[all[cut]]);
    let mut settings = options(Sampling::default(), 30);
    settings.ignore_eos = false;
    let generation = stopping
        .generate_from_ids(&PROMPT, &settings, |_| {})
        .unwrap();
    assert_eq!(generation.token_ids, all[..cut]);
    assert_eq!(generation.finish, FinishReason::EndOfSequence);
}

#[test]
fn streamed_pieces_concatenate_to_the_text_and_stop_strings_cut_it() {
    let mut generator = generator(5, 256, &[]);
    let sampling = Sampling {
        temperature: 1.0,
        seed: 9,
        ..Sampling::default()
    };
    let mut pieces = Vec::new();
    let free = generator
        .generate_from_ids(&PROMPT, &options(sampling.clone(), 60), |piece| {
            pieces.push(piece.to_string())
        })
        .unwrap();
    assert_eq!(pieces.concat(), free.text);
    assert!(pieces.len() > 1);
    let decoded = generator
        .tokenizer()
        .tokenizer
        .decode(&free.token_ids, true)
        .unwrap();
    assert_eq!(free.text, decoded);

    // A stop string taken from the middle of that text: the same run ends there.
    let characters: Vec<(usize, char)> = free.text.char_indices().collect();
    let (at, stop) = characters[characters.len() / 2..]
        .iter()
        .find(|(_, c)| *c != '\u{FFFD}')
        .map(|&(at, c)| (at, c.to_string()))
        .unwrap();
    let expected = &free.text[..free.text.find(&stop).unwrap()];
    assert!(expected.len() <= at);
    let mut settings = options(sampling, 60);
    settings.stop_strings = vec![stop.clone()];
    let mut stopped_pieces = Vec::new();
    let stopped = generator
        .generate_from_ids(&PROMPT, &settings, |piece| {
            stopped_pieces.push(piece.to_string())
        })
        .unwrap();
    assert_eq!(stopped.text, expected);
    assert_eq!(stopped_pieces.concat(), expected);
    assert_eq!(stopped.finish, FinishReason::StopString(stop));
    assert!(stopped.token_ids.len() < free.token_ids.len());
}

#[test]
fn generation_ends_when_the_context_is_full() {
    let mut generator = generator(7, 32, &[]);
    let generation = generator
        .generate_from_ids(&PROMPT, &options(Sampling::default(), 100), |_| {})
        .unwrap();
    assert_eq!(generation.finish, FinishReason::ContextFull);
    // Positions 0..32 are fed; the token predicted at the last one is output, not fed.
    assert_eq!(generation.token_ids.len(), 32 - PROMPT.len() + 1);
    let too_long = vec![65u32; 32];
    let error = generator
        .generate_from_ids(&too_long, &options(Sampling::default(), 1), |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("32 tokens") && error.contains("at most 32"),
        "{error}"
    );
    let error = generator
        .generate_from_ids(&[], &options(Sampling::default(), 1), |_| {})
        .unwrap_err()
        .to_string();
    assert!(error.contains("no tokens"), "{error}");
}

#[test]
fn a_prompt_that_extends_the_cached_tokens_reuses_them() {
    let mut warm = generator(13, 128, &[]);
    let first = warm
        .generate_from_ids(&PROMPT, &options(Sampling::default(), 10), |_| {})
        .unwrap();
    assert_eq!(first.reused_tokens, 0);
    // The next turn: prompt, answer, and more text.
    let mut next_prompt = PROMPT.to_vec();
    next_prompt.extend_from_slice(&first.token_ids);
    next_prompt.extend_from_slice(&[10, 81, 58, 32]);
    let continued = warm
        .generate_from_ids(&next_prompt, &options(Sampling::default(), 15), |_| {})
        .unwrap();
    // The last answer token was sampled but never fed, so it is not cached.
    assert_eq!(continued.reused_tokens, PROMPT.len() + 10 - 1);
    let mut cold = generator(13, 128, &[]);
    let fresh = cold
        .generate_from_ids(&next_prompt, &options(Sampling::default(), 15), |_| {})
        .unwrap();
    assert_eq!(fresh.reused_tokens, 0);
    assert_eq!(continued.token_ids, fresh.token_ids);
    // A prompt that does not extend the cache starts over.
    let other = warm
        .generate_from_ids(&[1, 2, 3], &options(Sampling::default(), 3), |_| {})
        .unwrap();
    assert_eq!(other.reused_tokens, 0);
}

/// A stand-in for a LoRA adapter: adds x Mᵀ with a fixed M [out, in].
struct FixedLowRank {
    weight_transposed: Tensor,
}

impl alpaca_models::llama::ProjectionAdapter for FixedLowRank {
    fn forward(&self, x: &Tensor, _mode: Mode) -> alpaca_models::Result<Tensor> {
        Ok(x.broadcast_matmul(&self.weight_transposed)?)
    }
}

#[test]
fn an_adapter_attached_through_model_mut_is_used_by_generation() {
    let mut generator = generator(11, 128, &[]);
    let settings = options(Sampling::default(), 30);
    let base = generator
        .generate_from_ids(&PROMPT, &settings, |_| {})
        .unwrap();
    for projection in generator.model_mut().model.projections_mut() {
        if projection.name.ends_with("v_proj") || projection.name.ends_with("down_proj") {
            let (out, input) = projection.linear.weight.as_tensor().dims2().unwrap();
            let values: Vec<f32> = (0..input * out)
                .map(|k| ((k * 7 % 13) as f32 - 6.0) * 0.05)
                .collect();
            projection.adapter = Some(Box::new(FixedLowRank {
                weight_transposed: Tensor::from_vec(values, (input, out), &Device::Cpu).unwrap(),
            }));
        }
    }
    let adapted = generator
        .generate_from_ids(&PROMPT, &settings, |_| {})
        .unwrap();
    assert_eq!(adapted.reused_tokens, 0, "model_mut drops the cache");
    assert_ne!(adapted.token_ids, base.token_ids);
    let reference = generate_without_cache(generator.model(), &PROMPT, &Sampling::default(), 30);
    assert_eq!(adapted.token_ids, reference);
}
