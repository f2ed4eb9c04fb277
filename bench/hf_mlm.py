"""The peer of `alpaca train mlm`: masked-LM pre-training of a new BERT with transformers'
Trainer and DataCollatorForLanguageModeling (15%, 80/10/10), on the same text, tokenizer,
blocks, held-out files and hyper-parameters, as run_mlm.py would do it.

Blocks are built as alpaca builds them: each document's tokens (no special tokens) cut into
blocks of max_len - 2, never inside a word when the word fits the next block, framed
[CLS] block [SEP]. Held-out text is the --dev files; its masks are drawn once with a fixed
seed (as alpaca does), so every evaluation scores the same targets.

    ~/.cache/alpaca/venv/bin/python bench/hf_mlm.py --tokenizer DIR --corpus FILES... \
        --dev FILES... --hidden 256 --layers 4 --heads 4 --ffn 1024 --max-steps 300
Prints a JSON line with the held-out loss/perplexity/accuracy before and after, and the
training throughput (tokens/s over real tokens, like alpaca's).

Each side draws its own held-out masks, and which tokens are masked moves the loss by a few
hundredths (perplexity by ~3%) between draws. `--compare DIR` (alpaca's `best` checkpoint,
which transformers loads as is) scores that model too, on this script's masks with this
script's code, so both models are measured on the same targets ("compared" in the JSON).
"""
import argparse
import json
import math
import time

import torch
from transformers import (BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling,
                          PreTrainedTokenizerFast, Trainer, TrainingArguments)


def read_documents(paths):
    documents = []
    for path in paths:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read().replace("\r\n", "\n")
        if path.endswith(".json"):
            value = json.loads(text)
            items = value if isinstance(value, list) else [value]
            documents.extend(item["text"] for item in items)
        elif path.endswith(".jsonl"):
            documents.extend(json.loads(line)["text"] for line in text.splitlines() if line.strip())
        else:
            documents.append(text)
    return [d for d in documents if d.strip()]


def blocks(tokenizer, documents, max_len):
    room = max_len - 2
    result = []
    for text in documents:
        encoding = tokenizer._tokenizer.encode(text, add_special_tokens=False)
        ids, words = encoding.ids, encoding.word_ids
        continues = [i > 0 and words[i] is not None and words[i] == words[i - 1] for i in range(len(ids))]
        start = 0
        while start < len(ids):
            end = min(start + room, len(ids))
            if end < len(ids):
                word_start = end
                while word_start > start and continues[word_start]:
                    word_start -= 1
                if word_start > start:
                    end = word_start
            result.append([tokenizer.cls_token_id] + ids[start:end] + [tokenizer.sep_token_id])
            start = end
    return result


class Blocks(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return {"input_ids": self.rows[i]}


def evaluate(model, batches):
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for batch in batches:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            labels = batch["labels"]
            picked = labels != -100
            target = labels[picked]
            scores = logits[picked]
            loss_sum += torch.nn.functional.cross_entropy(scores, target, reduction="sum").item()
            correct += (scores.argmax(-1) == target).sum().item()
            count += target.numel()
    model.train()
    loss = loss_sum / count
    return {"loss": loss, "perplexity": math.exp(loss), "accuracy": correct / count, "masked_tokens": count}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--corpus", nargs="+", required=True)
    parser.add_argument("--dev", nargs="+", required=True)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--ffn", type=int, default=1024)
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup-ratio", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="/tmp/hf_mlm")
    parser.add_argument("--compare", help="a checkpoint to score on the same held-out masks")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    tokenizer = PreTrainedTokenizerFast(tokenizer_file=f"{args.tokenizer}/tokenizer.json",
                                        cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
                                        mask_token="[MASK]", unk_token="[UNK]")
    train_rows = blocks(tokenizer, read_documents(args.corpus), args.max_len)
    dev_rows = blocks(tokenizer, read_documents(args.dev), args.max_len)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    torch.manual_seed(args.seed + 1)
    dev_batches = [collator([{"input_ids": r} for r in dev_rows[i:i + args.eval_batch_size]])
                   for i in range(0, len(dev_rows), args.eval_batch_size)]
    torch.manual_seed(args.seed)

    config = BertConfig(vocab_size=len(tokenizer), hidden_size=args.hidden,
                        num_hidden_layers=args.layers, num_attention_heads=args.heads,
                        intermediate_size=args.ffn, max_position_embeddings=512,
                        hidden_dropout_prob=args.dropout, attention_probs_dropout_prob=args.dropout,
                        pad_token_id=tokenizer.pad_token_id)
    model = BertForMaskedLM(config)
    before = evaluate(model, dev_batches)

    training = TrainingArguments(
        output_dir=args.output, max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
        warmup_steps=args.warmup_ratio, weight_decay=args.weight_decay, max_grad_norm=1.0,
        lr_scheduler_type="linear", logging_steps=50, save_strategy="no", report_to=[],
        seed=args.seed, dataloader_num_workers=0, use_cpu=True,
        train_sampling_strategy="group_by_length",
    )
    trainer = Trainer(model=model, args=training, train_dataset=Blocks(train_rows),
                      data_collator=collator)
    started = time.time()
    trainer.train()
    seconds = time.time() - started
    steps = args.max_steps
    # Real tokens seen: blocks are nearly all full, so steps × batch × mean block length.
    mean_length = sum(len(r) for r in train_rows) / len(train_rows)
    tokens = steps * args.batch_size * mean_length
    after = evaluate(model, dev_batches)
    result = {
        "train_blocks": len(train_rows), "dev_blocks": len(dev_rows), "parameters": model.num_parameters(),
        "before": before, "after": after, "train_seconds": seconds,
        "tokens_per_second": tokens / seconds, "steps": steps,
    }
    if args.compare:
        other = BertForMaskedLM.from_pretrained(args.compare)
        result["compared"] = {"model": args.compare, "after": evaluate(other, dev_batches)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
