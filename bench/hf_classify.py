#!/usr/bin/env python3
"""The peer for `alpaca train classify`: the same fine-tuning with HF transformers + Trainer.

Orange .tab files (three header lines, then label<TAB>text), AutoModelForSequenceClassification,
AdamW (weight decay 0.01), 10% linear warm-up then linear decay, clipping 1.0, dynamic padding,
length-grouped batches, truncation to --max-len, seed 42. Prints test accuracy and wall time
per epoch, and writes them as JSON.

    ~/.cache/alpaca/venv/bin/python bench/hf_classify.py --model DIR --train T.tab --test E.tab \
        --output /tmp/hf-classify --threads 2 --epochs 2 --lr 1e-4 --max-len 128
"""
import argparse
import json
import os
import time


def read_tab(path):
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()[3:]
    return [tuple(line.split("\t", 1)) for line in lines if line.strip()]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--train", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              Trainer, TrainerCallback, TrainingArguments, set_seed)
    set_seed(args.seed)
    train, test = read_tab(args.train), read_tab(args.test)
    labels = sorted({label for label, _ in train})
    label2id = {l: i for i, l in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label2id)

    def encode(rows):
        out = []
        for label, text in rows:
            enc = tokenizer(text, truncation=True, max_length=args.max_len)
            enc["labels"] = label2id[label]
            out.append(dict(enc))
        return out

    train_data, test_data = encode(train), encode(test)
    epoch_times = []

    class Timer(TrainerCallback):
        def on_epoch_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_epoch_end(self, *a, **k):
            epoch_times.append(time.perf_counter() - self.start)

    training = TrainingArguments(
        output_dir=args.output, num_train_epochs=args.epochs, learning_rate=args.lr,
        per_device_train_batch_size=args.batch_size, weight_decay=0.01, warmup_steps=0.1,
        lr_scheduler_type="linear", max_grad_norm=1.0, train_sampling_strategy="group_by_length",
        save_strategy="no", eval_strategy="no", logging_steps=50, seed=args.seed, report_to=[],
        use_cpu=True, dataloader_num_workers=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=training, train_dataset=train_data,
                      data_collator=DataCollatorWithPadding(tokenizer), callbacks=[Timer()])
    trainer.train()
    collator = DataCollatorWithPadding(tokenizer)
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(test_data), 64):
            rows = test_data[start:start + 64]
            batch = collator(rows)
            gold = batch.pop("labels")
            correct += int((model(**batch).logits.argmax(-1) == gold).sum())
    accuracy = correct / len(test_data)
    result = {"test_accuracy": accuracy, "seconds_per_epoch": epoch_times, "threads": args.threads,
              "torch": torch.__version__}
    print(json.dumps(result))
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "hf_classify.json"), "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
