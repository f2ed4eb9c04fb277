//! `alpaca generate`, `chat` and `self-instruct` through the real binary, on a tiny random
//! LLaMA saved in HF layout: bad input ends with exit 1 and a message that names the problem
//! (never a panic); good input streams text and writes files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use alpaca_models::{LlamaConfig, LlamaForCausalLM};

/// A byte-level BPE tokenizer.json whose vocabulary is the 256 byte symbols.
fn byte_tokenizer_json() -> String {
    // GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to 256 + n.
    let mut symbols = Vec::new();
    let mut next = 256u32;
    for byte in 0u32..256 {
        let printable = (33..=126).contains(&byte)
            || (161..=172).contains(&byte)
            || (174..=255).contains(&byte);
        if printable {
            symbols.push(char::from_u32(byte).unwrap());
        } else {
            symbols.push(char::from_u32(next).unwrap());
            next += 1;
        }
    }
    let vocab: serde_json::Map<String, serde_json::Value> = symbols
        .iter()
        .enumerate()
        .map(|(index, c)| (c.to_string(), index.into()))
        .collect();
    serde_json::json!({
        "version": "1.0",
        "model": {"type": "BPE", "vocab": vocab, "merges": []},
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                          "use_regex": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                    "use_regex": true},
    })
    .to_string()
}

/// Saves a tiny random LLaMA (vocabulary 256, end token 0) with the byte tokenizer, and a
/// chat template when `chat` is set.
fn tiny_model(dir: &Path, chat: bool) -> PathBuf {
    let tokenizer_dir = dir.join("tokenizer");
    std::fs::create_dir_all(&tokenizer_dir).unwrap();
    std::fs::write(tokenizer_dir.join("tokenizer.json"), byte_tokenizer_json()).unwrap();
    if chat {
        let config = serde_json::json!({
            "chat_template": "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}\
                              {% if add_generation_prompt %}<assistant>{% endif %}",
            "eos_token": "\u{0100}",
        });
        std::fs::write(
            tokenizer_dir.join("tokenizer_config.json"),
            config.to_string(),
        )
        .unwrap();
    }
    let config: LlamaConfig = serde_json::from_value(serde_json::json!({
        "model_type": "llama",
        "vocab_size": 256,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "tie_word_embeddings": true,
        "eos_token_id": 0,
    }))
    .unwrap();
    let model = LlamaForCausalLM::new_random(config, 3).unwrap();
    let target = dir.join(if chat { "tiny-chat" } else { "tiny" });
    model.save(&target, &tokenizer_dir).unwrap();
    target
}

fn run(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_alpaca"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// Runs `alpaca` and returns stderr, asserting a clean failure.
fn fails(args: &[&str]) -> String {
    let output = run(args, "");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(1),
        "expected a clean failure of {args:?}:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn succeeds(args: &[&str], stdin: &str) -> (String, String) {
    let output = run(args, stdin);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{args:?} failed:\n{stderr}");
    (stdout, stderr)
}

#[test]
fn bad_generate_input_is_refused_with_what_was_expected() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path(), false);
    let model = model.to_str().unwrap();
    let error = fails(&["generate", "--model", model, "--template", "jinja", "Hi"]);
    assert!(
        error.contains("unknown template \"jinja\"") && error.contains("alpaca, chat or none"),
        "{error}"
    );
    let error = fails(&["generate", "--model", model, "   "]);
    assert!(error.contains("the prompt is empty"), "{error}");
    let missing = dir.path().join("no-such-model");
    let error = fails(&["generate", "--model", missing.to_str().unwrap(), "Hi"]);
    assert!(error.contains("no-such-model"), "{error}");
    let error = fails(&["generate", "--model", model, "--template", "chat", "Hi"]);
    assert!(error.contains("no chat template"), "{error}");
    let error = fails(&["generate", "--model", model, "--input", "x", "Hi"]);
    assert!(error.contains("--template alpaca"), "{error}");
    let error = fails(&["generate", "--model", model, "--temperature=-1", "Hi"]);
    assert!(error.contains("--temperature"), "{error}");
    let error = fails(&["generate", "--model", model, "--top-p", "0", "Hi"]);
    assert!(error.contains("--top-p"), "{error}");
    let error = fails(&["chat", "--model", model]);
    assert!(error.contains("no chat template"), "{error}");

    // A BERT checkpoint is not a decoder.
    let bert = dir.path().join("bert");
    std::fs::create_dir_all(&bert).unwrap();
    std::fs::write(
        bert.join("config.json"),
        r#"{"model_type": "bert", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 2}"#,
    )
    .unwrap();
    std::fs::copy(
        Path::new(model).join("model.safetensors"),
        bert.join("model.safetensors"),
    )
    .unwrap();
    let error = fails(&["generate", "--model", bert.to_str().unwrap(), "Hi"]);
    assert!(
        error.contains("LLaMA-family") && error.contains("bert"),
        "{error}"
    );
}

#[test]
fn generate_streams_reproducible_text() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path(), false);
    let model = model.to_str().unwrap();
    let args = [
        "generate",
        "--model",
        model,
        "--max-new-tokens",
        "12",
        "--temperature",
        "0.9",
        "--top-k",
        "50",
        "--seed",
        "4",
        "--threads",
        "1",
        "--timing",
        "Hello",
    ];
    let (first, stderr) = succeeds(&args, "");
    assert!(stderr.contains("tokens/s"), "{stderr}");
    let (again, _) = succeeds(&args, "");
    assert_eq!(first, again);
    // The prompt may come from stdin.
    let (from_stdin, _) = succeeds(
        &[
            "generate",
            "--model",
            model,
            "--template",
            "alpaca",
            "--max-new-tokens",
            "3",
            "-",
        ],
        "Name a colour.",
    );
    assert!(from_stdin.ends_with('\n'));
}

#[test]
fn chat_keeps_a_conversation_until_exit() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path(), true);
    let (stdout, stderr) = succeeds(
        &[
            "chat",
            "--model",
            model.to_str().unwrap(),
            "--system",
            "Be brief.",
            "--max-new-tokens",
            "4",
            "--threads",
            "1",
            "--timing",
        ],
        "Hello\nAnd again\n/reset\n/nonsense\nOnce more\n/exit\nnot read\n",
    );
    // Three answers (the random model's text may hold new lines, so the timing lines on
    // stderr are counted).
    assert_eq!(stderr.matches("ended by").count(), 3, "{stderr}");
    // The second turn reused the first turn's cache; the turn after /reset did not.
    let reused: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("reused"))
        .collect();
    assert!(!reused[1].contains("(0 reused"), "{stderr}");
    assert!(reused[2].contains("(0 reused"), "{stderr}");
    assert!(stderr.contains("conversation cleared"), "{stderr}");
    assert!(stderr.contains("unknown command \"/nonsense\""), "{stderr}");
    assert!(!stdout.is_empty());
}

#[test]
fn self_instruct_writes_alpaca_json_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path(), false);
    let seeds = dir.path().join("seeds.json");
    std::fs::write(
        &seeds,
        r#"[{"instruction": "Give three tips for staying healthy.", "input": "", "output": "Sleep."},
            {"instruction": "Translate the sentence into French.", "input": "I like tea.", "output": "J'aime le thé."},
            {"instruction": "Name a famous painter from Spain.", "input": "", "output": "Goya."}]"#,
    )
    .unwrap();
    let output = dir.path().join("generated.json");
    let (stdout, stderr) = succeeds(
        &[
            "self-instruct",
            "--model",
            model.to_str().unwrap(),
            "--seed-tasks",
            seeds.to_str().unwrap(),
            "--num",
            "2",
            "--max-requests",
            "2",
            "--max-new-tokens",
            "8",
            "--threads",
            "1",
            "--output",
            output.to_str().unwrap(),
        ],
        "",
    );
    assert!(stdout.contains("2 model calls"), "{stdout}\n{stderr}");
    assert!(stderr.contains("request 2:"), "{stderr}");
    // A random model writes no parsable task: an empty Alpaca array, written all the same.
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&output).unwrap()).unwrap();
    assert!(written.as_array().is_some(), "{written}");

    let error = fails(&[
        "self-instruct",
        "--model",
        model.to_str().unwrap(),
        "--seed-tasks",
        dir.path().join("missing.jsonl").to_str().unwrap(),
        "--num",
        "1",
        "--output",
        output.to_str().unwrap(),
    ]);
    assert!(error.contains("missing.jsonl"), "{error}");

    // --precision is read (it was once accepted and ignored).
    let error = fails(&[
        "self-instruct",
        "--model",
        model.to_str().unwrap(),
        "--seed-tasks",
        seeds.to_str().unwrap(),
        "--num",
        "1",
        "--precision",
        "fp16",
        "--output",
        output.to_str().unwrap(),
    ]);
    assert!(error.contains("expected fp32 or bf16"), "{error}");
}
