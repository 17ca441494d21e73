"""How much the authors' way of making LLM-DMsRec's training candidates leaks, measured on Beauty.

    python benchmarks/candidate_leak.py --model srgnn --epochs 3

Builds (or reuses) both candidate files of the Beauty dataset with the same candidate runs: the
cross-fitted one (each fold's train examples scored by a model trained on the other folds' sessions)
and the leaky one (train examples scored by the model trained on all of them, as the authors did).
Prints, per split, how often the target is among an example's top-``--top`` candidates, and writes
``docs/results/candidate-leak.md``. The settings match ``experiments/dmsrec-beauty.yaml`` (SR-GNN
candidates, 3 epochs per run, 2 folds), so the runs are shared with that grid.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, command_line, machine, prepare_beauty, write_markdown  # noqa: E402

from intentrec.data.dataset import PreparedDataset  # noqa: E402
from intentrec.semantic.candidates import cross_fit_candidates  # noqa: E402


def hit_rates(path: Path, dataset: PreparedDataset, top: int) -> dict[str, float]:
    table = pq.read_table(path, columns=["example_id", "candidates"])
    ids = table.column("example_id").to_numpy()
    col = table.column("candidates").combine_chunks()
    width = len(col[0]) if len(col) else 0
    cands = np.asarray(col.flatten().to_numpy()).reshape(-1, width)[:, :top]
    row_of = {int(e): i for i, e in enumerate(ids)}
    out = {}
    for split in ("train", "valid", "test"):
        ex = dataset.examples(split)
        rows = np.fromiter((row_of[int(e)] for e in ex.example_ids), dtype=np.int64, count=len(ex))
        out[split] = float((cands[rows] == ex.targets[:, None]).any(axis=1).mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="srgnn")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--top", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    dataset_dir = prepare_beauty(REPO / "runs" / "bench-backbones-beauty")
    dataset = PreparedDataset(dataset_dir)
    common = dict(model=args.model, folds=args.folds, top=args.top, progress=True,
                  trainer_config={"epochs": args.epochs})  # the same settings as the grid's, so runs are shared
    rates = {}
    for leaky in (False, True):
        result = cross_fit_candidates(dataset_dir, leaky=leaky, **common)
        rates["leaky (authors)" if leaky else "cross-fitted (ours)"] = hit_rates(result.path, dataset, args.top)
    lines = [f"{name}: " + ", ".join(f"{s} {100 * v:.2f}%" for s, v in r.items()) for name, r in rates.items()]
    print("\n".join(lines))
    md = [
        "# LLM-DMsRec candidates: how much the authors' way leaks",
        "",
        f"Produced by `{command_line()}` on {machine()}.",
        "",
        f"Beauty (`llm4sbr-beauty` protocol). Candidates: each example's top-{args.top} items from {args.model} "
        f"({args.epochs} epochs per candidate run, {args.folds} folds over train sessions). The table gives the "
        f"share of examples whose target is among their top-{args.top} candidates.",
        "",
        "| candidates of the train examples | train | valid | test |",
        "|---|---:|---:|---:|",
        *[f"| {name} | " + " | ".join(f"{100 * r[s]:.2f}%" for s in ("train", "valid", "test")) + " |"
          for name, r in rates.items()],
        "",
        "Valid and test examples are scored by the model trained on all train examples in both rows. With "
        "the leaky candidates, the LLM (and the fusion) see training candidates that contain the target far "
        "more often than at test time; cross-fitted training candidates match what the model meets on test.",
        "",
    ]
    write_markdown(REPO / "docs" / "results" / "candidate-leak.md", "\n".join(md))


if __name__ == "__main__":
    main()
