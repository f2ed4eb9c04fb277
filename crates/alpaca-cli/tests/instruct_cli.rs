//! The decoder commands through the real binary, on a tiny random LLaMA the test builds:
//! `train instruct` (LoRA) writes an adapter; `generate --adapter` answers with it; the model
//! `merge-lora` writes answers the same; mistakes are clean errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use alpaca_data::tokenizer_training::{
    save_tokenizer, train_tokenizer, TokenizerKind, TokenizerSpec,
};
use alpaca_models::{LlamaConfig, LlamaForCausalLM};

const PAIRS: [(&str, &str); 4] = [
    ("Name the colour of the sky.", "blue"),
    ("What is two plus two?", "four"),
    ("Say hello in French.", "bonjour"),
    ("Which animal barks?", "a dog"),
];

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_alpaca"))
        .args(args)
        .output()
        .unwrap()
}

fn succeeds(args: &[&str]) -> String {
    let output = run(args);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn fails(args: &[&str]) -> String {
    let output = run(args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn tiny_llama(dir: &Path) -> PathBuf {
    let texts: Vec<String> = PAIRS
        .iter()
        .map(|(i, o)| alpaca_data::prompt::alpaca_prompt(i, "") + o)
        .collect();
    let spec = TokenizerSpec {
        kind: TokenizerKind::Bpe,
        vocab_size: 300,
        min_frequency: 1,
        lowercase: false,
    };
    let tokenizer = train_tokenizer(spec, texts.iter()).unwrap();
    let model_dir = dir.join("tiny-llama");
    save_tokenizer(&tokenizer, spec.kind, false, &model_dir).unwrap();
    let config: LlamaConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": tokenizer.get_vocab_size(true), "hidden_size": 32,
        "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 256, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": true, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1
    }))
    .unwrap();
    LlamaForCausalLM::new_random(config, 5)
        .unwrap()
        .save(&model_dir, &model_dir)
        .unwrap();
    model_dir
}

/// PAIRS as an Alpaca JSON file.
fn write_pairs(dir: &Path) -> PathBuf {
    let items: Vec<serde_json::Value> = PAIRS
        .iter()
        .map(|(i, o)| serde_json::json!({"instruction": i, "input": "", "output": o}))
        .collect();
    let data = dir.join("pairs.json");
    std::fs::write(&data, serde_json::to_string(&items).unwrap()).unwrap();
    data
}

#[test]
fn train_then_generate_with_the_adapter_then_merge() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let model = tiny_llama(root);
    let data = write_pairs(root);
    let run_dir = root.join("run");
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let output = run(&[
        "train",
        "instruct",
        "--model",
        &path(&model),
        "--data",
        &path(&data),
        "--validation-split",
        "0",
        "--lora-targets",
        "all-linear",
        "--epochs",
        "5",
        "--lr",
        "1e-2",
        "--threads",
        "1",
        "--output",
        &path(&run_dir),
    ]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stderr}");
    assert!(stdout.contains("# Instruction-tuning report"), "{stdout}");
    // stderr is not a terminal here: progress comes as plain lines, one per logged step.
    assert!(stderr.contains("epoch 5 step "), "{stderr}");
    assert!(stderr.contains(" loss "), "{stderr}");
    let adapter = run_dir.join("best");
    assert!(adapter.join("adapter_config.json").is_file());

    // 6 greedy tokens for the first instruction, with `extra` flags.
    let generate_output = |model: &Path, adapter: Option<&Path>, extra: &[&str]| {
        let mut args = vec![
            "generate".to_string(),
            "--model".into(),
            path(model),
            "--template".into(),
            "alpaca".into(),
            "--max-new-tokens".into(),
            "6".into(),
            "--ignore-eos".into(),
        ];
        if let Some(adapter) = adapter {
            args.extend(["--adapter".into(), path(adapter)]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        args.push(PAIRS[0].0.into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args)
    };
    let generate = |model: &Path, adapter: Option<&Path>| {
        let output = generate_output(model, adapter, &[]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let adapted = generate(&model, Some(&adapter));
    // The same with the base in bf16 (packed once; the adapter stays f32).
    let output = generate_output(&model, Some(&adapter), &["--precision", "bf16", "--timing"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("6 new tokens"), "{stderr}");
    let merged_dir = root.join("merged");
    succeeds(&[
        "merge-lora",
        "--model",
        &path(&model),
        "--adapter",
        &path(&adapter),
        "--output",
        &path(&merged_dir),
    ]);
    assert_eq!(generate(&merged_dir, None), adapted);

    let stderr = fails(&[
        "merge-lora",
        "--model",
        &path(&model),
        "--adapter",
        &path(&adapter),
        "--output",
        &path(&merged_dir),
    ]);
    assert!(stderr.contains("--overwrite"), "{stderr}");
    let stderr = fails(&[
        "generate",
        "--model",
        &path(&model),
        "--adapter",
        &path(&data),
        "hello",
    ]);
    assert!(stderr.contains("not a LoRA adapter directory"), "{stderr}");
    let stderr = fails(&[
        "train",
        "instruct",
        "--model",
        &path(&model),
        "--data",
        &path(&data),
        "--lora-targets",
        "query,value",
        "--output",
        &path(&root.join("bad")),
    ]);
    assert!(stderr.contains("unknown LoRA target"), "{stderr}");
    assert!(!root.join("bad").exists());
}

#[test]
fn bf16_lora_and_full_training_through_the_binary_and_bad_precisions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let model = tiny_llama(root);
    let data = write_pairs(root);
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let (model, data) = (path(&model), path(&data));
    let train = |precision: &str, extra: &[&str], output: &Path| {
        let output = path(output);
        let mut args = vec![
            "train",
            "instruct",
            "--model",
            &model,
            "--data",
            &data,
            "--precision",
            precision,
            "--validation-split",
            "0",
            "--lora-targets",
            "all-linear",
            "--epochs",
            "4",
            "--lr",
            "1e-2",
            "--threads",
            "1",
            "--output",
            &output,
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    // LoRA (frozen base packed once) and full fine-tuning (every linear layer in bf16).
    for (name, extra) in [("bf16-lora", &[][..]), ("bf16-full", &["--full"][..])] {
        let run_dir = root.join(name);
        let output = train("bf16", extra, &run_dir);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run_dir.join("report.json")).unwrap())
                .unwrap();
        // bf16 where the CPU has AVX512-BF16, else fp32 with a notice.
        let expected = if alpaca_kernels::bf16_gemm::has_avx512_bf16() {
            "bf16"
        } else {
            "fp32"
        };
        assert_eq!(report["run"]["precision"], expected, "{name}: {report}");
        let losses: Vec<f64> = report["run"]["epochs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["train_loss"].as_f64().unwrap())
            .collect();
        assert!(losses.last() < losses.first(), "{name}: {losses:?}");
    }

    let bad = root.join("bad");
    let output = train("fp16", &[], &bad);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("expected fp32 or bf16"), "{stderr}");
    assert!(!bad.exists());
}
