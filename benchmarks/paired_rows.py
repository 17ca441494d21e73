"""Paired test of two rows of a grid from their run records (any two rows, not only method vs backbone).

    python benchmarks/paired_rows.py benchmarks/records/llmgr-beauty/beauty/gcsan+llmgr/wo-stage1 \\
        benchmarks/records/llmgr-beauty/beauty/gcsan+llmgr/default --k 20

Each side is a row's folder of records (one JSON per seed) or one record. Seed s of A is paired with
seed s of B over the test examples both scored (seeds pooled), as the experiment report pairs a method
with its backbone: exact McNemar test for HR@K, Wilcoxon signed-rank on reciprocal ranks for MRR@K.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from intentrec.experiments.significance import format_p, paired_test, paired_values


def _records(path: Path) -> list[dict]:
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files:
        raise SystemExit(f"error: no records at {path}")
    return [json.loads(f.read_text(encoding="utf-8")) for f in files]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path, help="row A: a folder of records or one record")
    parser.add_argument("b", type=Path, help="row B: the row A is compared with")
    parser.add_argument("--k", type=int, default=20, help="cut-off K (default 20)")
    args = parser.parse_args()
    a, b = _records(args.a), _records(args.b)
    values = paired_values(a, b, args.k)
    test = paired_test(a, b, args.k)
    if values is None or test is None:
        print(f"error: no seed has per-example test ranks up to {args.k} on both sides", file=sys.stderr)
        return 1
    hit_a, hit_b, rr_a, rr_b = values
    seeds = sorted({r["seed"] for r in a} & {r["seed"] for r in b})
    print(f"A: {args.a}  B: {args.b}  seeds {seeds}, {test.pairs} (seed, example) pairs")
    print(f"HR@{args.k}:  A {100 * np.mean(hit_a):.2f}  B {100 * np.mean(hit_b):.2f}  p {format_p(test.p_hr)}")
    print(f"MRR@{args.k}: A {100 * np.mean(rr_a):.2f}  B {100 * np.mean(rr_b):.2f}  p {format_p(test.p_mrr)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
