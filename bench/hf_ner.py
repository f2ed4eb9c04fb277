#!/usr/bin/env python3
"""The peer: fine-tune the same checkpoint on CoNLL-2003 with HF transformers + Trainer.

Same recipe as `alpaca train ner` defaults: AdamW (weight decay 0.01, none on biases and
LayerNorm), lr 5e-5 with 10% linear warm-up then linear decay, batch 16, max length 128,
gradient clipping 1.0, dynamic padding, length-grouped batches, first sub-token labelled,
evaluation on dev after every epoch, seed 42. Prints dev/test entity scores (seqeval), the
seed's token-level table (sklearn), and wall time per epoch, and writes them as JSON.

    ~/.cache/alpaca/venv/bin/python bench/hf_ner.py --model DIR --data DIR --threads 2 \
        --output /tmp/hf-ner [--epochs 3] [--max-train N]
"""
import argparse
import json
import os
import time


def read_conll(path):
    sentences, words, tags = [], [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("-DOCSTART-"):
                if words:
                    sentences.append((words, tags))
                    words, tags = [], []
                continue
            parts = line.split()
            words.append(parts[0])
            tags.append(parts[-1])
    if words:
        sentences.append((words, tags))
    return sentences


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="directory with train.txt valid.txt test.txt")
    parser.add_argument("--output", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--max-train", type=int, default=None)
    parser.add_argument("--max-eval", type=int, default=None)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    from transformers import (AutoModelForTokenClassification, AutoTokenizer,
                              DataCollatorForTokenClassification, Trainer, TrainerCallback,
                              TrainingArguments, set_seed)
    from seqeval.metrics import classification_report as entity_table, f1_score
    from sklearn.metrics import classification_report as token_table
    set_seed(args.seed)

    splits = {name: read_conll(os.path.join(args.data, f"{name}.txt")) for name in ("train", "valid", "test")}
    if args.max_train:
        splits["train"] = splits["train"][: args.max_train]
    if args.max_eval:
        splits["valid"] = splits["valid"][: args.max_eval]
        splits["test"] = splits["test"][: args.max_eval]
    labels = sorted({t for _, tags in splits["train"] for t in tags})
    label2id = {l: i for i, l in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForTokenClassification.from_pretrained(
        args.model, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label2id)

    def encode(sentences):
        out = []
        for words, tags in sentences:
            enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=args.max_len)
            previous, ids = None, []
            for w in enc.word_ids():
                if w is None or w == previous:
                    ids.append(-100)
                else:
                    ids.append(label2id[tags[w]])
                previous = w
            enc["labels"] = ids
            out.append(dict(enc))
        return out

    data = {name: encode(s) for name, s in splits.items()}

    def predict(name):
        # Our own loop in file order (Trainer.predict may reorder by length).
        collator = DataCollatorForTokenClassification(tokenizer)
        model.eval()
        gold, predicted = [], []
        with torch.no_grad():
            for start in range(0, len(data[name]), 64):
                rows = data[name][start:start + 64]
                batch = collator(rows)
                logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
                best = logits.argmax(-1)
                for i, row in enumerate(rows):
                    words, tags = splits[name][start + i]
                    p = [labels[int(best[i, j])] for j, l in enumerate(row["labels"]) if l != -100]
                    p += ["O"] * (len(tags) - len(p))  # words cut by truncation
                    gold.append(tags)
                    predicted.append(p)
        flat_gold = [t for s in gold for t in s]
        flat_pred = [t for s in predicted for t in s]
        return {
            "entity_f1": f1_score(gold, predicted),
            "entity_table": entity_table(gold, predicted, digits=4),
            "token_table": token_table(flat_gold, flat_pred, labels=labels, digits=4, zero_division=0),
        }

    epoch_times = []

    class Timer(TrainerCallback):
        def on_epoch_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_epoch_end(self, *a, **k):
            epoch_times.append(time.perf_counter() - self.start)

    training = TrainingArguments(
        output_dir=args.output, num_train_epochs=args.epochs, learning_rate=args.lr,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=64,
        weight_decay=0.01, warmup_steps=0.1, lr_scheduler_type="linear", max_grad_norm=1.0,
        train_sampling_strategy="group_by_length", eval_strategy="epoch", save_strategy="no", logging_steps=50,
        seed=args.seed, report_to=[], use_cpu=True, dataloader_num_workers=0,
        disable_tqdm=True)
    trainer = Trainer(model=model, args=training, train_dataset=data["train"],
                      eval_dataset=data["valid"],
                      data_collator=DataCollatorForTokenClassification(tokenizer),
                      callbacks=[Timer()])
    started = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - started
    result = {"threads": args.threads, "epochs": args.epochs, "seconds_per_epoch": epoch_times,
              "train_seconds": total, "torch": torch.__version__}
    for name in ("valid", "test"):
        result[name] = predict(name)
        print(f"== {name}: entity F1 {result[name]['entity_f1']:.4f}")
        print(result[name]["entity_table"])
        print(result[name]["token_table"])
    print("seconds per epoch:", ", ".join(f"{t:.1f}" for t in epoch_times))
    with open(os.path.join(args.output, "hf_report.json"), "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
