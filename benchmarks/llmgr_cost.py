"""LLMGR cost per LM: tokens per example, s/step and examples/s for training and scoring, peak RSS.

    python benchmarks/llmgr_cost.py DATASET --lm smollm2 --lm qwen0.5b --steps 20 --threads 1
    python benchmarks/llmgr_cost.py DATASET --lm smollm2 --steps 2 --batch-size 4     # a quick check

DATASET is a prepared dataset folder (e.g. the llmgr-beauty preset). The backbone (``--backbone``,
GC-SAN by default) keeps its random initialisation: the cost does not depend on its weights. Each LM
trains ``--steps`` stage-2 steps (forward, backward, AdamW) on the same seeded train batches, then
scores ``--steps`` batches over all items without gradients; the first step of each is a warm-up and
not timed. Run it on a quiet machine: nothing else should share the cores.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from intentrec.data.dataset import PreparedDataset
from intentrec.models.methods.registry import build_method
from intentrec.models.registry import build_backbone
from intentrec.training.config import TrainerConfig
from intentrec.training.trainer import peak_rss_mb


def measure(dataset: PreparedDataset, backbone: str, lm: str, args: argparse.Namespace) -> dict[str, float]:
    torch.manual_seed(0)
    method = {"lm": lm, "with_titles": args.with_titles, "stage1": False}
    model = build_method("llmgr", build_backbone(backbone, dataset.num_items, {}), method)
    model.prepare(dataset)
    plan = model.training_plan(TrainerConfig(batch_size=args.batch_size), torch.device("cpu"))
    examples = dataset.examples("train")
    batches = list(examples.batches(args.batch_size, shuffle=True, seed=0))[: args.steps + 1]
    tokens = [int(model.session_prompt(b)[1].sum()) / b.size for b in batches]

    model.train()
    train_seconds = []
    for b in batches:
        started = time.perf_counter()
        plan.optimizer.zero_grad(set_to_none=True)
        model.loss(b).backward()
        plan.optimizer.step()
        train_seconds.append(time.perf_counter() - started)
    model.eval()
    score_seconds = []
    with torch.no_grad():
        for b in batches:
            started = time.perf_counter()
            model(b)
            score_seconds.append(time.perf_counter() - started)
    train_step, score_step = float(np.mean(train_seconds[1:])), float(np.mean(score_seconds[1:]))
    return {
        "tokens/example": float(np.mean(tokens)),
        "train s/step": train_step,
        "train examples/s": args.batch_size / train_step,
        "score s/step": score_step,
        "score examples/s": args.batch_size / score_step,
        "peak RSS MB": peak_rss_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="a prepared dataset folder")
    parser.add_argument("--lm", action="append", help="LM spec, repeatable (default: smollm2)")
    parser.add_argument("--backbone", default="gcsan")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (one more is the warm-up)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--with-titles", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dataset = PreparedDataset(args.dataset)
    # peak RSS is per process and only grows: the LMs are measured in the order given, smallest first
    for lm in args.lm or ["smollm2"]:
        row = measure(dataset, args.backbone, lm, args)
        print(f"{lm}: " + "  ".join(f"{k} {v:.3g}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
