"""Compares alpaca's LLaMA logits with transformers' on one checkpoint directory.

    ~/.cache/alpaca/venv/bin/python scripts/check_llama_logits.py --model DIR [--prompt TEXT | --ids 1,2,3]
    ~/.cache/alpaca/venv/bin/python scripts/check_llama_logits.py --gguf FILE.gguf --work DIR

--model: an HF directory (e.g. the output of `alpaca convert gguf`). --gguf: until alpaca's
converter is used, let transformers dequantise the GGUF itself into --work (an HF directory),
then compare there. alpaca's side runs `cargo run --release -p alpaca-models --example
llama_logits`, which also saves the model; transformers then loads that saved copy too, so the
check covers alpaca's save layout. Exits 1 when a difference exceeds --tolerance.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def transformers_logits(directory, ids):
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="HF model directory")
    parser.add_argument("--gguf", help="GGUF file, dequantised by transformers into --work")
    parser.add_argument("--work", help="directory for the dequantised GGUF model (with --gguf)")
    parser.add_argument("--prompt", default="The capital of France is Paris, and the capital of Italy is")
    parser.add_argument("--ids", help="comma-separated token ids instead of --prompt")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="max |logit difference| allowed")
    args = parser.parse_args()

    if args.gguf:
        if not args.work:
            sys.exit("--gguf needs --work DIR")
        folder, name = os.path.split(os.path.abspath(args.gguf))
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        # save_pretrained refuses GGUF-loaded models: write the dequantised weights directly,
        # without the tied head (as transformers saves tied models) and the GGUF marker.
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        os.makedirs(args.work, exist_ok=True)
        save_file(state, os.path.join(args.work, "model.safetensors"), metadata={"format": "pt"})
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        config["architectures"] = ["LlamaForCausalLM"]
        with open(os.path.join(args.work, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(args.work)
        directory = args.work
    elif args.model:
        directory = args.model
    else:
        sys.exit("give --model DIR or --gguf FILE --work DIR")

    if args.ids:
        ids = [int(i) for i in args.ids.split(",")]
    else:
        ids = AutoTokenizer.from_pretrained(directory)(args.prompt)["input_ids"]

    with tempfile.TemporaryDirectory() as scratch:
        dump, saved = os.path.join(scratch, "logits.json"), os.path.join(scratch, "saved")
        command = [
            "cargo", "run", "--quiet", "--release", "-p", "alpaca-models", "--example", "llama_logits", "--",
            directory, "--ids", ",".join(map(str, ids)), "--output", dump, "--save", saved,
        ]
        subprocess.run(command, cwd=ROOT, check=True)
        with open(dump) as f:
            ours = json.load(f)
        alpaca = torch.tensor(ours["logits"]).reshape(ours["shape"])
        cached_last = torch.tensor(ours["cached_last"])
        started = time.time()
        reference = transformers_logits(directory, ids)
        torch_seconds = time.time() - started
        from_saved = transformers_logits(saved, ids)

    differences = {
        "alpaca vs transformers, all positions": (alpaca - reference).abs().max().item(),
        "alpaca KV cache vs transformers, last position": (cached_last - reference[-1]).abs().max().item(),
        "transformers on alpaca's saved copy vs on the original": (from_saved - reference).abs().max().item(),
    }
    same_argmax = (alpaca.argmax(-1) == reference.argmax(-1)).float().mean().item()
    print(f"model: {directory}")
    print(f"tokens: {len(ids)}, vocab: {reference.shape[-1]}, logit range [{reference.min():.2f}, {reference.max():.2f}]")
    for what, value in differences.items():
        print(f"max |diff| {what}: {value:.3e}")
    print(f"same argmax at {same_argmax * 100:.1f}% of positions")
    print(f"forward time (incl. first-call setup): alpaca {ours['forward_seconds']:.3f} s, transformers {torch_seconds:.3f} s")
    if max(differences.values()) > args.tolerance or same_argmax < 1.0:
        print(f"FAILED: over tolerance {args.tolerance} or argmax differs")
        sys.exit(1)
    print("OK")


if __name__ == "__main__":
    main()
