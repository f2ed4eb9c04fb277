#!/usr/bin/env python3
"""PyTorch twin of `alpaca bench step`: the same reference training step.

BertForTokenClassification shaped like all-MiniLM-L6-v2 (hidden 384, 6 layers, 12 heads, ffn
1536, vocab 30522), 9 labels, batch 16 x 128 random token ids, dropout 0, AdamW (lr 5e-5,
weight decay 0.01), fp32 or bf16 autocast. Prints one JSON line and then
`median_s_per_step=<seconds>`.

    ~/.cache/alpaca/venv/bin/python bench/torch_step.py --threads 2 [--precision bf16] [--steps 10]
"""
import argparse
import json
import resource
import statistics
import time

import torch
from transformers import BertConfig, BertForTokenClassification


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        num_labels=9)
    model = BertForTokenClassification(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
    ids = torch.randint(1000, 30522, (args.batch_size, args.seq_len))
    labels = torch.randint(0, 9, (args.batch_size, args.seq_len))
    mask = torch.ones_like(ids)
    times = []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - start
        if step >= args.warmup:
            times.append(seconds)
    median = statistics.median(times)
    gflop = 137.8
    print(json.dumps({"threads": args.threads, "precision": args.precision, "steps": args.steps,
                      "median_s": median, "min_s": min(times), "max_s": max(times),
                      "gflop_per_s": gflop / median, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "final_loss": float(loss.detach()), "torch": torch.__version__}))
    print(f"median_s_per_step={median:.4f}")


if __name__ == "__main__":
    main()
