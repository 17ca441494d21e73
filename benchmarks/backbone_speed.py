"""Training-step time of every backbone on Amazon Beauty, measured in one process.

    python benchmarks/backbone_speed.py --steps 30 --threads 1

Each backbone: its default config and paper trainer settings (batch size, lr, L2; fused Adam as
in the trainer), batches from one seeded shuffle of the train split (Beauty, ``llm4sbr-beauty``
protocol), 3 warm-up steps, then ``--steps`` timed forward + backward + optimiser steps. The
projected epoch is ms/step × the number of batches of that batch size; evaluation is not included.
On a shared machine compare rows with each other (same run), not with other runs.

Writes ``docs/results/backbone-speed.md`` (atomically) and prints it.
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import UTC, datetime

from _common import REPO, add_malloc_tuning_flag, beauty_train_examples, command_line, machine, write_markdown


def all_trainable() -> list[str]:
    """Every registered backbone that has something to train (LLMSeqSim has not)."""
    from intentrec.models.registry import BACKBONES, load_all

    load_all()
    return [name for name in BACKBONES.names() if name != "llmseqsim"]


def peak_rss_of(name: str, threads: int, malloc_tuning: bool, steps: int, seed: int) -> float:
    """Peak RSS (MB) of a fresh process that loads Beauty and trains ``steps`` steps of ``name``."""
    import subprocess
    import sys

    # the high-water mark of the whole process would be the data loading's, so RSS is sampled after
    # every training step instead, in a process that has done nothing else but load the split
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import backbone_speed as b, _common as c; "
        "d, e = c.beauty_train_examples(int(sys.argv[3]), sys.argv[4] == '1'); "
        "r = b.measure(sys.argv[2], d, e, int(sys.argv[5]), int(sys.argv[6])); print(r['peak_rss_mb'])"
    )
    here = str(REPO / "benchmarks")
    args = [here, name, str(threads), "1" if malloc_tuning else "0", str(steps), str(seed)]
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def measure(name: str, dataset, examples, steps: int, seed: int) -> dict:
    import psutil
    import torch

    from intentrec.models.registry import backbone_class, build_backbone

    train = backbone_class(name).default_train
    batch_size = int(train.get("batch_size", 100))
    torch.manual_seed(seed)
    model = build_backbone(name, dataset.num_items, {})
    model.prepare(dataset)
    model.train()
    optimizer = torch.optim.Adam(
        model.parameters(), lr=train.get("lr", 1e-3), weight_decay=train.get("l2", 0.0), fused=True
    )
    batches = examples.batches(batch_size, shuffle=True, seed=seed)
    warmup = 3
    wall = cpu = 0.0
    process, peak_rss = psutil.Process(), 0
    for number, batch in enumerate(batches):
        if number == warmup + steps:
            break
        started, started_cpu = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        model.loss(batch).backward()
        optimizer.step()
        if number >= warmup:
            wall += time.perf_counter() - started
            cpu += time.process_time() - started_cpu
        peak_rss = max(peak_rss, process.memory_info().rss)
    done = min(steps, max(examples.num_batches(batch_size) - warmup, 0))
    per_step = wall / max(done, 1)
    flops = matmul_flops_of_step(model, batch)
    return {
        "backbone": name,
        "batch_size": batch_size,
        "steps": done,
        "ms_per_step": 1000 * per_step,
        "epoch_s": per_step * examples.num_batches(batch_size),
        "cpu_s_per_step": cpu / max(done, 1),
        "peak_rss_mb": peak_rss / 2**20,
        "gflop_per_example": flops / batch_size / 1e9,
        "gflop_per_s": flops / per_step / 1e9 if per_step else 0.0,
    }


def matmul_flops_of_step(model, batch) -> float:
    """FLOPs of the matrix products (mm, bmm, attention, conv) of one forward + backward on ``batch``,
    counted by ``torch.utils.flop_counter``; elementwise work is not counted."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        model.loss(batch).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=None, help="default: every backbone that trains")
    parser.add_argument(
        "--rss", action="store_true", help="also peak RSS per backbone, each in a fresh process (--steps steps)"
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "docs" / "results" / "backbone-speed.md"))
    add_malloc_tuning_flag(parser)
    args = parser.parse_args()

    models = args.models or all_trainable()
    dataset, examples = beauty_train_examples(args.threads, args.malloc_tuning)
    load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    rows = []
    for name in models:
        row = measure(name, dataset, examples, args.steps, args.seed)
        print(f"{name}: {row['ms_per_step']:.1f} ms/step (batch {row['batch_size']})", flush=True)
        rows.append(row)
    load_after = " ".join(f"{x:.1f}" for x in os.getloadavg())
    srgnn = next((r["epoch_s"] for r in rows if r["backbone"] == "srgnn"), None)
    if args.rss:
        for r in rows:
            r["peak_rss_mb"] = peak_rss_of(r["backbone"], args.threads, args.malloc_tuning, args.steps, args.seed)
            print(f"{r['backbone']}: peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    lines = [
        "# Training-step time per backbone (Amazon Beauty)",
        "",
        f"Generated by `{command_line()}` on {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}.",
        "",
        f"- Machine: {machine()}; torch threads: {args.threads}; load average before / after: "
        f"{load_before} / {load_after} (other jobs were running when the load is above the threads).",
        f"- Train split of Beauty (`llm4sbr-beauty` protocol): {len(examples):,} examples, "
        f"{dataset.num_items:,} items. Default configs, paper batch sizes, fused Adam; "
        f"{args.steps} timed steps after 3 warm-up steps, one seeded shuffle; malloc tuning "
        f"{'on (as in the trainer)' if args.malloc_tuning else 'off'}.",
        "- Projected epoch = ms/step × batches per epoch (training only, no evaluation). Rows are "
        "comparable with each other; absolute times depend on the machine's load.",
        "",
        "- `× SR-GNN`: projected epoch over SR-GNN's in this run (each model at its own paper batch size)."
        + (
            " `peak RSS`: sampled after every step, in a fresh process per backbone that loads Beauty's"
            " train split and trains the same steps (the split itself included)."
            if args.rss
            else ""
        ),
        "",
        "- `matmul GFLOP / example`: FLOPs of the matrix products of one forward + backward (counted by "
        "`torch.utils.flop_counter` on the last batch, elementwise work not counted) per example; "
        "`× SR-GNN FLOP` its ratio to SR-GNN's; `GFLOP/s`: those FLOPs over the measured step time. "
        "A model far above SR-GNN in time but at a similar GFLOP/s is slow because it computes more, "
        "not because it computes badly.",
        "",
        "| backbone | batch | ms / step | × SR-GNN | projected s / epoch | CPU s / step | matmul GFLOP / example "
        "| × SR-GNN FLOP | GFLOP/s |" + (" peak RSS MB |" if args.rss else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if args.rss else ""),
    ]
    srgnn_flops = next((r["gflop_per_example"] for r in rows if r["backbone"] == "srgnn"), None)
    for r in rows:
        ratio = f"{r['epoch_s'] / srgnn:.2f}" if srgnn else "—"
        flop_ratio = f"{r['gflop_per_example'] / srgnn_flops:.1f}" if srgnn_flops else "—"
        lines.append(
            f"| {r['backbone']} | {r['batch_size']} | {r['ms_per_step']:.1f} | {ratio} | {r['epoch_s']:.0f} | "
            f"{r['cpu_s_per_step']:.3f} | {r['gflop_per_example']:.3f} | {flop_ratio} | {r['gflop_per_s']:.0f} |"
            + (f" {r['peak_rss_mb']:.0f} |" if args.rss else "")
        )
    text = "\n".join(lines) + "\n"
    write_markdown(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
