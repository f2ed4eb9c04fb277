//! GGUF reading on small files written here byte by byte: block dequantisation checked against
//! values worked out by hand from the GGML block layouts, llama.cpp's Q/K row permutation, a
//! tiny llama converted end to end, and the errors for bad input.

use std::path::{Path, PathBuf};

use alpaca_models::gguf::{self, permute_for_rope, unpermute_for_rope, GgufFile};
use candle_core::{Device, Tensor};

// ---------------------------------------------------------------------------------------------
// A minimal GGUF v3 writer (the layout of ggml's docs/gguf.md).

enum Meta {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strings(Vec<String>),
    I32s(Vec<i32>),
}

struct TensorSpec {
    name: String,
    /// GGML type id: 0 F32, 1 F16, 2 Q4_0, 3 Q4_1, 8 Q8_0, 12 Q4_K, ...
    type_id: u32,
    /// PyTorch order (outermost first); GGUF stores the reverse.
    dims: Vec<usize>,
    data: Vec<u8>,
}

fn put_string(out: &mut Vec<u8>, text: &str) {
    out.extend((text.len() as u64).to_le_bytes());
    out.extend(text.as_bytes());
}

fn write_gguf(path: &Path, metadata: &[(&str, Meta)], tensors: &[TensorSpec]) {
    let mut out = Vec::new();
    out.extend(b"GGUF");
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        put_string(&mut out, key);
        match value {
            Meta::U32(v) => {
                out.extend(4u32.to_le_bytes());
                out.extend(v.to_le_bytes());
            }
            Meta::F32(v) => {
                out.extend(6u32.to_le_bytes());
                out.extend(v.to_le_bytes());
            }
            Meta::Bool(v) => {
                out.extend(7u32.to_le_bytes());
                out.push(*v as u8);
            }
            Meta::Str(text) => {
                out.extend(8u32.to_le_bytes());
                put_string(&mut out, text);
            }
            Meta::Strings(items) => {
                out.extend(9u32.to_le_bytes());
                out.extend(8u32.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for item in items {
                    put_string(&mut out, item);
                }
            }
            Meta::I32s(items) => {
                out.extend(9u32.to_le_bytes());
                out.extend(5u32.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for item in items {
                    out.extend(item.to_le_bytes());
                }
            }
        }
    }
    let mut offset = 0u64;
    let mut offsets = Vec::new();
    for tensor in tensors {
        put_string(&mut out, &tensor.name);
        out.extend((tensor.dims.len() as u32).to_le_bytes());
        for dim in tensor.dims.iter().rev() {
            out.extend((*dim as u64).to_le_bytes());
        }
        out.extend(tensor.type_id.to_le_bytes());
        out.extend(offset.to_le_bytes());
        offsets.push(offset);
        offset = (offset + tensor.data.len() as u64).div_ceil(32) * 32;
    }
    while out.len() % 32 != 0 {
        out.push(0);
    }
    let data_start = out.len();
    for (tensor, offset) in tensors.iter().zip(offsets) {
        out.resize(data_start + offset as usize, 0);
        out.extend(&tensor.data);
    }
    std::fs::write(path, out).unwrap();
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn one_tensor_file(dir: &Path, type_id: u32, dims: Vec<usize>, data: Vec<u8>) -> PathBuf {
    let path = dir.join("one.gguf");
    let tensor = TensorSpec {
        name: "x".into(),
        type_id,
        dims,
        data,
    };
    write_gguf(
        &path,
        &[("general.architecture", Meta::Str("llama".into()))],
        &[tensor],
    );
    path
}

fn dequantize_one(type_id: u32, dims: Vec<usize>, data: Vec<u8>) -> Vec<f32> {
    let dir = tempfile::tempdir().unwrap();
    let path = one_tensor_file(dir.path(), type_id, dims, data);
    let mut file = GgufFile::open(&path).unwrap();
    file.dequantize("x")
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Block formats. f16 bit patterns used below: 0x3C00 = 1.0, 0x3800 = 0.5, 0x3400 = 0.25,
// 0x3000 = 0.125, 0xBC00 = -1.0, 0xC000 = -2.0, 0x7BFF = 65504 (largest finite f16).

#[test]
fn f32_and_f16_tensors_read_as_stored() {
    let values = [1.5f32, -0.25, 3.0e-8, 1234.5];
    assert_eq!(dequantize_one(0, vec![2, 2], f32_bytes(&values)), values);

    let halves: Vec<u8> = [0x3C00u16, 0xC000, 0x3800, 0x7BFF]
        .iter()
        .flat_map(|bits| bits.to_le_bytes())
        .collect();
    assert_eq!(
        dequantize_one(1, vec![4], halves),
        [1.0, -2.0, 0.5, 65504.0]
    );
}

/// Q4_0 block (18 bytes): f16 scale d, then 16 bytes; byte j holds value j in its low nibble
/// and value j + 16 in its high nibble; x = (nibble - 8) * d.
#[test]
fn q4_0_block_by_hand() {
    let mut block = vec![0x00, 0x38]; // d = 0.5
    let mut quants = [0u8; 16];
    quants[0] = 0x0F; // x0 = (15 - 8) * 0.5 = 3.5,   x16 = (0 - 8) * 0.5 = -4
    quants[1] = 0x88; // x1 = 0,                      x17 = 0
    quants[2] = 0x9A; // x2 = (10 - 8) * 0.5 = 1,     x18 = (9 - 8) * 0.5 = 0.5
    block.extend(quants);
    let mut expected = [-4.0f32; 32]; // nibble 0 everywhere else: (0 - 8) * 0.5
    expected[0] = 3.5;
    expected[16] = -4.0;
    expected[1] = 0.0;
    expected[17] = 0.0;
    expected[2] = 1.0;
    expected[18] = 0.5;
    assert_eq!(dequantize_one(2, vec![32], block), expected);
}

/// Q4_1 block (20 bytes): f16 scale d, f16 minimum m, 16 bytes of nibbles as Q4_0;
/// x = nibble * d + m.
#[test]
fn q4_1_block_by_hand() {
    let mut block = vec![0x00, 0x34, 0x00, 0xBC]; // d = 0.25, m = -1
    let mut quants = [0u8; 16];
    quants[0] = 0x0F; // x0 = 15 * 0.25 - 1 = 2.75,  x16 = 0 * 0.25 - 1 = -1
    quants[1] = 0x84; // x1 = 4 * 0.25 - 1 = 0,      x17 = 8 * 0.25 - 1 = 1
    quants[15] = 0xF1; // x15 = 1 * 0.25 - 1 = -0.75, x31 = 15 * 0.25 - 1 = 2.75
    block.extend(quants);
    let mut expected = [-1.0f32; 32];
    expected[0] = 2.75;
    expected[1] = 0.0;
    expected[17] = 1.0;
    expected[15] = -0.75;
    expected[31] = 2.75;
    assert_eq!(dequantize_one(3, vec![32], block), expected);
}

/// Q8_0 block (34 bytes): f16 scale d, then 32 signed bytes; x = q * d. Two rows of one block
/// each, with different scales, to check that blocks follow the row order.
#[test]
fn q8_0_blocks_by_hand() {
    let mut data = vec![0x00, 0x30]; // d = 0.125
    let mut row0 = [0i8; 32];
    row0[0] = -128; // -16
    row0[1] = 127; // 15.875
    row0[2] = 1; // 0.125
    row0[31] = -1; // -0.125
    data.extend(row0.iter().map(|q| *q as u8));
    data.extend([0x00, 0xC0]); // d = -2
    let mut row1 = [0i8; 32];
    row1[0] = 3; // -6
    row1[5] = -4; // 8
    data.extend(row1.iter().map(|q| *q as u8));
    let mut expected = vec![0.0f32; 64];
    expected[0] = -16.0;
    expected[1] = 15.875;
    expected[2] = 0.125;
    expected[31] = -0.125;
    expected[32] = -6.0;
    expected[37] = 8.0;
    let values = dequantize_one(8, vec![2, 32], data);
    assert_eq!(values, expected);
}

// ---------------------------------------------------------------------------------------------
// llama.cpp's Q/K permutation.

fn rows(tensor: &Tensor) -> Vec<f32> {
    tensor.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn rope_permutation_by_hand() {
    // 2 heads of dimension 4, one column: HF rows [0 1 2 3 | 4 5 6 7] (halves [0 1][2 3])
    // become llama.cpp's interleaved [0 2 1 3 | 4 6 5 7].
    let weight = Tensor::arange(0f32, 8.0, &Device::Cpu)
        .unwrap()
        .reshape((8, 1))
        .unwrap();
    let permuted = permute_for_rope(&weight, 2).unwrap();
    assert_eq!(rows(&permuted), [0., 2., 1., 3., 4., 6., 5., 7.]);
    // One head of dimension 8: halves [0 1 2 3][4 5 6 7] interleave.
    let single = permute_for_rope(&weight, 1).unwrap();
    assert_eq!(rows(&single), [0., 4., 1., 5., 2., 6., 3., 7.]);
    assert_eq!(
        rows(&unpermute_for_rope(&single, 1).unwrap()),
        rows(&weight)
    );
}

#[test]
fn rope_permutation_round_trips_and_keeps_columns_together() {
    // 3 heads x 8 rows, 5 columns: every row moves as a whole.
    let weight = Tensor::randn(0f32, 1.0, (24, 5), &Device::Cpu).unwrap();
    for heads in [1, 3, 6, 12] {
        let permuted = permute_for_rope(&weight, heads).unwrap();
        if heads == 12 {
            // A head dimension of 2 has one row per half: interleaving changes nothing.
            assert_eq!(rows(&permuted), rows(&weight));
        } else {
            assert_ne!(rows(&permuted), rows(&weight), "{heads} heads");
        }
        let back = unpermute_for_rope(&permuted, heads).unwrap();
        assert_eq!(rows(&back), rows(&weight), "{heads} heads");
        let forward = permute_for_rope(&unpermute_for_rope(&weight, heads).unwrap(), heads);
        assert_eq!(rows(&forward.unwrap()), rows(&weight), "{heads} heads");
    }
    let original: Vec<Vec<f32>> = weight.to_vec2().unwrap();
    let permuted: Vec<Vec<f32>> = permute_for_rope(&weight, 3).unwrap().to_vec2().unwrap();
    // Head 1 (rows 8..16), half size 4: permuted row 8 + 2i + j is original row 8 + 4j + i.
    for i in 0..4 {
        for j in 0..2 {
            assert_eq!(permuted[8 + 2 * i + j], original[8 + 4 * j + i]);
        }
    }
    assert!(
        permute_for_rope(&weight, 5).is_err(),
        "24 rows do not split into 5 heads"
    );
}

// ---------------------------------------------------------------------------------------------
// A tiny llama: hidden 8, 2 heads / 1 KV head of dimension 4, ffn 16, one layer, a byte-level
// vocabulary (3 special tokens, the 256 byte characters, 4 merged tokens).

const HIDDEN: usize = 8;
const FFN: usize = 16;

fn tiny_vocabulary() -> (Vec<String>, Vec<i32>, Vec<String>) {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .map(String::from)
        .to_vec();
    let mut types = vec![3, 3, 3];
    for character in gguf::tokenizer::byte_alphabet() {
        tokens.push(character.to_string());
        types.push(1);
    }
    for merged in ["he", "ll", "hell", "ĠĠ"] {
        tokens.push(merged.into());
        types.push(1);
    }
    let merges = ["h e", "l l", "he ll", "Ġ Ġ"].map(String::from).to_vec();
    (tokens, types, merges)
}

fn sequential(count: usize, scale: f32) -> Vec<f32> {
    (0..count).map(|i| (i as f32 * scale).sin()).collect()
}

struct TinyLlama {
    metadata: Vec<(&'static str, Meta)>,
    tensors: Vec<TensorSpec>,
    hf_q: Vec<f32>,
    hf_k: Vec<f32>,
}

fn f32_tensor(name: &str, dims: Vec<usize>, values: &[f32]) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        type_id: 0,
        dims,
        data: f32_bytes(values),
    }
}

fn tiny_llama() -> TinyLlama {
    let (tokens, types, merges) = tiny_vocabulary();
    let vocab = tokens.len();
    let metadata = vec![
        ("general.architecture", Meta::Str("llama".into())),
        ("llama.block_count", Meta::U32(1)),
        ("llama.context_length", Meta::U32(64)),
        ("llama.embedding_length", Meta::U32(HIDDEN as u32)),
        ("llama.feed_forward_length", Meta::U32(FFN as u32)),
        ("llama.attention.head_count", Meta::U32(2)),
        ("llama.attention.head_count_kv", Meta::U32(1)),
        ("llama.rope.freq_base", Meta::F32(100_000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Meta::F32(1e-5)),
        ("llama.rope.dimension_count", Meta::U32(4)),
        ("tokenizer.ggml.model", Meta::Str("gpt2".into())),
        ("tokenizer.ggml.pre", Meta::Str("smollm".into())),
        ("tokenizer.ggml.tokens", Meta::Strings(tokens)),
        ("tokenizer.ggml.token_type", Meta::I32s(types)),
        ("tokenizer.ggml.merges", Meta::Strings(merges)),
        ("tokenizer.ggml.bos_token_id", Meta::U32(1)),
        ("tokenizer.ggml.eos_token_id", Meta::U32(2)),
        ("tokenizer.ggml.padding_token_id", Meta::U32(2)),
        ("tokenizer.ggml.add_bos_token", Meta::Bool(false)),
        (
            "tokenizer.chat_template",
            Meta::Str("{{ messages }}".into()),
        ),
    ];
    // HF-order Q and K; the file holds them permuted, as convert_hf_to_gguf.py writes them.
    let hf_q = sequential(HIDDEN * HIDDEN, 0.37);
    let hf_k = sequential(4 * HIDDEN, 0.71);
    let permuted = |values: &[f32], rows: usize, heads: usize| {
        let tensor = Tensor::from_slice(values, (rows, HIDDEN), &Device::Cpu).unwrap();
        let permuted = permute_for_rope(&tensor, heads).unwrap();
        permuted.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    let tensors = vec![
        f32_tensor(
            "token_embd.weight",
            vec![vocab, HIDDEN],
            &sequential(vocab * HIDDEN, 0.01),
        ),
        f32_tensor("blk.0.attn_norm.weight", vec![HIDDEN], &[1.0; HIDDEN]),
        f32_tensor(
            "blk.0.attn_q.weight",
            vec![HIDDEN, HIDDEN],
            &permuted(&hf_q, HIDDEN, 2),
        ),
        f32_tensor(
            "blk.0.attn_k.weight",
            vec![4, HIDDEN],
            &permuted(&hf_k, 4, 1),
        ),
        f32_tensor("blk.0.attn_v.weight", vec![4, HIDDEN], &sequential(32, 0.3)),
        f32_tensor(
            "blk.0.attn_output.weight",
            vec![HIDDEN, HIDDEN],
            &sequential(64, 0.2),
        ),
        f32_tensor("blk.0.ffn_norm.weight", vec![HIDDEN], &[0.5; HIDDEN]),
        f32_tensor(
            "blk.0.ffn_gate.weight",
            vec![FFN, HIDDEN],
            &sequential(128, 0.4),
        ),
        f32_tensor(
            "blk.0.ffn_up.weight",
            vec![FFN, HIDDEN],
            &sequential(128, 0.5),
        ),
        f32_tensor(
            "blk.0.ffn_down.weight",
            vec![HIDDEN, FFN],
            &sequential(128, 0.6),
        ),
        f32_tensor("output_norm.weight", vec![HIDDEN], &[2.0; HIDDEN]),
    ];
    TinyLlama {
        metadata,
        tensors,
        hf_q,
        hf_k,
    }
}

fn write_tiny(dir: &Path, tiny: &TinyLlama) -> PathBuf {
    let path = dir.join("tiny.gguf");
    write_gguf(&path, &tiny.metadata, &tiny.tensors);
    path
}

#[test]
fn tiny_llama_converts_to_the_hf_layout() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = tiny_llama();
    let path = write_tiny(dir.path(), &tiny);
    let model = gguf::load_llama(&path).unwrap();

    let config = &model.config;
    assert_eq!(config["architectures"][0], "LlamaForCausalLM");
    assert_eq!(config["model_type"], "llama");
    assert_eq!(config["hidden_size"], 8);
    assert_eq!(config["intermediate_size"], 16);
    assert_eq!(config["num_attention_heads"], 2);
    assert_eq!(config["num_key_value_heads"], 1);
    assert_eq!(config["num_hidden_layers"], 1);
    assert_eq!(config["head_dim"], 4);
    assert_eq!(config["max_position_embeddings"], 64);
    assert_eq!(config["vocab_size"], 263);
    // f32 1e-5 and 1e5 come back as the decimal numbers they were written from.
    assert_eq!(config["rms_norm_eps"].as_f64(), Some(1e-5));
    assert_eq!(config["rope_theta"].as_f64(), Some(1e5));
    assert_eq!(config["tie_word_embeddings"], true);
    assert_eq!(config["bos_token_id"], 1);
    assert_eq!(config["eos_token_id"], 2);
    assert_eq!(config["pad_token_id"], 2);
    assert_eq!(model.generation_config["eos_token_id"], 2);

    assert!(!model.tensors.contains_key("lm_head.weight"));
    assert_eq!(model.tensors.len(), 11);
    let q = &model.tensors["model.layers.0.self_attn.q_proj.weight"];
    assert_eq!(rows(q), tiny.hf_q, "Q rows back in HF order");
    let k = &model.tensors["model.layers.0.self_attn.k_proj.weight"];
    assert_eq!(k.dims(), [4, HIDDEN]);
    assert_eq!(rows(k), tiny.hf_k, "K rows back in HF order (1 KV head)");
    let v = &model.tensors["model.layers.0.self_attn.v_proj.weight"];
    assert_eq!(rows(v), sequential(32, 0.3), "V is not permuted");
    assert_eq!(
        model.tensors["model.layers.0.post_attention_layernorm.weight"].dims(),
        [HIDDEN]
    );
    assert_eq!(
        model.tensors["model.layers.0.mlp.down_proj.weight"].dims(),
        [HIDDEN, FFN]
    );

    // The tokenizer: merges apply, special tokens stay whole, no BOS is added, text
    // round-trips through the byte alphabet.
    let tokenizer = &model.tokenizer.tokenizer;
    let hell = 3 + 256 + 2;
    let o = 3 + u32::from(b'o');
    let encoding = tokenizer.encode("<|im_start|>hello", true).unwrap();
    assert_eq!(encoding.get_ids(), [1, hell, o]);
    let text = "héllo wörld 🦙 42";
    let ids = tokenizer.encode(text, true).unwrap().get_ids().to_vec();
    assert_eq!(tokenizer.decode(&ids, false).unwrap(), text);
    assert_eq!(
        model.tokenizer.tokenizer_config["chat_template"],
        "{{ messages }}"
    );
    assert_eq!(model.tokenizer.tokenizer_config["eos_token"], "<|im_end|>");

    let output = dir.path().join("hf");
    model.save(&output).unwrap();
    for name in [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        assert!(output.join(name).is_file(), "{name} written");
    }
    let saved =
        candle_core::safetensors::load(output.join("model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(
        rows(&saved["model.layers.0.self_attn.q_proj.weight"]),
        tiny.hf_q
    );
    let reloaded = tokenizers::Tokenizer::from_file(output.join("tokenizer.json")).unwrap();
    assert_eq!(reloaded.encode(text, true).unwrap().get_ids(), ids);
}

#[test]
fn an_output_tensor_becomes_an_untied_lm_head() {
    let dir = tempfile::tempdir().unwrap();
    let mut tiny = tiny_llama();
    tiny.tensors.push(f32_tensor(
        "output.weight",
        vec![263, HIDDEN],
        &sequential(263 * HIDDEN, 0.02),
    ));
    let model = gguf::load_llama(&write_tiny(dir.path(), &tiny)).unwrap();
    assert_eq!(model.config["tie_word_embeddings"], false);
    assert_eq!(model.tensors["lm_head.weight"].dims(), [263, HIDDEN]);
}

#[test]
fn the_smollm_split_isolates_digits() {
    let dir = tempfile::tempdir().unwrap();
    let model = gguf::load_llama(&write_tiny(dir.path(), &tiny_llama())).unwrap();
    let encoding = model.tokenizer.tokenizer.encode("a  42", false).unwrap();
    // llama.cpp's smollm split cuts digits off first, so the two spaces form one piece and
    // merge into "ĠĠ"; GPT-2's regex alone would give "a", " ", " 42" and no such merge.
    let tokens: Vec<&str> = encoding.get_tokens().iter().map(String::as_str).collect();
    assert_eq!(tokens, ["a", "ĠĠ", "4", "2"]);
}

// ---------------------------------------------------------------------------------------------
// Bad input: errors name the file, the tensor or key, and what was expected.

fn error_of<T>(result: alpaca_models::Result<T>) -> String {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn an_unsupported_tensor_type_is_named() {
    let dir = tempfile::tempdir().unwrap();
    // A Q4_K super-block: 256 values in 144 bytes. candle reads it; we do not convert it.
    let path = one_tensor_file(dir.path(), 12, vec![256], vec![0; 144]);
    let mut file = GgufFile::open(&path).unwrap();
    let message = error_of(file.dequantize("x"));
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("tensor x has type Q4_K"), "{message}");
    assert!(message.contains("Q4_0, Q4_1, Q8_0"), "{message}");

    // A type id candle cannot even read (IQ2_XXS = 16) fails at open.
    let path = one_tensor_file(dir.path(), 16, vec![256], vec![0; 66]);
    let message = error_of(GgufFile::open(&path));
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("GGML type id 16"), "{message}");
}

#[test]
fn a_truncated_file_is_refused_at_open_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    let tiny = tiny_llama();
    write_gguf(&path, &tiny.metadata, &tiny.tensors);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let message = error_of(gguf::load_llama(&path));
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(
        message.contains("truncated: tensor output_norm.weight"),
        "{message}"
    );

    // Cut inside the header (the vocabulary): still an error, not a panic.
    std::fs::write(&path, &bytes[..2000]).unwrap();
    let message = error_of(gguf::load_llama(&path));
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("GGUF header"), "{message}");
}

#[test]
fn a_file_that_is_not_gguf_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, b"{\"not\": \"gguf\"}").unwrap();
    let message = error_of(gguf::load_llama(&path));
    assert!(message.contains("not a GGUF file"), "{message}");
    std::fs::write(&path, b"").unwrap();
    assert!(error_of(gguf::load_llama(&path)).contains("not a GGUF file"));
    let missing = dir.path().join("absent.gguf");
    assert!(error_of(gguf::load_llama(&missing)).contains("absent.gguf"));
}

#[test]
fn other_architectures_and_unknown_tensors_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut tiny = tiny_llama();
    tiny.metadata[0].1 = Meta::Str("gpt2".into());
    let message = error_of(gguf::load_llama(&write_tiny(dir.path(), &tiny)));
    assert!(
        message.contains("general.architecture is \"gpt2\""),
        "{message}"
    );

    let mut tiny = tiny_llama();
    tiny.tensors
        .push(f32_tensor("rope_freqs.weight", vec![2], &[1.0, 1.0]));
    let message = error_of(gguf::load_llama(&write_tiny(dir.path(), &tiny)));
    assert!(
        message.contains("tensor rope_freqs.weight has no LlamaForCausalLM counterpart"),
        "{message}"
    );

    let mut tiny = tiny_llama();
    tiny.tensors.retain(|t| t.name != "blk.0.ffn_up.weight");
    let message = error_of(gguf::load_llama(&write_tiny(dir.path(), &tiny)));
    assert!(
        message.contains("model.layers.0.mlp.up_proj.weight"),
        "{message}"
    );

    let mut tiny = tiny_llama();
    tiny.metadata
        .retain(|(key, _)| *key != "llama.feed_forward_length");
    let message = error_of(gguf::load_llama(&write_tiny(dir.path(), &tiny)));
    assert!(
        message.contains("metadata key llama.feed_forward_length is missing"),
        "{message}"
    );

    let mut tiny = tiny_llama();
    for (key, value) in tiny.metadata.iter_mut() {
        if *key == "tokenizer.ggml.model" {
            *value = Meta::Str("llama".into());
        }
    }
    let message = error_of(gguf::load_llama(&write_tiny(dir.path(), &tiny)));
    assert!(
        message.contains("tokenizer.ggml.model is \"llama\""),
        "{message}"
    );
}
