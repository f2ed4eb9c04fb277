//! From a conversation to model input for instruction tuning: the text laid out by a template
//! (Stanford Alpaca's two prompts, or the model's own chat template), cut into pieces that are
//! trained on (the responses) or not (everything else), then token ids with labels −100 on the
//! pieces not trained on.
//!
//! Pieces are tokenized one by one, as LLaMA-Factory and Stanford's `train.py` (which masks
//! the tokens of the prompt tokenized alone) do, so the boundary between prompt and response
//! is exact.

use minijinja::{context, Environment};
use tokenizers::Tokenizer;

use crate::align::IGNORE_INDEX;
use crate::error::{DataError, Result};
use crate::instructions::{Conversation, Message, Role};

/// Stanford Alpaca's prompt for an instruction with an input (`train.py`, PROMPT_DICT).
pub const ALPACA_PROMPT_INPUT: &str = "Below is an instruction that describes a task, paired \
with an input that provides further context. Write a response that appropriately completes \
the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:";
/// Stanford Alpaca's prompt for an instruction alone.
pub const ALPACA_PROMPT_NO_INPUT: &str = "Below is an instruction that describes a task. \
Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\
\n\n### Response:";

/// The Alpaca prompt for one instruction (and input, when not empty).
pub fn alpaca_prompt(instruction: &str, input: &str) -> String {
    if input.trim().is_empty() {
        ALPACA_PROMPT_NO_INPUT.replace("{instruction}", instruction)
    } else {
        ALPACA_PROMPT_INPUT
            .replace("{instruction}", instruction)
            .replace("{input}", input)
    }
}

/// A chat template in HF's Jinja dialect (tokenizer_config.json's `chat_template`).
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    pub source: String,
    pub bos_token: String,
    pub eos_token: String,
}

impl ChatTemplate {
    /// Renders `messages` as `tokenizer.apply_chat_template(..., tokenize=False)` does.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let mut environment = Environment::new();
        environment.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    message,
                ))
            },
        );
        let failed =
            |e: minijinja::Error| DataError::Tokenizer(format!("the chat template failed: {e:#}"));
        environment
            .add_template("chat", &self.source)
            .map_err(failed)?;
        let messages: Vec<minijinja::Value> = messages
            .iter()
            .map(|m| context! { role => m.role.as_str(), content => m.content.as_str() })
            .collect();
        environment
            .get_template("chat")
            .map_err(failed)?
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token.as_str(),
                eos_token => self.eos_token.as_str(),
            })
            .map_err(failed)
    }
}

/// How conversations are laid out.
#[derive(Debug, Clone)]
pub enum Template {
    /// Stanford Alpaca's prompts; each response is followed by the EOS token.
    Alpaca,
    /// The model's chat template (its text already closes every turn).
    Chat(ChatTemplate),
}

/// A piece of an example's text, and whether the loss is computed on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub text: String,
    pub trained: bool,
    /// Append the EOS token after this piece (Alpaca responses).
    pub end_of_sequence: bool,
}

/// Lays a conversation out as pieces. With the Alpaca template each user turn becomes an
/// instruction (an Alpaca item keeps its own instruction and input), each answer a response;
/// a system message is put before the first instruction.
pub fn format_conversation(conversation: &Conversation, template: &Template) -> Result<Vec<Piece>> {
    match template {
        Template::Alpaca => {
            let mut pieces = Vec::new();
            let mut system = String::new();
            let mut first_prompt = true;
            for message in &conversation.messages {
                match message.role {
                    Role::System => {
                        system = format!("{}\n\n", message.content);
                    }
                    Role::User => {
                        let prompt = match (&conversation.alpaca, first_prompt) {
                            (Some((instruction, input)), true) => alpaca_prompt(instruction, input),
                            _ => alpaca_prompt(&message.content, ""),
                        };
                        let separator = if first_prompt { "" } else { "\n\n" };
                        let system = if first_prompt { system.as_str() } else { "" };
                        pieces.push(Piece {
                            text: format!("{separator}{system}{prompt}"),
                            trained: false,
                            end_of_sequence: false,
                        });
                        first_prompt = false;
                    }
                    Role::Assistant => pieces.push(Piece {
                        text: message.content.clone(),
                        trained: true,
                        end_of_sequence: true,
                    }),
                }
            }
            Ok(pieces)
        }
        Template::Chat(chat) => {
            let messages = &conversation.messages;
            let mut pieces = Vec::new();
            let mut done = String::new();
            for (index, message) in messages.iter().enumerate() {
                if message.role != Role::Assistant {
                    continue;
                }
                let prompt = chat.render(&messages[..index], true)?;
                let full = chat.render(&messages[..=index], false)?;
                if !prompt.starts_with(&done) || !full.starts_with(&prompt) {
                    return Err(DataError::Tokenizer(format!(
                        "{}: the chat template does not render turn by turn (a conversation's \
                         text must extend its prefix's), so responses cannot be told from \
                         prompts; use --template alpaca",
                        conversation.source
                    )));
                }
                pieces.push(Piece {
                    text: prompt[done.len()..].to_string(),
                    trained: false,
                    end_of_sequence: false,
                });
                pieces.push(Piece {
                    text: full[prompt.len()..].to_string(),
                    trained: true,
                    end_of_sequence: false,
                });
                done = full;
            }
            Ok(pieces)
        }
    }
}

/// Token ids and labels of one example.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedExample {
    pub input_ids: Vec<u32>,
    /// The id to predict at each position's *own* index (HF convention: the model shifts).
    pub labels: Vec<i64>,
    /// True when the example was longer than `max_len` and cut at the end.
    pub truncated: bool,
}

/// What the tokenizer adds around an example.
#[derive(Debug, Clone, Copy)]
pub struct SpecialTokens {
    /// Put before the first piece (LLaMA's `<s>`), when the model wants it.
    pub bos: Option<u32>,
    pub eos: u32,
}

/// Tokenizes pieces one by one; untrained pieces get label −100 unless `train_on_inputs`.
/// The result is cut to `max_len` tokens.
pub fn tokenize_pieces(
    tokenizer: &Tokenizer,
    pieces: &[Piece],
    special: SpecialTokens,
    max_len: usize,
    train_on_inputs: bool,
) -> Result<TokenizedExample> {
    let mut input_ids = Vec::new();
    let mut labels = Vec::new();
    if let Some(bos) = special.bos {
        input_ids.push(bos);
        labels.push(IGNORE_INDEX);
    }
    for piece in pieces {
        let encoding = tokenizer
            .encode(piece.text.as_str(), false)
            .map_err(|e| DataError::Tokenizer(format!("tokenizing: {e}")))?;
        let trained = piece.trained || train_on_inputs;
        for &id in encoding.get_ids() {
            input_ids.push(id);
            labels.push(if trained { id as i64 } else { IGNORE_INDEX });
        }
        if piece.end_of_sequence {
            input_ids.push(special.eos);
            labels.push(special.eos as i64);
        }
    }
    let truncated = input_ids.len() > max_len;
    input_ids.truncate(max_len);
    labels.truncate(max_len);
    Ok(TokenizedExample {
        input_ids,
        labels,
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instructions::Message;

    fn conversation(alpaca: Option<(&str, &str)>, turns: &[(Role, &str)]) -> Conversation {
        Conversation {
            source: "test".into(),
            messages: turns
                .iter()
                .map(|(role, content)| Message {
                    role: *role,
                    content: content.to_string(),
                })
                .collect(),
            alpaca: alpaca.map(|(i, n)| (i.to_string(), n.to_string())),
        }
    }

    #[test]
    fn alpaca_prompts_match_stanford_exactly() {
        assert_eq!(
            alpaca_prompt("Name a colour.", ""),
            "Below is an instruction that describes a task. Write a response that appropriately \
             completes the request.\n\n### Instruction:\nName a colour.\n\n### Response:"
        );
        assert_eq!(
            alpaca_prompt("Translate.", "chat"),
            "Below is an instruction that describes a task, paired with an input that provides \
             further context. Write a response that appropriately completes the request.\n\n\
             ### Instruction:\nTranslate.\n\n### Input:\nchat\n\n### Response:"
        );
        let example = conversation(
            Some(("Translate.", "chat")),
            &[(Role::User, "Translate.\n\nchat"), (Role::Assistant, "cat")],
        );
        let pieces = format_conversation(&example, &Template::Alpaca).unwrap();
        assert_eq!(pieces.len(), 2);
        assert_eq!(pieces[0].text, alpaca_prompt("Translate.", "chat"));
        assert!(!pieces[0].trained);
        assert_eq!(pieces[1].text, "cat");
        assert!(pieces[1].trained && pieces[1].end_of_sequence);
    }

    fn chatml() -> ChatTemplate {
        // SmolLM2-Instruct's template, as its GGUF carries it.
        ChatTemplate {
            source: "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}".into(),
            bos_token: "<|im_start|>".into(),
            eos_token: "<|im_end|>".into(),
        }
    }

    #[test]
    fn chat_template_pieces_put_only_answers_in_the_loss() {
        let example = conversation(
            None,
            &[
                (Role::User, "Hi"),
                (Role::Assistant, "Hello!"),
                (Role::User, "Bye"),
                (Role::Assistant, "Goodbye."),
            ],
        );
        let template = Template::Chat(chatml());
        let pieces = format_conversation(&example, &template).unwrap();
        let texts: Vec<(&str, bool)> = pieces
            .iter()
            .map(|p| (p.text.as_str(), p.trained))
            .collect();
        assert_eq!(
            texts,
            [
                (
                    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by \
                     Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
                    false
                ),
                ("Hello!<|im_end|>\n", true),
                ("<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n", false),
                ("Goodbye.<|im_end|>\n", true),
            ]
        );
        let whole: String = pieces.iter().map(|p| p.text.as_str()).collect();
        if let Template::Chat(chat) = &template {
            assert_eq!(whole, chat.render(&example.messages, false).unwrap());
        }
    }

    #[test]
    fn labels_cover_responses_and_eos_only() {
        use tokenizers::models::wordlevel::WordLevel;
        use tokenizers::pre_tokenizers::whitespace::Whitespace;
        let vocab: std::collections::HashMap<String, u32> =
            ["<unk>", "<eos>", "say", "hi", "ok", "###", "Response", ":"]
                .iter()
                .enumerate()
                .map(|(i, w)| (w.to_string(), i as u32))
                .collect();
        let model = WordLevel::builder()
            .vocab(vocab.into_iter().collect())
            .unk_token("<unk>".into())
            .build()
            .unwrap();
        let mut tokenizer = Tokenizer::new(model);
        tokenizer.with_pre_tokenizer(Some(Whitespace {}));
        let pieces = vec![
            Piece {
                text: "say hi ### Response :".into(),
                trained: false,
                end_of_sequence: false,
            },
            Piece {
                text: "hi ok".into(),
                trained: true,
                end_of_sequence: true,
            },
        ];
        let special = SpecialTokens { bos: None, eos: 1 };
        let example = tokenize_pieces(&tokenizer, &pieces, special, 64, false).unwrap();
        assert_eq!(example.input_ids, [2, 3, 5, 6, 7, 3, 4, 1]);
        assert_eq!(example.labels, [-100, -100, -100, -100, -100, 3, 4, 1]);
        assert!(!example.truncated);
        let all = tokenize_pieces(&tokenizer, &pieces, special, 64, true).unwrap();
        assert_eq!(all.labels, [2, 3, 5, 6, 7, 3, 4, 1]);
        let cut = tokenize_pieces(
            &tokenizer,
            &pieces,
            SpecialTokens {
                bos: Some(0),
                eos: 1,
            },
            4,
            false,
        )
        .unwrap();
        assert_eq!(cut.input_ids, [0, 2, 3, 5]);
        assert!(cut.truncated);
    }
}
