#!/usr/bin/env python3
"""The peer of `alpaca train instruct`: LoRA (or full) supervised fine-tuning of a LLaMA model
with transformers + PEFT, timed per optimiser step.

Same recipe as alpaca's defaults: Stanford Alpaca's prompt (with input) around each
two-column CSV row (the fixed --instruction, the first column as input, the second as the
response), EOS appended, loss on response tokens only (prompt tokenized alone and labelled
-100, as Stanford's train.py does), cut to --max-len tokens; length-grouped batches (mega-batches
of 50 batches sorted by length, the batch holding the longest example first); AdamW (no weight
decay), lr 2e-4 with LoRA / 2e-5 full, 3% warm-up then cosine decay, clipping 1.0; LoRA r 8,
alpha 16, dropout 0.05 on q_proj/v_proj. fp32, --threads threads; or --precision bf16:
the forward under torch.autocast(cpu, bfloat16) over the f32 model, or bf16-weights: the base
model loaded in bfloat16 (PEFT keeps the adapters in f32). A plain training loop (no
Trainer), so nothing but the model's forward/backward and the optimiser is timed.

Prints one JSON line: steps, real (non-padding) tokens, seconds, tokens/s (all steps, and
without the first), peak RSS in MiB.

    ~/.cache/alpaca/venv/bin/python bench/hf_sft.py --model HF_DIR --data gtrain_10k.csv \
        --instruction "Correct the grammar of this text." --max-steps 10 --threads 2 [--full]
"""
import argparse
import csv
import json
import math
import random
import resource
import time

PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)


def read_pairs(path):
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f))
    pairs = []
    for row in rows[1:]:  # header: input,target
        if len(row) >= 2 and row[0].strip() and row[1].strip():
            pairs.append((row[0], row[1]))
    return pairs


def length_grouped_order(lengths, batch_size, seed):
    rng = random.Random(seed)
    indices = list(range(len(lengths)))
    rng.shuffle(indices)
    batches = []
    mega = 50 * batch_size
    for start in range(0, len(indices), mega):
        chunk = sorted(indices[start:start + mega], key=lambda i: -lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    longest = max(lengths)
    first = next(i for i, b in enumerate(batches) if any(lengths[j] == longest for j in b))
    batches[0], batches[first] = batches[first], batches[0]
    return batches


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="HF LlamaForCausalLM directory")
    parser.add_argument("--data", required=True, help="two-column CSV (input, target)")
    parser.add_argument("--instruction", required=True)
    parser.add_argument("--max-steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--full", action="store_true", help="train all weights, no LoRA")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--precision", choices=["fp32", "bf16", "bf16-weights"], default="fp32")
    args = parser.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    eos = tokenizer.eos_token_id
    bos = [tokenizer.bos_token_id] if getattr(tokenizer, "add_bos_token", False) else []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos

    examples = []
    for source, target in read_pairs(args.data):
        prompt = PROMPT_INPUT.format(instruction=args.instruction, input=source)
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r = tokenizer(target, add_special_tokens=False)["input_ids"] + [eos]
        ids = (bos + p + r)[: args.max_len]
        labels = ([-100] * (len(bos) + len(p)) + r)[: args.max_len]
        if any(label != -100 for label in labels[1:]):
            examples.append((ids, labels))

    weights = torch.bfloat16 if args.precision == "bf16-weights" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=weights)
    model.config.use_cache = False
    if args.full:
        lr = args.lr or 2e-5
    else:
        from peft import LoraConfig, get_peft_model
        lr = args.lr or 2e-4
        model = get_peft_model(model, LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"],
            bias="none", task_type="CAUSAL_LM"))
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    warmup = round(0.03 * args.max_steps)

    def lr_at(step):  # step counts from 0, as transformers' cosine schedule with warm-up
        if step < warmup:
            return lr * step / max(1, warmup)
        progress = (step - warmup) / max(1, args.max_steps - warmup)
        return lr * 0.5 * (1.0 + math.cos(math.pi * progress))

    order = length_grouped_order([len(e[0]) for e in examples], args.batch_size, args.seed)
    times, tokens, losses = [], [], []
    for step, batch in enumerate(order[: args.max_steps]):
        rows = [examples[i] for i in batch]
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
        attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows])
        start = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        tokens.append(sum(len(ids) for ids, _ in rows))
        losses.append(loss.item())

    rest = slice(1, None) if len(times) > 1 else slice(None)
    print(json.dumps({
        "peer": "transformers+peft" if not args.full else "transformers (full)",
        "precision": args.precision,
        "steps": len(times),
        "real_tokens": sum(tokens),
        "seconds": round(sum(times), 3),
        "tokens_per_second": round(sum(tokens) / sum(times), 1),
        "tokens_per_second_after_first_step": round(sum(tokens[rest]) / sum(times[rest]), 1),
        "step_seconds": [round(t, 3) for t in times],
        "losses": [round(x, 4) for x in losses],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "trainable_parameters": sum(p.numel() for p in parameters),
    }))


if __name__ == "__main__":
    main()
