#!/usr/bin/env python3
"""Checks that a checkpoint alpaca saved loads in transformers and gives alpaca's logits.

    target/release/alpaca predict ner --model runs/NAME/best --logits-json /tmp/alpaca.json \
        "EU rejects German call to boycott British lamb ." "Peter Blackburn"
    ~/.cache/alpaca/venv/bin/python scripts/check_hf_logits.py runs/NAME/best /tmp/alpaca.json

Loads the directory with AutoModelForTokenClassification and AutoTokenizer, runs it on the
exact input ids alpaca used, compares logits at real (non-padding) positions, checks the label
maps, and checks that the HF tokenizer produces the same ids for the first text's words.
Exits non-zero when the largest difference exceeds the tolerance (default 1e-4).
"""
import json
import sys

import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer


def main():
    model_dir, dump = sys.argv[1], sys.argv[2]
    tolerance = float(sys.argv[3]) if len(sys.argv) > 3 else 1e-4
    with open(dump) as f:
        ours = json.load(f)
    model = AutoModelForTokenClassification.from_pretrained(model_dir).eval()
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    assert labels == ours["labels"], f"label maps differ: {labels} vs {ours['labels']}"
    ids = torch.tensor(ours["input_ids"])
    mask = torch.tensor(ours["attention_mask"])
    types = torch.tensor(ours["token_type_ids"])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    reference = torch.tensor(ours["logits"])
    real = mask.bool()
    difference = (logits[real] - reference[real]).abs().max().item()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    first = tokenizer(ours["texts"][0].split(), is_split_into_words=True)["input_ids"]
    length = int(mask[0].sum())
    same_ids = first == ours["input_ids"][0][:length]
    print(f"transformers loaded {model_dir}: {model.config.architectures}, {len(labels)} labels")
    print(f"max |logits_alpaca - logits_transformers| over {int(real.sum())} tokens = {difference:.3g}")
    print(f"tokenizer ids identical for text 1: {same_ids}")
    if difference > tolerance or not same_ids:
        sys.exit(1)


if __name__ == "__main__":
    main()
