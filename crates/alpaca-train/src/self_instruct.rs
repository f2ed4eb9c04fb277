//! Alpaca's data-generation idea (Self-Instruct, as Stanford's `generate_instruction.py` runs
//! it), with a local model: show the model three tasks sampled from a seed pool, let it write
//! more in the same numbered layout, parse what it wrote, drop tasks that are too short or
//! long, name things a text model cannot do (images, files, audio…) or are too close to a task
//! already in the pool (ROUGE-L F1 > 0.7), and keep the rest, until `num` tasks are kept.
//!
//! The model is any `FnMut(prompt) -> completion`, so the loop is tested without one.

use std::collections::BTreeMap;
use std::path::Path;

use alpaca_data::instructions::{read_instructions, CsvLayout};
use alpaca_eval::rouge::{rouge_l_tokens, rouge_tokens};
use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use serde_json::Value;

/// One task in Alpaca's layout.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Task {
    pub instruction: String,
    pub input: String,
    pub output: String,
}

/// Words that name what a text-only model cannot see or produce (Stanford's list).
const BLACKLIST: [&str; 18] = [
    "image",
    "images",
    "graph",
    "graphs",
    "picture",
    "pictures",
    "file",
    "files",
    "map",
    "maps",
    "draw",
    "plot",
    "go to",
    "video",
    "audio",
    "music",
    "flowchart",
    "diagram",
];

const NO_INPUT: &str = "<noinput>";

/// Reads seed tasks: Stanford's `seed_tasks.jsonl` (`instruction` plus `instances` of
/// `input`/`output`), or any instruction data `train instruct` reads (Alpaca JSON/JSONL, CSV).
pub fn read_seed_tasks(path: &Path) -> Result<Vec<Task>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let stanford = path.extension().is_some_and(|e| e == "jsonl") && text.contains("\"instances\"");
    if stanford {
        let mut tasks = Vec::new();
        for (number, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not JSON", path.display(), number + 1))?;
            let instance = &value["instances"][0];
            let field = |v: &Value, name: &str| v[name].as_str().unwrap_or("").trim().to_string();
            let task = Task {
                instruction: field(&value, "instruction"),
                input: field(instance, "input"),
                output: field(instance, "output"),
            };
            if task.instruction.is_empty() || task.output.is_empty() {
                bail!(
                    "{}:{}: a seed task needs \"instruction\" and instances[0].output",
                    path.display(),
                    number + 1
                );
            }
            tasks.push(task);
        }
        return Ok(tasks);
    }
    let data = read_instructions(path, &CsvLayout::default())?;
    Ok(data
        .conversations
        .iter()
        .map(|c| {
            let (instruction, input) = c
                .alpaca
                .clone()
                .unwrap_or_else(|| (c.messages[0].content.clone(), String::new()));
            Task {
                instruction,
                input,
                output: c.messages[1].content.clone(),
            }
        })
        .collect())
}

/// The prompt: a short brief, then the sample tasks numbered 1…n, then the number of the
/// first task the model is to write.
pub fn encode_prompt(tasks: &[Task]) -> String {
    let mut prompt = String::from(
        "Come up with new and varied tasks for an AI assistant. Each task has an instruction, \
         an input that gives the task its details (or <noinput> when the instruction says it \
         all), and the output a good assistant would give. Vary the verbs, the topics and the \
         kind of task; keep each output short and correct.\n\n",
    );
    for (index, task) in tasks.iter().enumerate() {
        let number = index + 1;
        let input = if task.input.is_empty() {
            NO_INPUT
        } else {
            &task.input
        };
        prompt.push_str(&format!(
            "###\n{number}. Instruction: {}\n{number}. Input:\n{input}\n{number}. Output:\n{}\n",
            task.instruction, task.output
        ));
    }
    prompt.push_str(&format!("###\n{}. Instruction:", tasks.len() + 1));
    prompt
}

/// The field a line opens (`7. Input:` …) and the rest of the line.
fn field_start(line: &str) -> Option<(&'static str, &str)> {
    let digits = line.len() - line.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 {
        return None;
    }
    let rest = line[digits..].strip_prefix('.')?.trim_start();
    for field in ["Instruction:", "Input:", "Output:"] {
        if let Some(value) = rest.strip_prefix(field) {
            return Some((field, value.trim_start()));
        }
    }
    None
}

/// Parses the model's completion of [`encode_prompt`]; the completion continues the task
/// numbered `first`. Tasks missing a field are dropped here.
pub fn parse_completion(completion: &str, first: usize) -> Vec<Task> {
    let text = format!("{first}. Instruction: {completion}");
    let mut tasks = Vec::new();
    for block in text.split("###") {
        let mut fields: BTreeMap<&str, String> = BTreeMap::new();
        let mut current: Option<&str> = None;
        for line in block.lines() {
            if let Some((field, value)) = field_start(line) {
                current = Some(field);
                fields.insert(field, value.to_string());
            } else if let Some(field) = current {
                let entry = fields.get_mut(field).expect("opened");
                if !entry.is_empty() {
                    entry.push('\n');
                }
                entry.push_str(line);
            }
        }
        let get = |field: &str| fields.get(field).map(|v| v.trim().to_string());
        if let (Some(instruction), Some(input), Some(output)) =
            (get("Instruction:"), get("Input:"), get("Output:"))
        {
            let input = if input == NO_INPUT || input.eq_ignore_ascii_case("<no input>") {
                String::new()
            } else {
                input
            };
            tasks.push(Task {
                instruction,
                input,
                output,
            });
        }
    }
    tasks
}

/// Why a generated task is not kept, by Stanford's rules (None: it passes them).
pub fn rejection(task: &Task) -> Option<&'static str> {
    let words = task.instruction.split_whitespace().count();
    if words <= 3 {
        return Some("instruction of 3 words or fewer");
    }
    if words > 150 {
        return Some("instruction over 150 words");
    }
    if task.output.trim().is_empty() {
        return Some("empty output");
    }
    let lower = task.instruction.to_lowercase();
    let padded = format!(" {} ", lower.replace(|c: char| !c.is_alphanumeric(), " "));
    if BLACKLIST
        .iter()
        .any(|word| padded.contains(&format!(" {word} ")))
    {
        return Some("names something a text model cannot do");
    }
    if lower.starts_with("write a program") {
        return Some("asks for a program");
    }
    let first = task.instruction.chars().next().unwrap_or(' ');
    if first.is_ascii_punctuation() {
        return Some("starts with punctuation");
    }
    if !first.is_ascii() {
        return Some("starts with a non-ASCII character");
    }
    None
}

#[derive(Debug, Clone)]
pub struct SelfInstructOptions {
    /// Tasks to keep.
    pub num: usize,
    /// Seed tasks shown in each prompt.
    pub prompt_tasks: usize,
    /// Drop a task whose ROUGE-L F1 against any pooled instruction exceeds this.
    pub similarity_threshold: f64,
    /// Give up after this many model calls.
    pub max_requests: usize,
    pub seed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SelfInstructReport {
    pub kept: Vec<Task>,
    pub requests: usize,
    pub parsed: usize,
    /// Dropped tasks counted by reason.
    pub dropped: BTreeMap<String, usize>,
}

/// Runs the loop; `complete(prompt)` returns the model's continuation of the prompt.
pub fn self_instruct(
    seeds: &[Task],
    options: &SelfInstructOptions,
    mut complete: impl FnMut(&str) -> Result<String>,
) -> Result<SelfInstructReport> {
    if seeds.len() < options.prompt_tasks.max(1) {
        bail!(
            "{} seed task(s); each prompt shows {}",
            seeds.len(),
            options.prompt_tasks
        );
    }
    let mut rng = StdRng::seed_from_u64(options.seed);
    let mut pool: Vec<Vec<String>> = seeds.iter().map(|t| rouge_tokens(&t.instruction)).collect();
    let mut report = SelfInstructReport {
        kept: Vec::new(),
        requests: 0,
        parsed: 0,
        dropped: BTreeMap::new(),
    };
    while report.kept.len() < options.num && report.requests < options.max_requests {
        let shown: Vec<Task> = seeds
            .choose_multiple(&mut rng, options.prompt_tasks)
            .cloned()
            .collect();
        let completion = complete(&encode_prompt(&shown))?;
        report.requests += 1;
        for task in parse_completion(&completion, shown.len() + 1) {
            report.parsed += 1;
            let reason = rejection(&task).map(str::to_string).or_else(|| {
                let tokens = rouge_tokens(&task.instruction);
                let closest = pool
                    .iter()
                    .map(|other| rouge_l_tokens(other, &tokens))
                    .fold(0.0, f64::max);
                (closest > options.similarity_threshold)
                    .then(|| "too similar to a task in the pool (ROUGE-L)".to_string())
            });
            match reason {
                Some(reason) => *report.dropped.entry(reason).or_default() += 1,
                None => {
                    pool.push(rouge_tokens(&task.instruction));
                    report.kept.push(task);
                    if report.kept.len() == options.num {
                        break;
                    }
                }
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(instruction: &str, input: &str, output: &str) -> Task {
        Task {
            instruction: instruction.into(),
            input: input.into(),
            output: output.into(),
        }
    }

    #[test]
    fn prompt_and_completion_round_trip() {
        let seeds = vec![
            task(
                "Give three tips for staying healthy.",
                "",
                "Eat well, sleep, move.",
            ),
            task(
                "Translate the sentence into French.",
                "I like tea.",
                "J'aime le thé.",
            ),
        ];
        let prompt = encode_prompt(&seeds);
        assert!(prompt.contains("1. Input:\n<noinput>\n1. Output:\nEat well, sleep, move.\n"));
        assert!(prompt.ends_with("###\n3. Instruction:"));
        let completion = " Name the capital of the given country.\n3. Input:\nPeru\n3. Output:\n\
                          Lima\n###\n4. Instruction: List two prime numbers above ten.\n4. Input:\n\
                          <noinput>\n4. Output:\n11\n13\n###\n5. Instruction: cut off";
        let tasks = parse_completion(completion, 3);
        assert_eq!(
            tasks,
            vec![
                task("Name the capital of the given country.", "Peru", "Lima"),
                task("List two prime numbers above ten.", "", "11\n13"),
            ]
        );
    }

    #[test]
    fn rules_drop_what_stanford_drops() {
        assert!(rejection(&task("Summarise it.", "", "x")).is_some());
        assert!(rejection(&task("Draw a picture of a happy dog.", "", "x")).is_some());
        assert!(rejection(&task(
            "Describe the plot of the given map in words.",
            "",
            "x"
        ))
        .is_some());
        assert!(rejection(&task("Write a program that sorts numbers.", "", "x")).is_some());
        assert!(rejection(&task("\"Quote\" the given sentence back please.", "", "x")).is_some());
        assert!(rejection(&task("Explain why the sky is blue.", "", "")).is_some());
        assert_eq!(
            rejection(&task("Explain why the sky looks blue.", "", "Rayleigh.")),
            None
        );
        // "files" is blacklisted, "profile" is not.
        assert_eq!(
            rejection(&task("Write a short profile of a baker.", "", "x")),
            None
        );
    }

    #[test]
    fn the_loop_keeps_new_tasks_and_drops_near_copies() {
        let seeds = vec![
            task("Give three tips for staying healthy.", "", "a"),
            task("Translate the sentence into French.", "x", "b"),
            task("Name a famous painter from Spain.", "", "c"),
        ];
        let mut calls = 0;
        let options = SelfInstructOptions {
            num: 2,
            prompt_tasks: 3,
            similarity_threshold: 0.7,
            max_requests: 5,
            seed: 1,
        };
        let report =
            self_instruct(&seeds, &options, |prompt| {
                assert!(prompt.ends_with("4. Instruction:"));
                calls += 1;
                Ok(match calls {
                1 => " Give three tips for staying healthy!\n4. Input:\n<noinput>\n4. Output:\nx\n\
                      ###\n5. Instruction: Suggest a name for a new bakery.\n5. Input:\n<noinput>\n\
                      5. Output:\nCrumbs\n"
                    .to_string(),
                _ => " Suggest a name for a new bakery shop.\n4. Input:\n<noinput>\n4. Output:\nx\n\
                      ###\n5. Instruction: Convert the temperature to Celsius.\n5. Input:\n\
                      212 F\n5. Output:\n100 C\n"
                    .to_string(),
            })
            })
            .unwrap();
        assert_eq!(report.requests, 2);
        let kept: Vec<&str> = report.kept.iter().map(|t| t.instruction.as_str()).collect();
        assert_eq!(
            kept,
            [
                "Suggest a name for a new bakery.",
                "Convert the temperature to Celsius."
            ]
        );
        assert_eq!(
            report.dropped["too similar to a task in the pool (ROUGE-L)"], 2,
            "{:?}",
            report.dropped
        );
    }
}
