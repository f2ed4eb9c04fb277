#!/usr/bin/env python3
"""PyTorch twin of `alpaca bench predict`: NER prediction throughput on CoNLL sentences.

Words → fast tokenizer (is_split_into_words, padding) → AutoModelForTokenClassification under
inference_mode → arg-max tag of each word's first sub-token, in file order, batch_size
sentences at a time. Model loading is not timed; one batch runs first as a warm-up.

    ~/.cache/alpaca/venv/bin/python bench/torch_predict.py --model runs/NAME/best \
        --file test.txt --batch-size 1 --sentences 500 --threads 2
"""
import argparse
import json
import time

import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer


def read_conll(path):
    sentences, words = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("-DOCSTART-"):
                if words:
                    sentences.append(words)
                    words = []
                continue
            words.append(line.split()[0])
    if words:
        sentences.append(words)
    return sentences


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--file", required=True)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--sentences", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForTokenClassification.from_pretrained(args.model).eval()
    labels = model.config.id2label
    data = read_conll(args.file)[: args.sentences]

    def run(chunk):
        batch = tokenizer(chunk, is_split_into_words=True, padding=True, truncation=True,
                          max_length=128, return_tensors="pt")
        with torch.inference_mode():
            best = model(**batch).logits.argmax(-1)
        tagged = 0
        for row in range(len(chunk)):
            previous = None
            for position, word in enumerate(batch.word_ids(row)):
                if word is not None and word != previous:
                    _ = labels[int(best[row, position])]
                    tagged += 1
                previous = word
        return tagged

    run(data[: args.batch_size])
    start = time.perf_counter()
    words = sum(run(data[i:i + args.batch_size]) for i in range(0, len(data), args.batch_size))
    seconds = time.perf_counter() - start
    print(json.dumps({"threads": args.threads, "batch_size": args.batch_size, "sentences": len(data),
                      "seconds": seconds, "sentences_per_s": len(data) / seconds,
                      "words_per_s": words / seconds, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
