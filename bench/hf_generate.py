#!/usr/bin/env python3
"""transformers' side of the generation figure (issue 5): tokens/s of `model.generate` at
batch 1, greedy, exactly NEW new tokens (min_new_tokens = max_new_tokens, so an end token does
not cut a run short), on CPU with a fixed number of threads.

Each run times one `generate` call (prompt forward included, model loading not), as
`alpaca generate --timing` reports its "overall" figure. One warm-up run first.

Usage:
  ~/.cache/alpaca/venv/bin/python bench/hf_generate.py --model DIR [--threads 2] [--runs 3]
      [--new-tokens 128] [--prompt TEXT]
DIR: an HF directory (e.g. from `alpaca convert gguf`); a .gguf path is read with
transformers' own GGUF loader.
"""

import argparse
import json
import os
import statistics
import time

PROMPT = "The llama is a domesticated South American camelid, widely used as a"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="bf16: the model loaded in bfloat16")
    args = parser.parse_args()

    import torch
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32

    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.model.endswith(".gguf"):
        directory, name = os.path.split(os.path.abspath(args.model))
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=dtype)
    else:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    model.eval()
    ids = tokenizer(args.prompt, return_tensors="pt")
    eos = model.config.eos_token_id

    def run():
        with torch.no_grad():
            started = time.perf_counter()
            out = model.generate(
                **ids,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                pad_token_id=eos,
            )
            seconds = time.perf_counter() - started
        new = out.shape[1] - ids["input_ids"].shape[1]
        return new, seconds

    run()
    rates = []
    for index in range(args.runs):
        new, seconds = run()
        rates.append(new / seconds)
        print(f"run {index + 1}: {new} new tokens in {seconds:.3f} s: {new / seconds:.2f} tokens/s")
    print(json.dumps({
        "side": "transformers",
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
        "attention": model.config._attn_implementation,
        "threads": args.threads,
        "prompt_tokens": ids["input_ids"].shape[1],
        "new_tokens": args.new_tokens,
        "tokens_per_second": rates,
        "median_tokens_per_second": statistics.median(rates),
    }))


if __name__ == "__main__":
    main()
