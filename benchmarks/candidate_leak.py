"""How much the authors' way of making LLM-DMsRec's training candidates leaks, measured on Beauty.

    python benchmarks/candidate_leak.py --models gcegnn srgnn --epochs 3

Builds (or reuses), per candidate model, the candidate files of the Beauty dataset: a cross-fitted
one per fold count (each fold's train examples scored by a model trained on the other folds' sessions)
and the leaky one (train examples scored by the model trained on all of them, as the authors did).
Prints, per split, how often the target is among an example's top-``--top`` candidates, and writes
``docs/results/candidate-leak.md``. For GCE-GNN (the method's default candidate model) the settings
match ``experiments/dmsrec-beauty.yaml`` (3 epochs per run, 2 folds), so the files are shared with
that grid.
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
from intentrec.training.candidates import cross_fit_candidates  # noqa: E402


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
    parser.add_argument("--models", nargs="+", default=["gcegnn", "srgnn"], help="candidate models")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--folds", type=int, nargs="+", default=[2], help="cross-fitting fold counts")
    parser.add_argument("--top", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    dataset_dir = prepare_beauty(REPO / "runs" / "bench-backbones-beauty")
    dataset = PreparedDataset(dataset_dir)
    rows = []
    for model in args.models:
        common = dict(
            model=model, top=args.top, progress=True, trainer_config={"epochs": args.epochs}
        )  # the grid's settings, so files are shared
        # The leaky file uses only the all-train run, so one leaky row per model.
        for folds, leaky in [(k, False) for k in args.folds] + [(args.folds[0], True)]:
            result = cross_fit_candidates(dataset_dir, folds=folds, leaky=leaky, **common)
            rates = hit_rates(result.path, dataset, args.top)
            rows.append((model, "leaky (authors)" if leaky else f"cross-fitted, {folds} folds (ours)", rates))
            print(f"{model} {rows[-1][1]}: " + ", ".join(f"{s} {100 * v:.2f}%" for s, v in rates.items()))
    md = [
        "# LLM-DMsRec candidates: how much the authors' way leaks",
        "",
        f"Produced by `{command_line()}` on {machine()}.",
        "",
        f"Beauty (`llm4sbr-beauty` protocol). Candidates: each example's top-{args.top} items from the "
        f"candidate model ({args.epochs} epochs per candidate run; cross-fitting folds over train sessions). "
        f"The table gives the share of examples whose target is among their top-{args.top} candidates.",
        "",
        "| candidate model | candidates of the train examples | train | valid | test |",
        "|---|---|---:|---:|---:|",
        *[
            f"| {model} | {name} | " + " | ".join(f"{100 * r[s]:.2f}%" for s in ("train", "valid", "test")) + " |"
            for model, name, r in rows
        ],
        "",
        "Valid and test examples are scored by the model trained on all train examples in every row of a "
        "model, so their candidates are the same. Only the training signal differs: leaky training "
        "candidates contain the target far more often than valid and test ones, cross-fitted ones less "
        "often (with k folds, each fold's model saw only (k − 1)/k of the train sessions). What this does "
        "to the trained model is in docs/results/dmsrec-beauty.md (variants `leaky-candidates`, "
        "`paper-mode-leaky` and `folds5`).",
        "",
    ]
    write_markdown(REPO / "docs" / "results" / "candidate-leak.md", "\n".join(md))


if __name__ == "__main__":
    main()
