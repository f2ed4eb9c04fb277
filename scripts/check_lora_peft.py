"""Checks that a LoRA adapter written by `alpaca train instruct` loads in PEFT onto the base
model and gives the logits alpaca computes with the adapter attached (not merged), and that
`alpaca merge-lora`'s merged model gives them too.

    ~/.cache/alpaca/venv/bin/python scripts/check_lora_peft.py --base BASE_DIR \
        --adapter runs/NAME/best [--merged MERGED_DIR] [--text "..."]
BASE_DIR is an HF directory (for a .gguf: the converted one under ~/.cache/alpaca/gguf/).
"""
import argparse
import json
import pathlib
import subprocess
import tempfile

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

parser = argparse.ArgumentParser()
parser.add_argument("--base", required=True)
parser.add_argument("--adapter", required=True)
parser.add_argument("--merged")
parser.add_argument("--text", default="Below is an instruction that describes a task. Write a "
                    "response that appropriately completes the request.\n\n### Instruction:\n"
                    "Correct the grammar of this text.\n\n### Response:")
args = parser.parse_args()

tokenizer = AutoTokenizer.from_pretrained(args.base)
ids = tokenizer(args.text, add_special_tokens=False)["input_ids"]
base = AutoModelForCausalLM.from_pretrained(args.base, torch_dtype=torch.float32)
model = PeftModel.from_pretrained(base, args.adapter).eval()
with torch.no_grad():
    peft_logits = model(torch.tensor([ids])).logits[0]
    with model.disable_adapter():
        base_logits = model(torch.tensor([ids])).logits[0]
print(f"the adapter moves PEFT's logits by up to {(peft_logits - base_logits).abs().max().item():.2e}")

root = pathlib.Path(__file__).resolve().parent.parent
with tempfile.TemporaryDirectory() as work:
    out = pathlib.Path(work) / "logits.json"
    subprocess.run(["cargo", "run", "--release", "-q", "-p", "alpaca-models", "--example",
                    "llama_logits", "--", args.base, "--ids", ",".join(map(str, ids)),
                    "--output", str(out), "--adapter", args.adapter], check=True, cwd=root)
    alpaca = json.loads(out.read_text())
alpaca_logits = torch.tensor(alpaca["logits"]).reshape(alpaca["shape"])
difference = (alpaca_logits - peft_logits).abs().max().item()
same = (alpaca_logits.argmax(-1) == peft_logits.argmax(-1)).float().mean().item()
print(f"{len(ids)} tokens: max |alpaca with adapter - PEFT| = {difference:.2e}, same arg-max at {same:.0%}")
if args.merged:
    merged = AutoModelForCausalLM.from_pretrained(args.merged, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        merged_logits = merged(torch.tensor([ids])).logits[0]
    print(f"max |transformers on merged - PEFT| = {(merged_logits - peft_logits).abs().max().item():.2e}")
