"""SR-GNN accuracy on Amazon Beauty: the authors' reference code against ours, same split, same budget.

    python benchmarks/srgnn_reference_accuracy.py --reference-dir /tmp/srgnn-ref --epochs 5

Both models train for ``--epochs`` epochs on the train split of Beauty prepared with the
``llm4sbr-beauty`` protocol (after the validation carve-out), with the same hyper-parameters
(d = 100, one GNN step, batch 100, Adam lr 0.001, weight decay 1e-5, StepLR step 3, gamma 0.1,
cross-entropy over all items). After every epoch both are scored on the validation and test
splits, and *both* are measured by :func:`intentrec.evaluation.ranking_metrics` (full ranking, ties
against the target), so any difference comes from the models, not from metric code. The reported
row is the epoch with the best validation MRR@20 (test never selects).

The reference is ``CRIPAC-DIG/SR-GNN``'s ``pytorch_code`` checked out *outside* this repository,
imported unmodified and driven with the body of its own ``train_test`` (including its
``scheduler.step()`` at the start of each epoch, which decays the learning rate one epoch earlier
than a standard StepLR loop). Ours is ``intentrec train`` with the same settings and
``patience`` off. Each side runs in its own subprocess (peak RSS per side), one after the other.

Writes ``docs/results/srgnn-reference-accuracy.md`` (atomically) and prints it.
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import tempfile
import time
import types
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from _common import REPO, command_line, machine, prepare_beauty, write_markdown

from intentrec.io import write_json

BATCH_SIZE = 100
HIDDEN = 100
LR, L2, DECAY_STEP, DECAY = 0.001, 1e-5, 3, 0.1
SPLITS = ("train", "valid", "test")


def _rows(examples) -> tuple[list[list[int]], list[int]]:
    values, offsets = examples.values, examples.offsets
    sequences = [values[offsets[i] : offsets[i + 1]].tolist() for i in range(len(examples.targets))]
    return sequences, examples.targets.tolist()


def child_reference(args) -> dict:
    import torch

    from intentrec.evaluation import ranking_metrics
    from intentrec.training.trainer import peak_rss_mb

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(args.reference_dir) / "pytorch_code"))
    import model as reference_model  # the authors' pytorch_code/model.py, unmodified
    import utils as reference_utils  # the authors' pytorch_code/utils.py, unmodified

    with open(args.data, "rb") as fh:
        splits = pickle.load(fh)  # written by this script, never user input
    np.random.seed(args.seed)  # the reference shuffles with np.random
    torch.manual_seed(args.seed)
    train_data = reference_utils.Data(splits["train"], shuffle=True)
    eval_data = {name: reference_utils.Data(splits[name], shuffle=False) for name in ("valid", "test")}
    opt = types.SimpleNamespace(
        hiddenSize=HIDDEN, batchSize=BATCH_SIZE, step=1, nonhybrid=False,
        lr=LR, l2=L2, lr_dc_step=DECAY_STEP, lr_dc=DECAY,
    )  # fmt: skip
    net = reference_model.SessionGraph(opt, args.num_items + 1)
    history = []
    for epoch in range(1, args.epochs + 1):
        started = time.perf_counter()
        net.scheduler.step()  # as the reference's train_test() does, before training
        net.train()
        for rows in train_data.generate_batch(BATCH_SIZE):  # the body of its training loop
            net.optimizer.zero_grad()
            targets, scores = reference_model.forward(net, rows, train_data)
            loss = net.loss_function(scores, torch.Tensor(targets).long() - 1)
            loss.backward()
            net.optimizer.step()
        train_seconds = time.perf_counter() - started
        net.eval()
        metrics = {}
        with torch.no_grad():
            for name, data in eval_data.items():
                parts, columns = [], []
                for rows in data.generate_batch(BATCH_SIZE):
                    targets, scores = reference_model.forward(net, rows, data)
                    parts.append(ranking_metrics(scores, torch.as_tensor(targets).long() - 1))
                    columns.append(len(targets))
                metrics[name] = _weighted(parts, columns)
        history.append({"epoch": epoch, "train_seconds": train_seconds, **metrics})
        print(json.dumps({"progress": f"reference epoch {epoch}", **history[-1]}), file=sys.stderr, flush=True)
    return {"history": history, "peak_rss_mb": peak_rss_mb()}


def _weighted(parts: list[dict], sizes: list[int]) -> dict:
    total = sum(sizes)
    return {key: sum(p[key] * n for p, n in zip(parts, sizes)) / total for key in parts[0]}


def child_ours(args) -> dict:
    from intentrec.training import train
    from intentrec.training.trainer import peak_rss_mb

    out = Path(tempfile.mkdtemp(prefix="srgnn-ours-"))
    result = train(
        args.dataset,
        "srgnn",
        {"embedding_dim": HIDDEN, "steps": 1},
        {
            "epochs": args.epochs,
            "patience": None,
            "seed": args.seed,
            "num_threads": args.threads,
            "lr": LR,
            "l2": L2,
            "batch_size": BATCH_SIZE,
            "lr_decay_step": DECAY_STEP,
            "lr_decay_gamma": DECAY,
            "track_test": True,
        },  # fmt: skip
        out=out,
        progress=False,
        command=command_line(),
    )
    history = [
        {"epoch": h["epoch"], "train_seconds": h["train_seconds"], "valid": h["valid"], "test": h["test"]}
        for h in result.history
        if "train_seconds" in h
    ]
    return {"history": history, "peak_rss_mb": peak_rss_mb(), "run_dir": str(out)}


def run_child(kind: str, args, data: Path | None) -> dict:
    command = [
        sys.executable, str(Path(__file__).resolve()), "--child", kind, "--epochs", str(args.epochs),
        "--threads", str(args.threads), "--seed", str(args.seed), "--dataset", str(args.dataset),
        "--reference-dir", str(args.reference_dir), "--num-items", str(args.num_items),
        "--data", str(data or ""),
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the {kind} run failed (exit {done.returncode}); its stderr is above")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - started
    return result


def _shown(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def selected(history: list[dict]) -> dict:
    return max(history, key=lambda h: h["valid"]["MRR@20"])


def pct(value: float) -> str:
    return f"{100 * value:.2f}"


def report(results: dict, args, command: str) -> str:
    ref, ours = results["reference"], results["ours"]
    lines = [
        "# SR-GNN accuracy: the authors' reference code against ours (Amazon Beauty)",
        "",
        f"Generated by `{command}` on {results['date']}.",
        "",
        f"- Machine: {results['machine']}; torch threads of each training side: "
        f"{results.get('threads', args.threads)}; other jobs shared the two cores.",
        (
            f"- Data: `{results['dataset']}`; train {results['sizes']['train']:,} / valid "
            f"{results['sizes']['valid']:,} / test {results['sizes']['test']:,} examples, "
            f"{args.num_items:,} items."
        ),
        (
            f"- Both: {args.epochs} epochs, d = 100, one GNN step, batch 100, Adam lr 0.001, weight decay "
            "1e-5, StepLR(3, 0.1); the reference steps its scheduler at the start of each epoch (its own "
            "loop), so its learning rate drops after epoch 2 instead of 3."
        ),
        (
            "- Both measured by `intentrec.evaluation.ranking_metrics` on the full item set; the row is "
            "the epoch with the best validation MRR@20. Values in percent."
        ),
        "",
        "| model | selected epoch | valid HR@20 | valid MRR@20 | test HR@5 | test MRR@5 | test HR@10 | test MRR@10 "
        "| test HR@20 | test MRR@20 | test NDCG@20 | s/epoch (train) | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, side in (("reference (CRIPAC-DIG/SR-GNN)", ref), ("ours (intentrec srgnn)", ours)):
        best = selected(side["history"])
        seconds = np.mean([h["train_seconds"] for h in side["history"]])
        t = best["test"]
        lines.append(
            f"| {label} | {best['epoch']} | {pct(best['valid']['HR@20'])} | {pct(best['valid']['MRR@20'])} | "
            f"{pct(t['HR@5'])} | {pct(t['MRR@5'])} | {pct(t['HR@10'])} | {pct(t['MRR@10'])} | "
            f"{pct(t['HR@20'])} | {pct(t['MRR@20'])} | {pct(t['NDCG@20'])} | {seconds:.1f} | "
            f"{side['peak_rss_mb']:.0f} |"
        )
    ratio = np.mean([h["train_seconds"] for h in ref["history"]]) / np.mean(
        [h["train_seconds"] for h in ours["history"]]
    )
    lines += [
        "",
        f"Training time per epoch, reference / ours, measured in this run: **{ratio:.1f}×**.",
        "",
        "## Every epoch (valid / test, HR@20 and MRR@20)",
        "",
        "| epoch | reference valid | reference test | ours valid | ours test |",
        "|---:|---|---|---|---|",
    ]
    for r, o in zip(ref["history"], ours["history"]):
        cell = lambda h, s: f"{pct(h[s]['HR@20'])} / {pct(h[s]['MRR@20'])}"  # noqa: E731
        lines.append(
            f"| {r['epoch']} | {cell(r, 'valid')} | {cell(r, 'test')} | {cell(o, 'valid')} | {cell(o, 'test')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-dir", type=Path, help="checkout holding pytorch_code/ (outside the repo)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset", type=Path, help="prepared dataset (default: Beauty under runs/)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "srgnn-reference-accuracy.md")
    parser.add_argument("--child", choices=("ours", "reference"), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--num-items", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--report-only", action="store_true", help="rebuild the Markdown from the saved JSON results")
    args = parser.parse_args()

    if args.report_only:
        results = json.loads(args.out.with_suffix(".json").read_text())
        args.epochs, args.num_items = results["epochs"], results["num_items"]
        text = report(results, args, results["command"])
        write_markdown(args.out, text)
        print(text)
        return

    if args.child:
        result = child_reference(args) if args.child == "reference" else child_ours(args)
        print(json.dumps(result))
        return
    if args.reference_dir is None or not (args.reference_dir / "pytorch_code" / "model.py").is_file():
        raise SystemExit("--reference-dir must be a checkout of CRIPAC-DIG/SR-GNN (with pytorch_code/model.py)")
    from intentrec.data.dataset import PreparedDataset

    if args.dataset is None:
        args.dataset = prepare_beauty(REPO / "runs" / "bench-backbones-beauty")
    dataset = PreparedDataset(args.dataset)
    args.num_items = dataset.num_items
    splits = {name: _rows(dataset.examples(name)) for name in SPLITS}
    with tempfile.TemporaryDirectory(prefix="srgnn-acc-") as tmp:
        data = Path(tmp) / "splits.pkl"  # the reference's input format is a pickle
        with open(data, "wb") as fh:
            pickle.dump(splits, fh)
        print(f"reference: {args.epochs} epochs ...", flush=True)
        reference = run_child("reference", args, data)
    print(f"ours: {args.epochs} epochs ...", flush=True)
    ours = run_child("ours", args, None)
    results = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(threads=args.threads),
        "sizes": {name: len(splits[name][1]) for name in SPLITS},
        "dataset": f"{_shown(args.dataset)} (protocol {dataset.manifest.get('protocol')})",
        "epochs": args.epochs,
        "num_items": args.num_items,
        "threads": args.threads,
        "command": command_line(),
        "reference": reference,
        "ours": ours,
    }
    text = report(results, args, results["command"])
    write_markdown(args.out, text)
    write_json(args.out.with_suffix(".json"), results)
    print(text)


if __name__ == "__main__":
    main()
