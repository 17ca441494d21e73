"""Training cost of a method over its backbone, measured in one process on the same batches.

    python benchmarks/method_cost.py --method llm4sbr --backbone srgnn --batches 300 --threads 1
    python benchmarks/method_cost.py --method semsr --backbone niser --batches 300 --threads 1

Both models train (forward, backward, Adam step) on the *same* shuffled train batches of Beauty
(``llm4sbr-beauty`` protocol), alternating blocks of ``--block`` batches so that machine noise hits
both alike. The text features are built (or reused from DATASET/semantic/) before timing starts:
they are precomputed by design and are not part of the training step. Prints ms/batch of each, the
ratio against the method's goal, and the epoch time each implies for the full train split; writes
``docs/results/method-cost.md`` (LLM4SBR) or ``docs/results/method-cost-<method>.md`` unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    REPO,
    add_malloc_tuning_flag,
    apply_malloc_tuning,
    command_line,
    machine,
    prepare_beauty,
    write_markdown,
)

from intentrec.data.dataset import PreparedDataset  # noqa: E402
from intentrec.models.methods import build_method  # noqa: E402
from intentrec.models.registry import backbone_class, build_backbone  # noqa: E402


def make(
    name: str, method: str | None, dataset: PreparedDataset, method_config: dict
) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    defaults = backbone_class(name).default_train
    model = build_backbone(name, dataset.num_items, {})
    if method:
        model = build_method(method, model, method_config)
    model.prepare(dataset)
    opt = torch.optim.Adam(
        model.parameters(), lr=defaults.get("lr", 1e-3), weight_decay=defaults.get("l2", 0.0), fused=True
    )
    return model.train(), opt


#: the goal each issue set for a method's training step over its backbone's (and where it comes from)
GOALS = {"llm4sbr": (1.3, "LLM4SBR paper: 3.7×"), "semsr": (1.5, "fused item table once per step")}


def step(model, opt, batch) -> None:
    opt.zero_grad(set_to_none=True)
    model.loss(batch).backward()
    opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="llm4sbr")
    parser.add_argument("--backbone", default="srgnn")
    parser.add_argument("--batches", type=int, default=300, help="timed batches per model")
    parser.add_argument("--block", type=int, default=25, help="batches per alternation block")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dataset", type=Path, default=None, help="prepared dataset (default: Beauty under runs/)")
    parser.add_argument("--set", action="append", default=[], help="method option key=value")
    parser.add_argument("--no-write", action="store_true")
    add_malloc_tuning_flag(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    apply_malloc_tuning(args.malloc_tuning)
    import yaml

    method_config = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    path = args.dataset or prepare_beauty(REPO / "runs" / "bench-backbones-beauty")
    dataset = PreparedDataset(path)
    train = dataset.examples("train")
    batch_size = backbone_class(args.backbone).default_train.get("batch_size", 100)

    t0 = time.perf_counter()
    base, base_opt = make(args.backbone, None, dataset, {})
    wrapped, wrapped_opt = make(args.backbone, args.method, dataset, method_config)
    prepare_seconds = time.perf_counter() - t0
    batches = list(train.batches(batch_size, shuffle=True, seed=0))[: args.batches + 5]
    for b in batches[:5]:  # warm-up, untimed
        step(base, base_opt, b)
        step(wrapped, wrapped_opt, b)
    timed = batches[5:]
    seconds = {"base": 0.0, "method": 0.0}
    for start in range(0, len(timed), args.block):
        block = timed[start : start + args.block]
        for key, (model, opt) in (("base", (base, base_opt)), ("method", (wrapped, wrapped_opt))):
            t = time.perf_counter()
            for b in block:
                step(model, opt, b)
            seconds[key] += time.perf_counter() - t
    n = len(timed)
    ms = {k: 1000 * v / n for k, v in seconds.items()}
    ratio = ms["method"] / ms["base"]
    per_epoch = {k: v / 1000 * train.num_batches(batch_size) for k, v in ms.items()}
    name = f"{args.method}({args.backbone})"
    goal, note = GOALS.get(args.method, (None, ""))
    goal_text = f"goal ≤ {goal}×; {note}" if goal else "no goal set"
    lines = [
        f"{args.backbone}: {ms['base']:.1f} ms/batch → {per_epoch['base']:.0f} s/epoch (projected)",
        f"{name}: {ms['method']:.1f} ms/batch → {per_epoch['method']:.0f} s/epoch (projected)",
        f"ratio {name} / {args.backbone}: {ratio:.3f}× ({goal_text})",
        f"(feature preparation before timing: {prepare_seconds:.1f} s; {n} batches of {batch_size}, {args.threads} thread(s))",
    ]
    print("\n".join(lines))
    if args.no_write:
        return
    data_label = f"`{args.dataset}`" if args.dataset else "Beauty (`llm4sbr-beauty` protocol)"
    text = "\n".join(
        [
            f"# Training cost: {name} over {args.backbone} alone",
            "",
            f"Produced by `{command_line()}` on {machine()}.",
            "",
            f"Both models take the same shuffled train batches of {data_label}, forward +",
            "backward + Adam step, alternating blocks of "
            f"{args.block} batches in one process. Text features are precomputed (files in",
            "`DATASET/semantic/`) and only looked up inside the step.",
            "",
            "| model | ms / batch | projected s / epoch |",
            "|---|---:|---:|",
            f"| {args.backbone} | {ms['base']:.1f} | {per_epoch['base']:.0f} |",
            f"| {name} | {ms['method']:.1f} | {per_epoch['method']:.0f} |",
            "",
            f"**Ratio: {ratio:.3f}×** ({goal_text}).",
            "",
            f"Timed batches: {n} per model, batch size {batch_size}, {args.threads} thread(s); malloc tuning "
            f"{'on (as in the trainer)' if args.malloc_tuning else 'off'}.",
            "",
        ]
    )
    suffix = "" if args.method == "llm4sbr" else f"-{args.method}"
    write_markdown(REPO / "docs" / "results" / f"method-cost{suffix}.md", text)


if __name__ == "__main__":
    main()
