//! `alpaca generate`, `alpaca chat` and `alpaca self-instruct`: text from a LLaMA-family
//! decoder, streamed to the terminal as it is generated.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use alpaca_data::instructions::{Message, Role};
use alpaca_kernels::Precision;
use alpaca_train::generate::{
    chat_prompt, default_template, format_prompt, load_for_generation, FinishReason, Generation,
    GenerationOptions, Generator, Prompt, PromptTemplate, Sampling,
};
use alpaca_train::self_instruct::{read_seed_tasks, SelfInstructOptions};
use anyhow::{bail, Context, Result};
use clap::Args;

/// The model, with the LoRA adapter of `adapter` attached when given.
fn load_with_adapter(
    model: &str,
    adapter: Option<&std::path::Path>,
    precision: Precision,
) -> Result<(
    alpaca_models::LlamaForCausalLM,
    alpaca_train::generate::GenerationTokenizer,
)> {
    let (mut model, tokenizer) = load_for_generation(model)?;
    if let Some(adapter) = adapter {
        alpaca_models::lora::load_adapter(&mut model, adapter)?;
    }
    // Generation trains nothing: every base weight is frozen and prepared once (in bf16,
    // packed), and adapters run fused with their base.
    model.freeze();
    model.pack_frozen(precision)?;
    Ok((model, tokenizer))
}

/// How the next token is chosen (shared by `generate` and `chat`).
#[derive(Args)]
pub struct SamplingArgs {
    /// Most tokens to generate [default: generate 128, chat 512].
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// 0 is greedy decoding; above 0 samples from the softmax of logits / temperature.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Sample only among the k most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Sample only among the most likely tokens whose probabilities sum to p (nucleus).
    #[arg(long)]
    top_p: Option<f32>,
    /// Above 1 discourages tokens already in the prompt or output (transformers' formula).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Seed of the sampling generator (the same seed repeats the same text).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Stop when the output contains this text (cut before it); may be given several times.
    #[arg(long)]
    stop: Vec<String>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// fp32 (default) or bf16: the model's weights converted to bf16 once and its products
    /// run with bf16 operands and f32 sums (half the memory read per token).
    #[arg(long, default_value = "fp32")]
    precision: String,
}

impl SamplingArgs {
    fn options(&self, default_max_new_tokens: usize) -> Result<GenerationOptions> {
        let sampling = Sampling {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
        };
        sampling.validate()?;
        let max_new_tokens = self.max_new_tokens.unwrap_or(default_max_new_tokens);
        if max_new_tokens == 0 {
            bail!("--max-new-tokens must be at least 1");
        }
        Ok(GenerationOptions {
            max_new_tokens,
            sampling,
            stop_strings: self.stop.clone(),
            ignore_eos: false,
        })
    }
}

#[derive(Args)]
pub struct GenerateArgs {
    /// LLaMA-family model: a directory in HF layout (e.g. from `alpaca convert gguf`) or a hub
    /// id in the local cache.
    #[arg(long)]
    model: String,
    /// A LoRA adapter (PEFT layout, e.g. runs/<name>/best of `train instruct`) applied to the
    /// model without merging.
    #[arg(long)]
    adapter: Option<std::path::PathBuf>,
    /// alpaca (Stanford's instruction prompt), chat (the model's chat template) or none (the
    /// text as is) [default: chat when the model has a chat template, else none].
    #[arg(long)]
    template: Option<String>,
    /// With --template alpaca: the input that goes with the instruction.
    #[arg(long)]
    input: Option<String>,
    /// With --template chat: a system message.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Print the prompt length, times and tokens/s to stderr.
    #[arg(long)]
    timing: bool,
    /// Do not stop at end-of-sequence tokens (for timing exactly --max-new-tokens tokens).
    #[arg(long)]
    ignore_eos: bool,
    /// The prompt or instruction ("-" reads it from stdin).
    prompt: String,
}

/// Writes a piece of generated text to stdout at once.
fn print_piece(piece: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(piece.as_bytes());
    let _ = out.flush();
}

fn describe_finish(finish: &FinishReason) -> String {
    match finish {
        FinishReason::EndOfSequence => "end-of-sequence token".into(),
        FinishReason::StopString(stop) => format!("stop string {stop:?}"),
        FinishReason::MaxNewTokens => "--max-new-tokens reached".into(),
        FinishReason::ContextFull => "the model's context length reached".into(),
    }
}

fn print_timing(generation: &Generation) {
    let decoded = generation.token_ids.len().saturating_sub(1);
    eprintln!(
        "prompt {} tokens ({} reused from the cache) in {:.3} s; {} new tokens in {:.3} s: \
         {:.2} tokens/s overall, {:.2} tokens/s after the first; ended by {}",
        generation.prompt_tokens,
        generation.reused_tokens,
        generation.prefill_seconds,
        generation.token_ids.len(),
        generation.prefill_seconds + generation.decode_seconds,
        generation.tokens_per_second(),
        decoded as f64 / generation.decode_seconds.max(1e-12),
        describe_finish(&generation.finish)
    );
}

pub fn generate(args: GenerateArgs) -> Result<()> {
    let template = args
        .template
        .as_deref()
        .map(str::parse::<PromptTemplate>)
        .transpose()?;
    let mut options = args.sampling.options(128)?;
    options.ignore_eos = args.ignore_eos;
    let prompt = if args.prompt == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .context("cannot read the prompt from stdin")?;
        text
    } else {
        args.prompt.clone()
    };
    if prompt.trim().is_empty() {
        bail!("the prompt is empty; give the text to continue or the instruction to follow");
    }
    alpaca_train::threads::set_threads(args.sampling.threads);
    let precision = alpaca_train::precision::apply(&args.sampling.precision)?;
    let (model, tokenizer) = load_with_adapter(&args.model, args.adapter.as_deref(), precision)?;
    let template = template.unwrap_or_else(|| default_template(&tokenizer));
    let prompt = format_prompt(
        template,
        &tokenizer,
        &prompt,
        args.input.as_deref(),
        args.system.as_deref(),
    )?;
    let mut generator = Generator::new(model, tokenizer);
    let generation = generator.generate(&prompt, &options, print_piece)?;
    print_piece("\n");
    if args.timing {
        print_timing(&generation);
    }
    Ok(())
}

#[derive(Args)]
pub struct ChatArgs {
    /// LLaMA-family model with a chat template: a directory in HF layout or a hub id.
    #[arg(long)]
    model: String,
    /// A LoRA adapter (PEFT layout, e.g. runs/<name>/best of `train instruct`) applied to the
    /// model without merging.
    #[arg(long)]
    adapter: Option<std::path::PathBuf>,
    /// A system message put before the conversation.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Print times and tokens/s to stderr after each answer.
    #[arg(long)]
    timing: bool,
}

/// The interactive loop: one line per user turn; `/reset` forgets the conversation, `/exit`
/// or end of input ends it. Prompts go to stderr so that stdout holds only the answers.
pub fn chat(args: ChatArgs) -> Result<()> {
    let options = args.sampling.options(512)?;
    alpaca_train::threads::set_threads(args.sampling.threads);
    let precision = alpaca_train::precision::apply(&args.sampling.precision)?;
    let (model, tokenizer) = load_with_adapter(&args.model, args.adapter.as_deref(), precision)?;
    if tokenizer.chat_template.is_none() {
        bail!(
            "{} has no chat template (tokenizer_config.json \"chat_template\" or \
             chat_template.jinja); use `alpaca generate --template alpaca|none` instead",
            args.model
        );
    }
    let mut generator = Generator::new(model, tokenizer);
    let start: Vec<Message> = args
        .system
        .iter()
        .map(|system| Message {
            role: Role::System,
            content: system.clone(),
        })
        .collect();
    let mut history = start.clone();
    eprintln!(
        "chat with {} — /reset starts over, /exit (or Ctrl-D) ends",
        args.model
    );
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        eprint!("> ");
        let _ = std::io::stderr().flush();
        let Some(line) = lines.next() else { break };
        let line = line.context("cannot read from stdin")?;
        let text = line.trim();
        match text {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history = start.clone();
                generator.reset();
                eprintln!("(conversation cleared)");
                continue;
            }
            _ if text.starts_with('/') => {
                eprintln!("unknown command {text:?}; the commands are /reset and /exit");
                continue;
            }
            _ => {}
        }
        history.push(Message {
            role: Role::User,
            content: text.to_string(),
        });
        let prompt: Prompt = chat_prompt(generator.tokenizer(), &history)?;
        let generation = generator.generate(&prompt, &options, print_piece)?;
        print_piece("\n");
        if args.timing {
            print_timing(&generation);
        }
        history.push(Message {
            role: Role::Assistant,
            content: generation.text.trim().to_string(),
        });
    }
    Ok(())
}

#[derive(Args)]
pub struct SelfInstructArgs {
    /// LLaMA-family model: a directory in HF layout or a hub id.
    #[arg(long)]
    model: String,
    /// A LoRA adapter (PEFT layout, e.g. runs/<name>/best of `train instruct`) applied to the
    /// model without merging.
    #[arg(long)]
    adapter: Option<std::path::PathBuf>,
    /// Seed tasks: Stanford's seed_tasks.jsonl, or Alpaca JSON/JSONL or CSV instruction data.
    #[arg(long)]
    seed_tasks: PathBuf,
    /// Tasks to keep.
    #[arg(long)]
    num: usize,
    /// Where the kept tasks are written, as Alpaca JSON (instruction, input, output).
    #[arg(long)]
    output: PathBuf,
    /// Seed tasks shown in each prompt.
    #[arg(long, default_value_t = 3)]
    prompt_tasks: usize,
    /// Give up after this many model calls [default: 10 × --num].
    #[arg(long)]
    max_requests: Option<usize>,
    /// Drop a task whose ROUGE-L F1 against any task in the pool exceeds this.
    #[arg(long, default_value_t = 0.7)]
    similarity_threshold: f64,
    /// Most tokens per model call.
    #[arg(long, default_value_t = 512)]
    max_new_tokens: usize,
    /// Sampling temperature (Stanford's 1.0).
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Nucleus sampling (Stanford's 1.0: off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Seed of the task sampling and of token sampling.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// fp32 (default) or bf16: the model's weights converted to bf16 once and its products
    /// run with bf16 operands and f32 sums (half the memory read per token).
    #[arg(long, default_value = "fp32")]
    precision: String,
    /// Print each raw completion to stderr (to see why tasks are dropped).
    #[arg(long)]
    show_completions: bool,
}

pub fn self_instruct(args: SelfInstructArgs) -> Result<()> {
    if args.num == 0 {
        bail!("--num must be at least 1");
    }
    if args.prompt_tasks == 0 {
        bail!("--prompt-tasks must be at least 1");
    }
    if args.max_new_tokens == 0 {
        bail!("--max-new-tokens must be at least 1");
    }
    if !(0.0..=1.0).contains(&args.similarity_threshold) {
        bail!(
            "--similarity-threshold is a ROUGE-L F1 in [0, 1], got {}",
            args.similarity_threshold
        );
    }
    let sampling = Sampling {
        temperature: args.temperature,
        top_k: None,
        top_p: Some(args.top_p),
        repetition_penalty: 1.0,
        seed: args.seed,
    };
    sampling.validate()?;
    let seeds = read_seed_tasks(&args.seed_tasks)?;
    let options = SelfInstructOptions {
        num: args.num,
        prompt_tasks: args.prompt_tasks,
        similarity_threshold: args.similarity_threshold,
        max_requests: args.max_requests.unwrap_or(10 * args.num).max(1),
        seed: args.seed,
    };
    alpaca_train::threads::set_threads(args.threads);
    let precision = alpaca_train::precision::apply(&args.precision)?;
    let (model, tokenizer) = load_with_adapter(&args.model, args.adapter.as_deref(), precision)?;
    let mut generator = Generator::new(model, tokenizer);
    let mut request = 0u64;
    let report = alpaca_train::self_instruct::self_instruct(&seeds, &options, |prompt| {
        request += 1;
        let generation_options = GenerationOptions {
            max_new_tokens: args.max_new_tokens,
            sampling: Sampling {
                // A different draw per request, reproducible from --seed.
                seed: sampling.seed.wrapping_add(request),
                ..sampling.clone()
            },
            // Stanford stops before task 20 (the prompt asks for up to 20 tasks).
            stop_strings: vec!["\n20".into(), "20.".into()],
            ignore_eos: false,
        };
        let generation = generator.generate(&Prompt::raw(prompt), &generation_options, |_| {})?;
        eprintln!(
            "request {request}: {} tokens in {:.1} s, ended by {}",
            generation.token_ids.len(),
            generation.prefill_seconds + generation.decode_seconds,
            describe_finish(&generation.finish)
        );
        if args.show_completions {
            eprintln!("--- completion {request} ---\n{}\n---", generation.text);
        }
        Ok(generation.text)
    })?;
    alpaca_track::write_json_atomic(&args.output, &report.kept)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    println!(
        "self-instruct: {} model calls, {} tasks parsed, {} kept (asked for {}), written to {}",
        report.requests,
        report.parsed,
        report.kept.len(),
        args.num,
        args.output.display()
    );
    if report.dropped.is_empty() {
        println!("dropped: none");
    } else {
        println!("dropped:");
        for (reason, count) in &report.dropped {
            println!("  {count:>5}  {reason}");
        }
    }
    if report.kept.len() < args.num {
        eprintln!(
            "note: stopped after --max-requests {} calls with {} of {} tasks kept",
            options.max_requests,
            report.kept.len(),
            args.num
        );
    }
    Ok(())
}
