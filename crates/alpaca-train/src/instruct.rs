//! Supervised fine-tuning of a LLaMA-family decoder on instruction data (Stanford Alpaca's
//! recipe; alpaca-lora's with LoRA, the default): conversations laid out by a template, the
//! loss on response tokens only, a held-out loss each epoch, the best checkpoint (an adapter,
//! or full weights with `--full`), and a report with held-out loss/perplexity before and after
//! and the responses of the base and the tuned model to a few fixed prompts.
//!
//! The causal-LM step is shared with `train clm` ([`crate::causal`]).

use std::path::Path;

use alpaca_data::instructions::{read_instructions, Conversation, CsvLayout, Role, Skipped};
use alpaca_data::prompt::{format_conversation, tokenize_pieces, SpecialTokens, Template};
use alpaca_models::lora::{attach_lora, load_adapter};
use alpaca_models::{LlamaForCausalLM, ModelDir};
use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use tokenizers::Tokenizer;

use crate::causal::{
    chat_template, evaluate, pack_examples, train_causal, CausalExample, CausalRun, CausalSetup,
    LoopSettings, LossEvaluation, Trainable,
};
use crate::config::InstructConfig;
use crate::generate::{GenerationOptions, GenerationTokenizer, Generator};

/// What was read, and what could not be used.
#[derive(Debug, Clone, Serialize)]
pub struct InstructData {
    pub train_examples: usize,
    pub held_out_examples: usize,
    /// Records skipped when reading (source and reason): the first 19 and the last.
    pub skipped: Vec<Skipped>,
    pub skipped_total: usize,
    /// Examples longer than max_len, cut at the end.
    pub truncated: usize,
    /// Examples with no response token left after cutting, dropped.
    pub dropped_without_response: usize,
    pub template: String,
}

/// One prompt's response before and after tuning.
#[derive(Debug, Clone, Serialize)]
pub struct ResponsePair {
    pub prompt: String,
    pub base: String,
    pub tuned: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct InstructReport {
    pub run: CausalRun,
    pub data: InstructData,
    pub responses: Vec<ResponsePair>,
}

impl InstructReport {
    pub fn to_markdown(&self) -> String {
        let mut md = self.run.to_markdown("Instruction-tuning report");
        let d = &self.data;
        md.push_str(&format!(
            "\n## Data\n\ntemplate {}; {} training and {} held-out examples; {} records \
             skipped; {} examples cut to max_len; {} dropped (no response token left)\n",
            d.template,
            d.train_examples,
            d.held_out_examples,
            d.skipped_total,
            d.truncated,
            d.dropped_without_response
        ));
        for skipped in d.skipped.iter().take(5) {
            md.push_str(&format!(
                "- skipped {}: {}\n",
                skipped.source, skipped.reason
            ));
        }
        if !self.responses.is_empty() {
            md.push_str(
                "\n## Responses (greedy)\n\n| prompt | base model | tuned model |\n|---|---|---|\n",
            );
            let cell = |text: &str| text.replace('|', "\\|").replace('\n', "<br>");
            for pair in &self.responses {
                md.push_str(&format!(
                    "| {} | {} | {} |\n",
                    cell(&pair.prompt),
                    cell(&pair.base),
                    cell(&pair.tuned)
                ));
            }
        }
        md
    }
}

fn template(config: &InstructConfig, tokenizer_dir: &Path) -> Result<Template> {
    match config.template.as_str() {
        "alpaca" => Ok(Template::Alpaca),
        "chat" => Ok(Template::Chat(chat_template(tokenizer_dir)?.with_context(
            || {
                format!(
                    "{}: the model has no chat template (tokenizer_config.json chat_template); \
                     use --template alpaca",
                    tokenizer_dir.display()
                )
            },
        )?)),
        other => bail!("unknown template {other:?}: expected alpaca or chat"),
    }
}

fn read_conversations(
    path: &Path,
    config: &InstructConfig,
) -> Result<(Vec<Conversation>, Vec<Skipped>)> {
    let layout = CsvLayout {
        instruction: config.csv_instruction.clone(),
    };
    let data = read_instructions(path, &layout)?;
    if !data.skipped.is_empty() {
        eprintln!(
            "{}: {} record(s) skipped, {} read; first: {}: {}",
            path.display(),
            data.skipped.len(),
            data.conversations.len(),
            data.skipped[0].source,
            data.skipped[0].reason
        );
        if config.on_error == "fail" {
            bail!(
                "{}: {} (--on-error fail; --on-error skip loads the {} usable records)",
                data.skipped[0].source,
                data.skipped[0].reason,
                data.conversations.len()
            );
        }
    }
    Ok((data.conversations, data.skipped))
}

/// Tokenizes conversations; examples cut so short that no response token is left are dropped.
fn encode(
    conversations: &[Conversation],
    template: &Template,
    tokenizer: &Tokenizer,
    special: SpecialTokens,
    config: &InstructConfig,
    counts: &mut (usize, usize),
) -> Result<Vec<CausalExample>> {
    let mut examples = Vec::with_capacity(conversations.len());
    for conversation in conversations {
        let pieces = format_conversation(conversation, template)?;
        let example = tokenize_pieces(
            tokenizer,
            &pieces,
            special,
            config.max_len,
            config.train_on_inputs,
        )?;
        counts.0 += example.truncated as usize;
        // Position i predicts labels[i + 1]: the first label never counts.
        if example.labels.iter().skip(1).all(|&l| l < 0) {
            counts.1 += 1;
            continue;
        }
        examples.push(CausalExample {
            input_ids: example.input_ids,
            labels: example.labels,
        });
    }
    Ok(examples)
}

/// How a conversation's first prompt is shown in the report, and the model input that asks
/// for its response (the template's text up to where the response starts).
fn first_prompt(conversation: &Conversation, template: &Template) -> Result<(String, String)> {
    let first_user = conversation
        .messages
        .iter()
        .position(|m| m.role == Role::User)
        .context("a conversation without a user turn")?;
    let shown = match &conversation.alpaca {
        Some((instruction, input)) if !input.is_empty() => format!("{instruction} ({input})"),
        Some((instruction, _)) => instruction.clone(),
        None => conversation.messages[first_user].content.clone(),
    };
    let prompt = match template {
        Template::Chat(chat) => chat.render(&conversation.messages[..=first_user], true)?,
        Template::Alpaca => {
            let first_exchange = Conversation {
                source: conversation.source.clone(),
                messages: conversation.messages[..=first_user].to_vec(),
                alpaca: conversation.alpaca.clone(),
            };
            format_conversation(&first_exchange, template)?
                .iter()
                .take_while(|piece| !piece.trained)
                .map(|piece| piece.text.as_str())
                .collect()
        }
    };
    Ok((shown, prompt))
}

/// Fine-tunes, evaluates and writes the run directory; returns the report (also printed by
/// the CLI).
pub fn train(config: &InstructConfig) -> Result<InstructReport> {
    let threads = crate::threads::set_threads(config.threads);
    if !matches!(config.on_error.as_str(), "skip" | "fail") {
        bail!("--on-error {:?}: expected skip or fail", config.on_error);
    }
    let settings = LoopSettings::of(config)?;
    // Checked before the data and the model load.
    crate::precision::parse(&settings.precision)?;
    let lora = if config.full {
        None
    } else {
        Some(settings.lora()?)
    };
    if !(0.0..1.0).contains(&config.validation_split) {
        bail!(
            "validation_split must be in [0, 1), not {}",
            config.validation_split
        );
    }
    crate::resume::check_run_dir(&config.output, config.resume, config.overwrite)?;

    // Data first, so that bad input fails before the model loads.
    let (mut train_conversations, mut skipped) = read_conversations(&config.data, config)?;
    let mut held_out_conversations = match &config.dev {
        Some(dev) => {
            let (conversations, dev_skipped) = read_conversations(dev, config)?;
            skipped.extend(dev_skipped);
            conversations
        }
        None if config.validation_split > 0.0 => {
            let held = ((train_conversations.len() as f64 * config.validation_split).ceil()
                as usize)
                .max(1);
            if held >= train_conversations.len() {
                bail!(
                    "{}: {} example(s): too few to hold out {:.0}%; pass --dev FILE or \
                     --validation-split 0",
                    config.data.display(),
                    train_conversations.len(),
                    config.validation_split * 100.0
                );
            }
            train_conversations.shuffle(&mut StdRng::seed_from_u64(config.seed));
            train_conversations.split_off(train_conversations.len() - held)
        }
        None => Vec::new(),
    };
    if let Some(limit) = config.max_train_examples {
        train_conversations.truncate(limit);
    }
    if let Some(limit) = config.max_eval_examples {
        held_out_conversations.truncate(limit);
    }

    let setup = CausalSetup::open(&config.model, config.seed)?;
    let template = template(config, &setup.tokenizer_dir)?;
    let special = setup.special_tokens();
    let mut counts = (0, 0);
    let mut train_examples = encode(
        &train_conversations,
        &template,
        &setup.tokenizer,
        special,
        config,
        &mut counts,
    )?;
    let held_out_examples = encode(
        &held_out_conversations,
        &template,
        &setup.tokenizer,
        special,
        config,
        &mut counts,
    )?;
    if train_examples.is_empty() {
        bail!(
            "{}: no example keeps a response token within max_len {}",
            config.data.display(),
            config.max_len
        );
    }
    if config.packing {
        train_examples = pack_examples(train_examples, config.max_len);
    }
    let data = InstructData {
        train_examples: train_examples.len(),
        held_out_examples: held_out_examples.len(),
        skipped_total: skipped.len(),
        // The first 19 and the last: a truncated file's cut is the last entry.
        skipped: if skipped.len() > 20 {
            let last = skipped[skipped.len() - 1].clone();
            skipped.into_iter().take(19).chain([last]).collect()
        } else {
            skipped
        },
        truncated: counts.0,
        dropped_without_response: counts.1,
        template: config.template.clone(),
    };
    eprintln!(
        "data: {} training, {} held-out examples ({} cut to {} tokens, {} dropped without a \
         response token, {} records skipped)",
        data.train_examples,
        data.held_out_examples,
        data.truncated,
        config.max_len,
        data.dropped_without_response,
        data.skipped_total
    );

    // Report prompts: a file's lines, or the first three held-out instructions.
    let prompts: Vec<(String, String)> = match &config.report_prompts {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("{}", path.display()))?
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                let conversation = Conversation {
                    source: path.display().to_string(),
                    messages: vec![alpaca_data::instructions::Message {
                        role: Role::User,
                        content: line.to_string(),
                    }],
                    alpaca: Some((line.to_string(), String::new())),
                };
                first_prompt(&conversation, &template)
            })
            .collect::<Result<_>>()?,
        None => {
            // Data sets repeat prompts with several answers: show three different ones.
            let mut prompts: Vec<(String, String)> = Vec::new();
            for conversation in &held_out_conversations {
                let prompt = first_prompt(conversation, &template)?;
                if !prompts.iter().any(|(_, p)| *p == prompt.1) {
                    prompts.push(prompt);
                }
                if prompts.len() == 3 {
                    break;
                }
            }
            prompts
        }
    };

    // Greedy answers, the prompt tokenized as in training (BOS when the model wants it).
    let options = GenerationOptions {
        max_new_tokens: config.report_max_new_tokens,
        ..GenerationOptions::default()
    };
    let respond = |generator: &mut Generator, prompt: &str| -> Result<String> {
        let mut ids: Vec<u32> = special.bos.into_iter().collect();
        ids.extend(generator.tokenizer().encode(prompt, false)?);
        Ok(generator
            .generate_from_ids(&ids, &options, |_| {})?
            .text
            .trim()
            .to_string())
    };
    let model = setup.load_model()?;
    let generation_tokenizer = GenerationTokenizer::from_dir(&setup.tokenizer_dir, model.config())?;
    let mut generator = Generator::new(model, generation_tokenizer);
    let base_responses: Vec<String> = prompts
        .iter()
        .map(|(_, prompt)| respond(&mut generator, prompt))
        .collect::<Result<_>>()?;
    let (mut model, generation_tokenizer) = generator.into_parts();

    let trainable = match lora {
        None => Trainable::Full,
        Some(lora) => {
            let adapters = attach_lora(&mut model, &lora, config.seed)?;
            Trainable::Lora(lora, adapters)
        }
    };
    let mut run = train_causal(
        &settings,
        config,
        threads,
        &setup,
        &mut model,
        &trainable,
        &train_examples,
        &held_out_examples,
    )?;
    drop(model);

    // After: the best checkpoint from disk (this also proves it loads).
    let best = config.output.join("best");
    let tuned = match &trainable {
        Trainable::Full => {
            let dir = ModelDir::open(best.to_str().context("run path is not UTF-8")?)?;
            LlamaForCausalLM::load(&dir, config.seed)?.0
        }
        Trainable::Lora(..) => {
            let mut tuned = setup.load_model()?;
            load_adapter(&mut tuned, &best)?;
            // Scored with the products the run trained and evaluated with.
            tuned.pack_frozen(alpaca_kernels::linear::precision())?;
            tuned
        }
    };
    if !held_out_examples.is_empty() {
        let (loss, _) = evaluate(
            &tuned,
            &held_out_examples,
            config.eval_batch_size,
            setup.pad_id,
        )?;
        run.after = Some(LossEvaluation::of(loss));
    }
    let mut generator = Generator::new(tuned, generation_tokenizer);
    let mut responses = Vec::new();
    for ((shown, prompt), base) in prompts.iter().zip(base_responses) {
        responses.push(ResponsePair {
            prompt: shown.clone(),
            base,
            tuned: respond(&mut generator, prompt)?,
        });
    }
    let report = InstructReport {
        run,
        data,
        responses,
    };
    alpaca_track::write_json_atomic(&config.output.join("report.json"), &report)?;
    alpaca_track::write_atomic(
        &config.output.join("report.md"),
        report.to_markdown().as_bytes(),
    )?;
    Ok(report)
}
