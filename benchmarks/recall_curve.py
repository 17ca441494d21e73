"""Recall@K (HR@K) against K for the rows of an experiment grid, as a PNG, from its committed records.

    python benchmarks/recall_curve.py benchmarks/records/semsr-beauty --out docs/results/semsr-beauty-recall.png

Each row (backbone, method, variant) is the mean over its seeds of the test HR@K of every K its
records hold; paper-mode rows are left out (their test numbers are maxima over epochs). Prints the
table it plots.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

_HR = re.compile(r"^HR@(\d+)$")


def curves(records_dir: Path) -> dict[str, dict[int, float]]:
    by_row: dict[str, list[dict[str, float]]] = defaultdict(list)
    for path in sorted(records_dir.rglob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("paper_mode"):
            continue
        label = record["backbone"] + (f"+{record['method']}" if record.get("method") else "")
        if record.get("variant") not in (None, "default"):
            label += f" ({record['variant']})"
        by_row[label].append(record["test"])
    out = {}
    for label, tests in sorted(by_row.items()):
        ks = sorted({int(m.group(1)) for t in tests for key in t if (m := _HR.match(key))})
        out[label] = {k: float(np.mean([t[f"HR@{k}"] for t in tests if f"HR@{k}" in t])) for k in ks}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("records", type=Path, help="a grid's records folder")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args()
    rows = curves(args.records)
    if not rows:
        print(f"no records under {args.records}", file=sys.stderr)
        return 1
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for label, points in rows.items():
        ks = sorted(points)
        ax.plot(ks, [100 * points[k] for k in ks], marker="o", label=label)
        print(label + ": " + ", ".join(f"HR@{k} {100 * points[k]:.2f}" for k in ks))
    ax.set_xscale("log")
    ax.set_xlabel("K (log scale)")
    ax.set_ylabel("test HR@K = Recall@K (%)")
    ax.set_title(f"Recall@K, {args.records.name} (mean over seeds, validation-selected)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
