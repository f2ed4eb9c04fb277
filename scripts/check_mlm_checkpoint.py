"""Checks that a checkpoint written by `alpaca train mlm` loads in transformers with no
missing or unexpected weights, and that transformers fills masks as alpaca does.

    ~/.cache/alpaca/venv/bin/python scripts/check_mlm_checkpoint.py runs/NAME/best "The [MASK] of the sea."
Runs `target/release/alpaca predict mlm` on the same text and prints the largest probability
difference over the top-5 candidates of every mask.
"""
import json
import subprocess
import sys

import torch
import transformers
from transformers import AutoTokenizer

model_dir, text = sys.argv[1], sys.argv[2]
config = json.load(open(f"{model_dir}/config.json"))
architecture = config["architectures"][0]
model_class = getattr(transformers, architecture)
model, info = model_class.from_pretrained(model_dir, output_loading_info=True)
model.eval()
problems = {k: v for k, v in info.items() if v}
print(f"{architecture}: loading problems: {problems or 'none'}")
tokenizer = AutoTokenizer.from_pretrained(model_dir)
encoded = tokenizer(text, return_tensors="pt")
with torch.no_grad():
    output = model(**encoded)
logits = output.logits if hasattr(output, "logits") else output.prediction_logits
ids = encoded["input_ids"][0].tolist()
alpaca = subprocess.run(["target/release/alpaca", "predict", "mlm", "--model", model_dir, text],
                        capture_output=True, text=True, check=True).stdout.splitlines()
worst = 0.0
for line in alpaca:
    fill = json.loads(line)
    probabilities = logits[0, fill["position"]].softmax(-1)
    for candidate in fill["candidates"]:
        worst = max(worst, abs(probabilities[candidate["id"]].item() - candidate["probability"]))
    hf_top = probabilities.topk(5).indices.tolist()
    ours = [c["id"] for c in fill["candidates"]]
    print(f"mask at {fill['position']}: top-5 transformers {hf_top}, alpaca {ours}")
print(f"max |probability difference| = {worst:.2e}")
