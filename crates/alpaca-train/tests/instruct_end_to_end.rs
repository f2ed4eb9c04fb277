//! Instruction tuning end to end on a tiny random LLaMA the test builds (a byte-level BPE
//! tokenizer trained on the data, a 2-layer decoder saved in HF layout): full fine-tuning
//! overfits 10 Alpaca pairs and then answers every instruction with its output, greedily;
//! LoRA trains only the adapter, saves it in PEFT's layout and reloads it; a ShareGPT file
//! cut short loads up to the cut with `--on-error skip` and stops with `fail`.

use std::path::{Path, PathBuf};

use alpaca_data::tokenizer_training::{
    save_tokenizer, train_tokenizer, TokenizerKind, TokenizerSpec,
};
use alpaca_models::{LlamaConfig, LlamaForCausalLM};
use alpaca_train::config::resolve;
use alpaca_train::InstructConfig;

const PAIRS: [(&str, &str); 10] = [
    ("Name the colour of the sky.", "blue"),
    ("Name the colour of grass.", "green"),
    ("What is two plus two?", "four"),
    ("What is three plus three?", "six"),
    ("Say hello in French.", "bonjour"),
    ("Say thanks in German.", "danke"),
    ("Give the opposite of hot.", "cold"),
    ("Give the opposite of up.", "down"),
    ("Which animal barks?", "a dog"),
    ("Which animal meows?", "a cat"),
];

/// A tokenizer trained on the prompts and answers, and a random 2-layer LLaMA over it.
fn write_tiny_llama(dir: &Path) -> PathBuf {
    let mut texts: Vec<String> = PAIRS
        .iter()
        .map(|(i, o)| alpaca_data::prompt::alpaca_prompt(i, "") + o)
        .collect();
    texts.push(alpaca_data::prompt::alpaca_prompt("x", "y"));
    let spec = TokenizerSpec {
        kind: TokenizerKind::Bpe,
        vocab_size: 400,
        min_frequency: 1,
        lowercase: false,
    };
    let tokenizer = train_tokenizer(spec, texts.iter()).unwrap();
    let model_dir = dir.join("tiny-llama");
    save_tokenizer(&tokenizer, spec.kind, false, &model_dir).unwrap();
    // <s> 0, <pad> 1, </s> 2 (see tokenizer_training).
    let config: LlamaConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": tokenizer.get_vocab_size(true), "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 256, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "tie_word_embeddings": true,
        "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1
    }))
    .unwrap();
    let model = LlamaForCausalLM::new_random(config, 11).unwrap();
    model.save(&model_dir, &model_dir).unwrap();
    model_dir
}

fn write_alpaca_json(dir: &Path) -> PathBuf {
    let items: Vec<serde_json::Value> = PAIRS
        .iter()
        .map(|(i, o)| serde_json::json!({"instruction": i, "input": "", "output": o}))
        .collect();
    let path = dir.join("pairs.json");
    std::fs::write(&path, serde_json::to_string_pretty(&items).unwrap()).unwrap();
    path
}

fn config(toml_text: &str) -> InstructConfig {
    resolve(None, toml_text.parse::<toml::Table>().unwrap()).unwrap()
}

#[test]
fn full_fine_tuning_overfits_ten_pairs_and_reproduces_them() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_tiny_llama(dir.path());
    let data = write_alpaca_json(dir.path());
    let prompts = dir.path().join("prompts.txt");
    let instructions: Vec<&str> = PAIRS.iter().map(|(i, _)| *i).collect();
    std::fs::write(&prompts, instructions.join("\n")).unwrap();
    let config = config(&format!(
        r#"
        model = "{}"
        data = "{}"
        output = "{}/run"
        full = true
        validation_split = 0.0
        epochs = 80
        batch_size = 10
        lr = 3e-3
        warmup_ratio = 0.0
        schedule = "constant"
        threads = 2
        report_prompts = "{}"
        report_max_new_tokens = 6
        "#,
        model.display(),
        data.display(),
        dir.path().display(),
        prompts.display()
    ));
    let report = alpaca_train::instruct::train(&config).unwrap();
    let last = report.run.epochs.last().unwrap().train_loss;
    assert!(last < 0.05, "final train loss {last}");
    assert_eq!(report.responses.len(), 10);
    for (pair, (_, output)) in report.responses.iter().zip(PAIRS) {
        assert_eq!(pair.tuned, output, "{}", pair.prompt);
    }
    // best/ is a full model in HF layout.
    assert!(config.output.join("best/model.safetensors").is_file());
    assert!(config.output.join("best/tokenizer.json").is_file());
}

#[test]
fn lora_trains_only_the_adapter_and_saves_it_for_peft() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_tiny_llama(dir.path());
    let data = write_alpaca_json(dir.path());
    let config = config(&format!(
        r#"
        model = "{}"
        data = "{}"
        output = "{}/run"
        validation_split = 0.2
        lora_targets = "all-linear"
        lora_r = 4
        epochs = 40
        batch_size = 4
        lr = 2e-2
        lora_alpha = 32.0
        threads = 2
        report_max_new_tokens = 4
        "#,
        model.display(),
        data.display(),
        dir.path().display(),
    ));
    let report = alpaca_train::instruct::train(&config).unwrap();
    let first = report.run.epochs.first().unwrap().train_loss;
    let last = report.run.epochs.last().unwrap().train_loss;
    // A frozen random base adapts slowly through rank-4 updates; the loss must still fall.
    assert!(last < first - 0.3, "train loss {first} → {last}");
    // 2 layers × 7 projections × (A + B).
    assert_eq!(
        report.run.trainable_parameters,
        2 * (4 * 64 + 64 * 4)
            + 2 * (4 * 64 + 32 * 4) * 2
            + 2 * (4 * 64 + 64 * 4)
            + 2 * (4 * 64 + 128 * 4) * 2
            + 2 * (4 * 128 + 64 * 4)
    );
    let best = config.output.join("best");
    assert!(best.join("adapter_model.safetensors").is_file());
    assert!(!best.join("model.safetensors").exists());
    let adapter: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(best.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(adapter["peft_type"], "LORA");
    assert_eq!(adapter["r"], 4);
    // The adapter reloaded from best/ onto a fresh base scores what it scored in training.
    let best_epoch = report.run.best_epoch.unwrap();
    let at_best = report.run.epochs[best_epoch - 1]
        .held_out
        .as_ref()
        .unwrap()
        .loss;
    let after = report.run.after.as_ref().unwrap().loss;
    assert!((after - at_best).abs() < 1e-4, "{after} vs {at_best}");
    assert!(after < report.run.before.as_ref().unwrap().loss);
    assert_eq!(report.data.held_out_examples, 2);
}

#[test]
fn a_truncated_sharegpt_file_loads_up_to_the_cut_or_stops() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_tiny_llama(dir.path());
    let mut text = String::from("[");
    for (index, (instruction, output)) in PAIRS.iter().enumerate() {
        text.push_str(&format!(
            "{{\"id\": \"{index}\", \"conversations\": [{{\"from\": \"human\", \"value\": \"{instruction}\"}}, {{\"from\": \"gpt\", \"value\": \"{output}\"}}]}},\n"
        ));
    }
    text.push_str("{\"id\": \"cut\", \"conversations\": [{\"from\": \"human\", \"val");
    let data = dir.path().join("share.json");
    std::fs::write(&data, text).unwrap();
    let base = format!(
        "model = \"{}\"\ndata = \"{}\"\noutput = \"{}/run\"\nmax_steps = 1\nthreads = 1\n\
         validation_split = 0.2\nskip_baseline = true\nreport_max_new_tokens = 1\n",
        model.display(),
        data.display(),
        dir.path().display()
    );
    let report = alpaca_train::instruct::train(&config(&base)).unwrap();
    assert_eq!(
        report.data.train_examples + report.data.held_out_examples,
        10
    );
    assert_eq!(report.data.skipped_total, 1);
    assert!(report.data.skipped[0].reason.contains("truncated"));
    let error = alpaca_train::instruct::train(&config(&format!(
        "{base}on_error = \"fail\"\noverwrite = true\n"
    )))
    .unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains("share.json:11"), "{message}");
    assert!(message.contains("--on-error skip"), "{message}");
    let error = alpaca_train::instruct::train(&config(&format!(
        "{base}template = \"vicuna\"\noverwrite = true\n"
    )))
    .unwrap_err();
    assert!(
        format!("{error:#}").contains("expected alpaca or chat"),
        "{error:#}"
    );
}

#[test]
fn causal_lm_training_on_raw_text_lowers_held_out_loss() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_tiny_llama(dir.path());
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    for document in 0..6 {
        let text: Vec<String> = PAIRS
            .iter()
            .cycle()
            .skip(document)
            .take(10)
            .map(|(i, o)| format!("{i} {o}."))
            .collect();
        std::fs::write(corpus.join(format!("{document}.txt")), text.join(" ")).unwrap();
    }
    let config: alpaca_train::ClmConfig = resolve(
        None,
        format!(
            "model = \"{}\"\ncorpus = [\"{}\"]\noutput = \"{}/run\"\nfull = true\n\
             validation_split = 0.2\nmax_len = 64\nepochs = 30\nbatch_size = 4\nlr = 3e-3\n\
             threads = 2\n",
            model.display(),
            corpus.display(),
            dir.path().display()
        )
        .parse::<toml::Table>()
        .unwrap(),
    )
    .unwrap();
    let run = alpaca_train::clm::train(&config).unwrap();
    let before = run.before.as_ref().unwrap().loss;
    let after = run.after.as_ref().unwrap().loss;
    assert!(after < before * 0.6, "held-out loss {before} → {after}");
    assert!(config.output.join("best/model.safetensors").is_file());
    let markdown = std::fs::read_to_string(config.output.join("report.md")).unwrap();
    assert!(markdown.contains("Causal-LM training report"), "{markdown}");
}
