#!/usr/bin/env python3
"""Compares the training loss curves of two alpaca runs (their metrics.jsonl files).

Usage: bench/compare_loss_curves.py RUN_A/metrics.jsonl RUN_B/metrics.jsonl [UP_TO_STEP]

Both runs must log at the same steps (same --log-every, same data and batch size); prints the
largest and mean relative difference |b - a| / a of the logged training loss up to the step.
"""
import json
import sys


def curve(path):
    with open(path) as lines:
        return {
            event["step"]: event["loss"]
            for event in map(json.loads, lines)
            if event.get("event") == "train"
        }


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    a, b = curve(sys.argv[1]), curve(sys.argv[2])
    limit = int(sys.argv[3]) if len(sys.argv) == 4 else max(a)
    steps = sorted(step for step in a if step in b and step <= limit)
    if not steps:
        sys.exit("no logged step in common")
    relative = [abs(b[s] - a[s]) / a[s] for s in steps]
    worst = max(relative)
    print(
        f"{len(steps)} logged steps up to {limit}: largest relative difference "
        f"{worst:.4%} (step {steps[relative.index(worst)]}), mean {sum(relative) / len(relative):.4%}"
    )


if __name__ == "__main__":
    main()
