//! Text generation with a LLaMA-family decoder: the prompt goes through the model once,
//! filling the KV cache (prefill), then one token at a time is chosen (greedy or sampled, see
//! [`sampling`]), fed back, and decoded into text as it comes (see [`stream`]), until an end
//! token, a stop string, the token budget or the model's context length ends it.
//!
//! The [`Generator`] owns an already-built [`LlamaForCausalLM`]: whoever builds it may attach
//! adapters to its projections first (LoRA without merging), and generation runs through them
//! like any other forward.

pub mod sampling;
pub mod stream;

use std::path::Path;
use std::str::FromStr;
use std::time::Instant;

use alpaca_data::instructions::{Message, Role};
use alpaca_data::prompt::{alpaca_prompt, ChatTemplate};
use alpaca_models::{KvCache, LlamaConfig, LlamaForCausalLM, ModelDir};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use serde_json::Value;
use tokenizers::Tokenizer;

pub use sampling::{Sampler, Sampling};
pub use stream::TextStream;

/// The tokenizer side of a model: its tokenizer, chat template and end-of-sequence ids.
pub struct GenerationTokenizer {
    pub tokenizer: Tokenizer,
    /// tokenizer_config.json's `chat_template` (or chat_template.jinja), if the model has one.
    pub chat_template: Option<ChatTemplate>,
    /// Generation stops at any of these: config.json's and generation_config.json's
    /// `eos_token_id` (a number or a list), or else the tokenizer's `eos_token`.
    pub eos_token_ids: Vec<u32>,
}

fn ids_of(value: &Value) -> Vec<u32> {
    match value {
        Value::Number(n) => n.as_u64().map(|id| vec![id as u32]).unwrap_or_default(),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_u64)
            .map(|id| id as u32)
            .collect(),
        _ => Vec::new(),
    }
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    Ok(Some(value))
}

impl GenerationTokenizer {
    /// Reads tokenizer.json, tokenizer_config.json (chat template, special tokens),
    /// chat_template.jinja and generation_config.json from a model directory.
    pub fn from_dir(dir: &Path, config: &LlamaConfig) -> Result<Self> {
        let tokenizer_path = dir.join("tokenizer.json");
        if !tokenizer_path.is_file() {
            bail!(
                "{} has no tokenizer.json; generation needs the model's tokenizer (a directory \
                 written by `alpaca convert gguf` or transformers' save_pretrained has one)",
                dir.display()
            );
        }
        let tokenizer = Tokenizer::from_file(&tokenizer_path).map_err(|e| {
            anyhow!(
                "{}: cannot read the tokenizer: {e}",
                tokenizer_path.display()
            )
        })?;
        let chat_template = crate::causal::chat_template(dir)?;
        let mut eos_token_ids = config.eos_token_ids();
        if let Some(generation) = read_json(&dir.join("generation_config.json"))? {
            for id in generation
                .get("eos_token_id")
                .map(ids_of)
                .unwrap_or_default()
            {
                if !eos_token_ids.contains(&id) {
                    eos_token_ids.push(id);
                }
            }
        }
        if eos_token_ids.is_empty() {
            // tokenizer_config.json's `eos_token`: "</s>" or {"content": "</s>", ...}.
            let config = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
            let eos_token = match &config["eos_token"] {
                Value::Object(token) => token.get("content").and_then(Value::as_str),
                other => other.as_str(),
            };
            if let Some(id) = eos_token.and_then(|token| tokenizer.token_to_id(token)) {
                eos_token_ids.push(id);
            }
        }
        Ok(Self {
            tokenizer,
            chat_template,
            eos_token_ids,
        })
    }

    /// Token ids of `text`; `add_special_tokens` as in transformers (a raw prompt gets what
    /// the tokenizer's post-processor adds, e.g. LLaMA's `<s>`; a chat-template text already
    /// holds its special tokens).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode(text, add_special_tokens)
            .map_err(|e| anyhow!("cannot tokenize the prompt: {e}"))?
            .get_ids()
            .to_vec())
    }
}

/// Loads a LLaMA-family model for generation: an HF directory (config.json,
/// model.safetensors, tokenizer.json), a hub id in the local cache, or a llama .gguf file.
pub fn load_for_generation(model: &str) -> Result<(LlamaForCausalLM, GenerationTokenizer)> {
    if model.trim().is_empty() {
        bail!("--model is empty; give a model directory in HF layout");
    }
    // A .gguf is converted once into HF layout under ~/.cache/alpaca/gguf, as training does.
    let dir = ModelDir::open(&crate::causal::model_directory(model)?)?;
    let config = dir.config_value()?;
    let model_type = config
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or("");
    if model_type != "llama" {
        bail!(
            "{}: generation supports LLaMA-family decoders (config.json model_type \"llama\"), \
             this model's is {:?}",
            dir.file("config.json").display(),
            model_type
        );
    }
    let (causal_lm, report) = LlamaForCausalLM::load(&dir, 0)?;
    if !report.missing.is_empty() {
        bail!(
            "{}: the checkpoint lacks weights the model needs, so it would generate from \
             random ones: {}",
            dir.path.display(),
            report.summary()
        );
    }
    let tokenizer = GenerationTokenizer::from_dir(&dir.path, causal_lm.config())?;
    Ok((causal_lm, tokenizer))
}

/// How a prompt given on the command line becomes model input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptTemplate {
    /// Stanford Alpaca's prompt (with the `### Input:` section when an input is given).
    Alpaca,
    /// The model's chat template, as one user turn, with the assistant's turn opened.
    Chat,
    /// The text as is.
    None,
}

impl FromStr for PromptTemplate {
    type Err = anyhow::Error;

    fn from_str(name: &str) -> Result<Self> {
        match name {
            "alpaca" => Ok(Self::Alpaca),
            "chat" => Ok(Self::Chat),
            "none" => Ok(Self::None),
            other => bail!("unknown template {other:?}; expected alpaca, chat or none"),
        }
    }
}

/// Text to give the model, and whether the tokenizer adds its special tokens around it.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub text: String,
    pub add_special_tokens: bool,
}

impl Prompt {
    pub fn raw(text: &str) -> Self {
        Self {
            text: text.to_string(),
            add_special_tokens: true,
        }
    }
}

/// The chat template of `tokenizer`, or an error saying what to do instead.
fn chat_template(tokenizer: &GenerationTokenizer) -> Result<&ChatTemplate> {
    tokenizer.chat_template.as_ref().ok_or_else(|| {
        anyhow!(
            "this model has no chat template (tokenizer_config.json \"chat_template\" or \
             chat_template.jinja); use --template alpaca or --template none"
        )
    })
}

/// A conversation laid out by the model's chat template, the assistant's turn opened
/// (`apply_chat_template(messages, add_generation_prompt=True)`).
pub fn chat_prompt(tokenizer: &GenerationTokenizer, messages: &[Message]) -> Result<Prompt> {
    let text = chat_template(tokenizer)?.render(messages, true)?;
    Ok(Prompt {
        text,
        add_special_tokens: false,
    })
}

/// One prompt laid out by `template`. `input` is Alpaca's optional input; `system` an optional
/// system message for the chat template.
pub fn format_prompt(
    template: PromptTemplate,
    tokenizer: &GenerationTokenizer,
    prompt: &str,
    input: Option<&str>,
    system: Option<&str>,
) -> Result<Prompt> {
    if prompt.trim().is_empty() {
        bail!("the prompt is empty; give the text to continue or the instruction to follow");
    }
    if input.is_some() && template != PromptTemplate::Alpaca {
        bail!("--input belongs to the alpaca template; use --template alpaca");
    }
    match template {
        PromptTemplate::Alpaca => Ok(Prompt::raw(&alpaca_prompt(prompt, input.unwrap_or("")))),
        PromptTemplate::None => Ok(Prompt::raw(prompt)),
        PromptTemplate::Chat => {
            let mut messages = Vec::new();
            if let Some(system) = system {
                messages.push(Message {
                    role: Role::System,
                    content: system.to_string(),
                });
            }
            messages.push(Message {
                role: Role::User,
                content: prompt.to_string(),
            });
            chat_prompt(tokenizer, &messages)
        }
    }
}

/// The template to use when none is asked for: the model's chat template if it has one.
pub fn default_template(tokenizer: &GenerationTokenizer) -> PromptTemplate {
    if tokenizer.chat_template.is_some() {
        PromptTemplate::Chat
    } else {
        PromptTemplate::None
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct GenerationOptions {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Generation ends when the output contains one of these; the text is cut before it.
    pub stop_strings: Vec<String>,
    /// Keep going past end-of-sequence tokens (benchmarks that need exactly max_new_tokens).
    pub ignore_eos: bool,
}

impl Default for GenerationOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 128,
            sampling: Sampling::default(),
            stop_strings: Vec::new(),
            ignore_eos: false,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum FinishReason {
    /// The model chose an end-of-sequence token (not part of the output).
    EndOfSequence,
    /// The output reached this stop string.
    StopString(String),
    /// `max_new_tokens` were generated.
    MaxNewTokens,
    /// The model's `max_position_embeddings` is reached.
    ContextFull,
}

/// One generation's result.
#[derive(Debug, Clone)]
pub struct Generation {
    pub prompt_tokens: usize,
    /// Prompt tokens that were already in the KV cache from the previous call (chat turns).
    pub reused_tokens: usize,
    /// The new tokens (an end-of-sequence token that ended generation is not included).
    pub token_ids: Vec<u32>,
    /// The decoded output, cut before a stop string.
    pub text: String,
    pub finish: FinishReason,
    /// Seconds from the start to the logits of the first new token (the prompt's forward).
    pub prefill_seconds: f64,
    /// Seconds for the rest (one forward per further token, sampling and decoding).
    pub decode_seconds: f64,
}

impl Generation {
    /// New tokens per second over the whole call, prompt included (what transformers'
    /// `generate` is usually timed as).
    pub fn tokens_per_second(&self) -> f64 {
        self.token_ids.len() as f64 / (self.prefill_seconds + self.decode_seconds).max(1e-12)
    }
}

/// Generates with one model, keeping its KV cache between calls: when a prompt starts with
/// everything the cache holds (the next turn of a chat), only the new tokens are computed.
pub struct Generator {
    model: LlamaForCausalLM,
    tokenizer: GenerationTokenizer,
    cache: KvCache,
    /// The token ids whose keys and values are in `cache`.
    cached_ids: Vec<u32>,
}

impl Generator {
    pub fn new(model: LlamaForCausalLM, tokenizer: GenerationTokenizer) -> Self {
        Self {
            model,
            tokenizer,
            cache: KvCache::new(),
            cached_ids: Vec::new(),
        }
    }

    pub fn model(&self) -> &LlamaForCausalLM {
        &self.model
    }

    /// The model, e.g. to attach adapters; the KV cache is dropped since it may no longer
    /// match the model's outputs.
    pub fn model_mut(&mut self) -> &mut LlamaForCausalLM {
        self.reset();
        &mut self.model
    }

    /// The model and tokenizer back (e.g. to train the model after generating with it).
    pub fn into_parts(self) -> (LlamaForCausalLM, GenerationTokenizer) {
        (self.model, self.tokenizer)
    }

    pub fn tokenizer(&self) -> &GenerationTokenizer {
        &self.tokenizer
    }

    /// Forgets the KV cache (the next prompt is computed from scratch).
    pub fn reset(&mut self) {
        self.cache.clear();
        self.cached_ids.clear();
    }

    /// Generates a continuation of `prompt`, calling `on_text` with each piece of text as soon
    /// as it is complete (the pieces concatenate to the returned text).
    pub fn generate(
        &mut self,
        prompt: &Prompt,
        options: &GenerationOptions,
        on_text: impl FnMut(&str),
    ) -> Result<Generation> {
        let ids = self
            .tokenizer
            .encode(&prompt.text, prompt.add_special_tokens)?;
        self.generate_from_ids(&ids, options, on_text)
    }

    /// As [`Generator::generate`], from token ids.
    pub fn generate_from_ids(
        &mut self,
        prompt_ids: &[u32],
        options: &GenerationOptions,
        mut on_text: impl FnMut(&str),
    ) -> Result<Generation> {
        options.sampling.validate()?;
        if prompt_ids.is_empty() {
            bail!("the prompt has no tokens; generation needs at least one to continue");
        }
        let context = self.model.config().max_position_embeddings;
        if prompt_ids.len() >= context {
            bail!(
                "the prompt has {} tokens; this model reads at most {context} \
                 (max_position_embeddings), including the tokens it generates",
                prompt_ids.len()
            );
        }
        let started = Instant::now();
        let reuse = !self.cached_ids.is_empty()
            && prompt_ids.len() > self.cached_ids.len()
            && prompt_ids.starts_with(&self.cached_ids);
        if !reuse {
            self.reset();
        }
        let reused_tokens = self.cached_ids.len();
        let mut logits = forward_cached(
            &self.model,
            &mut self.cache,
            &mut self.cached_ids,
            &prompt_ids[reused_tokens..],
        )?;
        let prefill_seconds = started.elapsed().as_secs_f64();
        let decode_started = Instant::now();

        let mut sampler = Sampler::new(options.sampling.clone());
        let mut seen = prompt_ids.to_vec();
        let mut token_ids = Vec::new();
        let mut stream = TextStream::new(&self.tokenizer.tokenizer, &options.stop_strings);
        let mut finish = FinishReason::MaxNewTokens;
        while token_ids.len() < options.max_new_tokens {
            let next = sampler.next_token(&mut logits, &seen);
            if !options.ignore_eos && self.tokenizer.eos_token_ids.contains(&next) {
                finish = FinishReason::EndOfSequence;
                break;
            }
            token_ids.push(next);
            seen.push(next);
            let step = stream.push(next)?;
            if !step.piece.is_empty() {
                on_text(&step.piece);
            }
            if let Some(stop) = step.stopped_at {
                finish = FinishReason::StopString(stop);
                break;
            }
            if token_ids.len() == options.max_new_tokens {
                break;
            }
            if self.cache.len() + 1 > context {
                finish = FinishReason::ContextFull;
                break;
            }
            logits = forward_cached(&self.model, &mut self.cache, &mut self.cached_ids, &[next])?;
        }
        let rest = stream.finish();
        if !rest.is_empty() {
            on_text(&rest);
        }
        Ok(Generation {
            prompt_tokens: prompt_ids.len(),
            reused_tokens,
            text: stream.text().to_string(),
            token_ids,
            finish,
            prefill_seconds,
            decode_seconds: decode_started.elapsed().as_secs_f64(),
        })
    }
}

/// Runs `ids` after the cached tokens and returns the next token's logits.
fn forward_cached(
    model: &LlamaForCausalLM,
    cache: &mut KvCache,
    cached_ids: &mut Vec<u32>,
    ids: &[u32],
) -> Result<Vec<f32>> {
    let input = Tensor::from_slice(ids, (1, ids.len()), &Device::Cpu)?;
    match model.forward_with_cache(&input, cache) {
        Ok(logits) => {
            cached_ids.extend_from_slice(ids);
            Ok(logits.squeeze(0)?.to_vec1::<f32>()?)
        }
        Err(error) => {
            // Some layers may have appended to the cache: start over next time.
            cache.clear();
            cached_ids.clear();
            Err(error.into())
        }
    }
}
