"""Training-step time with and without the trainer's malloc tuning, per backbone (Amazon Beauty).

    python benchmarks/malloc_tuning.py --models srgnn tagnn --steps 20 --rounds 2 --threads 1

``intentrec.training.allocator.keep_freed_memory`` raises glibc's mmap and trim thresholds so large
freed tensors stay in the heap between steps. Each measurement is a child process (the setting is
per process and cannot be undone): "default" leaves glibc alone, "tuned" calls the function first.
The two alternate (default, tuned, default, tuned, ...) so load changes hit both; each child trains
the same seeded batches (3 warm-up steps, then ``--steps`` timed ones) and reports ms/step and its
peak RSS. The ratio is default / tuned of the per-mode medians.

Writes ``docs/results/malloc-tuning.md`` (atomically) and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime

from _common import REPO, command_line, machine, prepare_beauty, write_markdown


def child(args) -> None:
    import torch

    from intentrec.data.dataset import PreparedDataset
    from intentrec.models.registry import backbone_class, build_backbone
    from intentrec.training.allocator import keep_freed_memory

    if args.mode == "tuned" and not keep_freed_memory():
        raise SystemExit("mallopt was refused (not glibc?)")
    torch.set_num_threads(args.threads)
    dataset = PreparedDataset(args.dataset)
    examples = dataset.examples("train")
    train = backbone_class(args.model).default_train
    batch_size = int(train.get("batch_size", 100))
    torch.manual_seed(args.seed)
    model = build_backbone(args.model, dataset.num_items, {})
    model.prepare(dataset)
    model.train()
    optimizer = torch.optim.Adam(
        model.parameters(), lr=train.get("lr", 1e-3), weight_decay=train.get("l2", 0.0), fused=True
    )
    warmup, wall = 3, 0.0
    for number, batch in enumerate(examples.batches(batch_size, shuffle=True, seed=args.seed)):
        if number == warmup + args.steps:
            break
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        model.loss(batch).backward()
        optimizer.step()
        if number >= warmup:
            wall += time.perf_counter() - started
    print(
        json.dumps(
            {
                "ms_per_step": 1000 * wall / args.steps,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "batch_size": batch_size,
            }
        )
    )


def measure(model: str, mode: str, dataset, args) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        "--model",
        model,
        "--mode",
        mode,
        "--dataset",
        str(dataset),
        "--steps",
        str(args.steps),
        "--threads",
        str(args.threads),
        "--seed",
        str(args.seed),
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    if done.returncode != 0:
        raise SystemExit(f"{model} ({mode}) failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["srgnn", "tagnn", "gcegnn", "narm", "sasrec"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2, help="default/tuned pairs per model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "docs" / "results" / "malloc-tuning.md"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["default", "tuned"], help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"):
        os.environ.pop(name, None)  # "default" must mean glibc's defaults
    dataset = prepare_beauty(REPO / "runs" / "bench-backbones-beauty")
    load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    rows = []
    for model in args.models:
        results: dict[str, list[dict]] = {"default": [], "tuned": []}
        for _ in range(args.rounds):
            for mode in ("default", "tuned"):
                results[mode].append(measure(model, mode, dataset, args))
        ms = {m: statistics.median(r["ms_per_step"] for r in rs) for m, rs in results.items()}
        rss = {m: max(r["peak_rss_mb"] for r in rs) for m, rs in results.items()}
        row = {
            "model": model,
            "batch_size": results["default"][0]["batch_size"],
            "default_ms": ms["default"],
            "tuned_ms": ms["tuned"],
            "ratio": ms["default"] / ms["tuned"],
            "default_rss": rss["default"],
            "tuned_rss": rss["tuned"],
            "all_ms": {m: [round(r["ms_per_step"], 1) for r in rs] for m, rs in results.items()},
        }
        print(f"{model}: {row['default_ms']:.1f} → {row['tuned_ms']:.1f} ms/step ({row['ratio']:.2f}x)", flush=True)
        rows.append(row)
    load_after = " ".join(f"{x:.1f}" for x in os.getloadavg())

    lines = [
        "# Training-step time with and without the malloc tuning (Amazon Beauty)",
        "",
        f"Generated by `{command_line()}` on {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}.",
        "",
        f"- Machine: {machine(threads=args.threads)}; load average before / after: {load_before} / "
        f"{load_after} (other jobs were running when it is above the threads).",
        f"- Each cell: median over {args.rounds} child processes per mode, run alternately; each child "
        f"times {args.steps} training steps (forward, backward, fused Adam) after 3 warm-up steps on "
        "the same seeded batches of the train split, default config and paper batch size.",
        "- default: glibc as it starts; tuned: `intentrec.training.allocator.keep_freed_memory()` "
        "first (what `intentrec train` does unless `train.keep_freed_memory=false`).",
        "",
        "| backbone | batch | default ms / step | tuned ms / step | speed-up | peak RSS MB default / tuned | all runs (ms / step) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        runs = "; ".join(f"{m}: {', '.join(str(v) for v in vs)}" for m, vs in r["all_ms"].items())
        lines.append(
            f"| {r['model']} | {r['batch_size']} | {r['default_ms']:.1f} | {r['tuned_ms']:.1f} | "
            f"{r['ratio']:.2f}× | {r['default_rss']:.0f} / {r['tuned_rss']:.0f} | {runs} |"
        )
    text = "\n".join(lines) + "\n"
    write_markdown(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
