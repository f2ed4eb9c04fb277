#!/usr/bin/env python3
"""Writes a seeded random subset of an Orange .tab file (keeping its three header lines), so
alpaca and the HF twin train on the same documents.

    python3 bench/tab_subset.py IN.tab OUT.tab COUNT [SEED]
"""
import random
import sys

source, target, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
seed = int(sys.argv[4]) if len(sys.argv) > 4 else 0
with open(source, encoding="utf-8") as f:
    lines = f.read().splitlines()
header, rows = lines[:3], [line for line in lines[3:] if line.strip()]
random.Random(seed).shuffle(rows)
with open(target, "w", encoding="utf-8") as f:
    f.write("\n".join(header + rows[:count]) + "\n")
