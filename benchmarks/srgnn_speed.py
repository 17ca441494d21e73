"""SR-GNN training speed on Amazon Beauty: our backbone against the authors' reference code.

    python benchmarks/srgnn_speed.py --reference-dir /tmp/srgnn-ref --reference-batches 150

What it measures (each part in its own subprocess, so peak RSS is per part):

1. ``ours`` and ``reference`` on the *same* first ``--reference-batches`` batches of one shuffled
   order of the train examples (batch 100, Adam lr 0.001, L2 1e-5, d = 100, one GNN step, CE over
   all items). The per-batch ratio and the epoch times projected from it are labelled as such.
2. One full training epoch of ours (unless ``--no-full-epoch``): measured, not projected.

The reference is ``CRIPAC-DIG/SR-GNN``'s ``pytorch_code`` checked out *outside* this repository; it
is imported unmodified and driven with the body of its own training loop, fed our train examples in
its input format (a pickled ``(sequences, targets)`` pair, written to a temporary folder).

Train examples come from ``--dataset`` (a prepared dataset) or, by default, from Beauty prepared with
the ``llm4sbr-beauty`` protocol under ``runs/`` (142,390 train examples after the validation carve-out).
Results go to ``docs/results/srgnn-speed.md`` (written atomically) and stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import shlex
import subprocess
import sys
import tempfile
import time
import types
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BATCH_SIZE = 100
HIDDEN = 100
LR, L2 = 0.001, 1e-5


# --------------------------------------------------------------------------- data


def load_train(args) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, str]:
    from intentrec.data.dataset import PreparedDataset

    if args.dataset is None:
        from intentrec.data.prepare import prepare_dataset
        from intentrec.paths import data_root

        args.dataset = REPO / "runs" / "bench-backbones-beauty" / "beauty"
        prepare_dataset("generic", data_root() / "amazon/beauty-2014-5core", args.dataset, protocol="llm4sbr-beauty")
    dataset = PreparedDataset(args.dataset)
    train = dataset.examples("train")
    source = f"prepared dataset {args.dataset} (llm4sbr-beauty protocol, train split after the validation carve-out)"
    return train.values, train.offsets, train.targets, dataset.num_items, source


# --------------------------------------------------------------------------- children


def child_ours(args) -> dict:
    import torch
    from _common import apply_malloc_tuning

    from intentrec.data.dataset import ExampleSet
    from intentrec.models.registry import build_backbone

    torch.set_num_threads(args.threads)
    apply_malloc_tuning(args.malloc_tuning)
    data = np.load(args.data, allow_pickle=False)
    examples = ExampleSet("train", np.arange(len(data["targets"])), data["values"], data["offsets"], data["targets"])
    torch.manual_seed(args.seed)
    model = build_backbone("srgnn", int(data["num_items"]), {"embedding_dim": HIDDEN, "steps": 1})
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=L2, fused=args.adam == "fused")
    model.train()
    limit = args.batches or examples.num_batches(BATCH_SIZE)
    wall, cpu = time.perf_counter(), time.process_time()
    done, loss_sum = 0, 0.0
    for batch in examples.batches(BATCH_SIZE):  # already in the shared shuffled order
        if done == limit:
            break
        optimizer.zero_grad(set_to_none=True)
        loss = model.loss(batch)
        loss.backward()
        optimizer.step()
        loss_sum += float(loss.detach())
        done += 1
    return {
        "batches": done,
        "wall_s": time.perf_counter() - wall,
        "cpu_s": time.process_time() - cpu,
        "mean_loss": loss_sum / max(done, 1),
    }


def child_reference(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(args.reference_dir) / "pytorch_code"))
    import model as reference_model  # the authors' pytorch_code/model.py, unmodified
    import utils as reference_utils  # the authors' pytorch_code/utils.py, unmodified

    with open(args.data, "rb") as fh:
        sequences, targets = pickle.load(fh)
    num_items = args.num_items
    train_data = reference_utils.Data((sequences, targets), shuffle=False)
    opt = types.SimpleNamespace(
        hiddenSize=HIDDEN, batchSize=BATCH_SIZE, step=1, nonhybrid=False,
        lr=LR, l2=L2, lr_dc_step=3, lr_dc=0.1,
    )  # fmt: skip
    torch.manual_seed(args.seed)
    net = reference_model.SessionGraph(opt, num_items + 1)
    net.train()
    slices = train_data.generate_batch(BATCH_SIZE)[: args.batches]
    wall, cpu = time.perf_counter(), time.process_time()
    loss_sum = 0.0
    for rows in slices:  # the body of the reference's train_test() loop
        net.optimizer.zero_grad()
        batch_targets, scores = reference_model.forward(net, rows, train_data)
        batch_targets = torch.Tensor(batch_targets).long()
        loss = net.loss_function(scores, batch_targets - 1)
        loss.backward()
        net.optimizer.step()
        loss_sum += float(loss.detach())
    return {
        "batches": len(slices),
        "wall_s": time.perf_counter() - wall,
        "cpu_s": time.process_time() - cpu,
        "mean_loss": loss_sum / max(len(slices), 1),
    }


def run_child(kind: str, data: Path, batches: int | None, args) -> dict:
    command = [
        sys.executable, str(Path(__file__).resolve()), "--child", kind, "--data", str(data),
        "--batches", str(batches or 0), "--threads", str(args.threads), "--seed", str(args.seed),
        "--adam", args.adam, "--reference-dir", str(args.reference_dir or ""),
        "--num-items", str(args.num_items),
        "--malloc-tuning" if args.malloc_tuning else "--no-malloc-tuning",
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"the {kind} run failed (exit {done.returncode})")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - started
    return result


# --------------------------------------------------------------------------- report


def report(results: dict, args, source: str, examples: int, command: str) -> str:
    n_batches = -(-examples // BATCH_SIZE)
    lines = [
        "# SR-GNN training speed on Amazon Beauty",
        "",
        f"Generated by `{command}` on {results['date']}.",
        "",
        (
            f"- Machine: {results['machine']}; torch threads: {args.threads}; "
            f"load average before / after: {results['load_before']} / {results['load_after']}."
        ),
        f"- Train examples: {source}. One epoch = {n_batches:,} batches of {BATCH_SIZE}.",
        (
            "- Both models: d = 100, one GNN step, Adam (lr 0.001, weight decay 1e-5), "
            f"cross-entropy over all {results['num_items']:,} items. Ours uses {args.adam} Adam"
            + (
                " and the trainer's malloc tuning (`keep_freed_memory`; the reference runs as shipped)."
                if args.malloc_tuning
                else " and glibc's malloc defaults."
            )
        ),
        "- Peak RSS is each subprocess's own maximum resident set size (data loading included).",
        "",
    ]
    same = results.get("ours_same")
    ref = results.get("reference")
    if same:
        lines += [
            f"## Same first {same['batches']} batches (per-batch times; epoch times PROJECTED)",
            "",
            "| run | batches | wall s | CPU s | ms / batch | projected epoch s | peak RSS MB | mean loss |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, res in (("ours", same), ("reference (CRIPAC-DIG/SR-GNN)", ref)):
            if not res:
                continue
            per = res["wall_s"] / res["batches"]
            lines.append(
                f"| {name} | {res['batches']} | {res['wall_s']:.1f} | {res['cpu_s']:.1f} | "
                f"{per * 1000:.1f} | {per * n_batches:.0f} (projected) | "
                f"{res['peak_rss_mb']:.0f} | {res['mean_loss']:.3f} |"
            )
        if ref:
            ratio = (ref["wall_s"] / ref["batches"]) / (same["wall_s"] / same["batches"])
            lines += ["", f"Per-batch speed-up of ours over the reference: **{ratio:.1f}x**."]
        lines.append("")
    epoch = results.get("ours_epoch")
    if epoch:
        lines += [
            "## One full epoch of ours (measured)",
            "",
            "| batches | wall s | CPU s | peak RSS MB | mean loss |",
            "|---:|---:|---:|---:|---:|",
            (
                f"| {epoch['batches']} | {epoch['wall_s']:.1f} | {epoch['cpu_s']:.1f} | "
                f"{epoch['peak_rss_mb']:.0f} | {epoch['mean_loss']:.3f} |"
            ),
            "",
        ]
    lines += [
        "CPU s is process CPU time (all threads). On a shared machine wall time depends on the",
        "other load; compare the two models only within one run.",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from _common import add_malloc_tuning_flag

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset", type=Path, help="prepared dataset folder (default: prepare llm4sbr-beauty under runs/)"
    )
    parser.add_argument("--reference-dir", type=Path, help="checkout holding pytorch_code/")
    parser.add_argument("--reference-batches", type=int, default=150)
    parser.add_argument("--full-epoch", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--adam", choices=("fused", "foreach"), default="fused")
    parser.add_argument("--seed", type=int, default=0)
    add_malloc_tuning_flag(
        parser, "ours keeps freed tensors in the heap, as the trainer does (the reference runs as shipped)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "srgnn-speed.md")
    parser.add_argument("--child", choices=("ours", "reference"), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--batches", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--num-items", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        result = child_ours(args) if args.child == "ours" else child_reference(args)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    if args.reference_dir and not (args.reference_dir / "pytorch_code" / "model.py").is_file():
        raise SystemExit(f"{args.reference_dir}/pytorch_code/model.py not found")

    from intentrec.experiments.records import machine
    from intentrec.io import atomic_open

    command = "python benchmarks/srgnn_speed.py " + shlex.join(sys.argv[1:])
    values, offsets, targets, num_items, source = load_train(args)
    args.num_items = num_items
    order = np.random.default_rng(args.seed).permutation(len(targets))
    lengths = np.diff(offsets)[order]
    new_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    take = np.repeat(offsets[:-1][order] - new_offsets[:-1], lengths) + np.arange(new_offsets[-1])
    values, offsets, targets = values[take], new_offsets, targets[order]

    results: dict = {
        "machine": machine(threads=args.threads),  # the children ran with args.threads
        "num_items": num_items,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_before": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }
    with tempfile.TemporaryDirectory(prefix="srgnn-speed-") as tmp:
        ours_data = Path(tmp) / "train.npz"
        np.savez(ours_data, values=values, offsets=offsets, targets=targets, num_items=num_items)
        if args.reference_batches:
            print(f"ours: first {args.reference_batches} batches ...", flush=True)
            results["ours_same"] = run_child("ours", ours_data, args.reference_batches, args)
        if args.reference_dir and args.reference_batches:
            # The reference's own input format: a pickled (sequences, targets) pair.
            reference_data = Path(tmp) / "train.txt"
            sequences = [values[offsets[i] : offsets[i + 1]].tolist() for i in range(len(targets))]
            with open(reference_data, "wb") as fh:
                pickle.dump((sequences, targets.tolist()), fh)
            del sequences
            print(f"reference: first {args.reference_batches} batches ...", flush=True)
            results["reference"] = run_child("reference", reference_data, args.reference_batches, args)
        if args.full_epoch:
            print("ours: one full epoch ...", flush=True)
            results["ours_epoch"] = run_child("ours", ours_data, None, args)
    results["load_after"] = " ".join(f"{x:.1f}" for x in os.getloadavg())

    text = report(results, args, source, len(targets), command)
    print(text)
    with atomic_open(args.out, "w", encoding="utf-8") as fh:
        fh.write(text)


if __name__ == "__main__":
    main()
