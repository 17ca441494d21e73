"""DHCN against the authors' code on the same batches: scores, losses, gradients and per-batch time.

    git clone https://github.com/xiaxin1998/DHCN /tmp/dhcn-ref      # outside this repository
    python benchmarks/dhcn_reference.py --reference-dir /tmp/dhcn-ref --batches 100

What it does (ours and the reference each in their own subprocess, so timings and peak RSS are per part):

1. One seeded shuffle of the train examples of ``--dataset`` (default: Beauty, ``llm4sbr-beauty``
   protocol, prepared under ``runs/``); batches of 100, the first ``--batches`` of them.
2. Ours is built with ``hyperedges="examples"`` (the code's hyperedges: every train example) and
   its initial weights are copied into the reference, so both start from the same numbers.
3. Both score the first batch in evaluation mode (no training yet): the scores must agree to float
   rounding (the maths is the same: ours propagates ``D⁻¹H (B⁻¹Hᵀ X)`` in two sparse steps, the code
   multiplies by the precomputed ``D⁻¹HB⁻¹Hᵀ``).
4. Both train on the same batches (Adam lr 0.001, no weight decay, β = 0.01, 3 layers), with the same
   torch seed before every step, so the self-supervised term shuffles the same rows and columns.
   Per step: both losses, and at step 0 the gradient of the item table. Then the first batch is
   scored again after the training steps. ``ssl`` differs by construction only in the code's
   ``log(1e-8 + σ(x))`` against our exact ``softplus`` (a difference below 1e-8 per session unless σ
   saturates).
5. Time per training batch (forward + backward + Adam step) of both, labelled as measured on this
   machine at this load; compare them only within one run.

The reference is imported from ``--reference-dir`` *unmodified*. To run it on a CPU with today's
numpy and torch, this script patches three things at run time, in the reference's modules only:
``torch.cuda.FloatTensor`` makes CPU tensors (the code allocates its buffers with it);
``np.sum`` of a list of tensors adds them in order (numpy no longer accepts tensors that require
grad); ``np.dot`` of two scipy sparse matrices is their product; ``numba`` is stubbed when it is not
installed (it only compiles the code's top-K helper, which is not used here). Their train examples
go in as an object array (numpy refuses ragged lists).

Results go to ``--out`` (default ``docs/results/dhcn-reference.md``, written atomically) and stdout.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import operator
import os
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
LAYERS = 3
BETA = 0.01
LR = 0.001

# our parameter -> (the reference's parameter, transpose?)
NAME_MAP = {
    "id_table": ("embedding.weight", False),
    "position.weight": ("pos_embedding.weight", False),
    "position_mix.weight": ("w_1.weight", False),
    "position_mix.bias": ("w_1.bias", False),
    "readout_score.weight": ("w_2", True),
    "gate_click.weight": ("glu1.weight", False),
    "gate_click.bias": ("glu1.bias", False),
    "gate_mean.weight": ("glu2.weight", False),
}


# --------------------------------------------------------------------------- data


def load_train(args):
    from intentrec.data.dataset import PreparedDataset

    if args.dataset is None:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from _common import prepare_beauty

        args.dataset = prepare_beauty(REPO / "runs" / "bench-backbones-beauty")
    dataset = PreparedDataset(args.dataset)
    train = dataset.examples("train")
    return train.values, train.offsets, train.targets, dataset.num_items


def step_seed(args, step: int) -> int:
    return args.seed * 100_003 + step


# --------------------------------------------------------------------------- children


def child_ours(args, work: Path) -> dict:
    import torch

    from intentrec.data.dataset import ExampleSet
    from intentrec.models.registry import build_backbone

    torch.set_num_threads(args.threads)
    data = np.load(work / "train.npz")
    values, offsets, targets = data["values"], data["offsets"], data["targets"]
    num_items = int(data["num_items"])
    examples = ExampleSet("train", np.arange(len(targets)), values, offsets, targets)
    torch.manual_seed(args.seed)
    model = build_backbone(
        "dhcn",
        num_items,
        {"embedding_dim": HIDDEN, "layers": LAYERS, "ssl_weight": BETA, "hyperedges": "examples"},
    )
    model.set_hypergraph(values, offsets)  # every train example is a hyperedge, as in the code
    state = model.state_dict()
    torch.save(
        {ref: (state[ours].t() if transpose else state[ours]).clone() for ours, (ref, transpose) in NAME_MAP.items()},
        work / "initial.pt",
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, fused=args.adam == "fused")
    batches = list(itertools.islice(examples.batches(BATCH_SIZE), args.batches))

    def eval_scores():
        model.eval()
        with torch.no_grad():
            return model(batches[0]).numpy()

    before = eval_scores()
    losses, times = [], []
    gradient = None
    for step, batch in enumerate(batches):
        model.train()
        torch.manual_seed(step_seed(args, step))
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = model.loss(batch)
        loss.backward()
        if step == 0:
            gradient = model.id_table.grad.numpy().copy()
        optimizer.step()
        times.append(time.perf_counter() - started)
        losses.append(float(loss.detach()))
    np.savez(work / "ours.npz", before=before, after=eval_scores(), losses=losses, times=times, gradient=gradient)
    return {"batches": len(batches)}


class _NumpyForTensors(types.ModuleType):
    """numpy, except ``sum`` of a list of tensors (added in order) and ``dot`` of sparse matrices."""

    def __init__(self):
        super().__init__("numpy")

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def sum(values, axis=None, **kwargs):
        import torch

        if isinstance(values, list) and values and torch.is_tensor(values[0]) and axis in (0, None):
            return functools.reduce(operator.add, values)
        return np.sum(values, axis=axis, **kwargs)

    @staticmethod
    def dot(a, b, *rest):
        import scipy.sparse

        if scipy.sparse.issparse(a) and scipy.sparse.issparse(b):
            return a @ b
        return np.dot(a, b, *rest)


def import_reference(reference_dir: Path):
    import torch

    try:
        import numba  # noqa: F401
    except ImportError:
        stub = types.ModuleType("numba")
        stub.jit = lambda *a, **k: lambda fn: fn
        sys.modules["numba"] = stub
    torch.cuda.FloatTensor = lambda *shape: torch.zeros(*shape)  # the code fills them right away
    sys.path.insert(0, str(reference_dir))
    import model as reference_model  # the authors' model.py, unmodified on disk
    import util as reference_util  # the authors' util.py, unmodified on disk

    reference_model.np = _NumpyForTensors()
    reference_util.np = _NumpyForTensors()
    return reference_model, reference_util


def child_reference(args, work: Path) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    reference_model, reference_util = import_reference(args.reference_dir)
    data = np.load(work / "train.npz")
    values, offsets, targets = data["values"], data["offsets"], data["targets"]
    num_items = int(data["num_items"])
    sequences = np.empty(len(targets), dtype=object)
    sequences[:] = [values[offsets[i] : offsets[i + 1]].tolist() for i in range(len(targets))]
    train_data = reference_util.Data((sequences, targets.tolist()), shuffle=False, n_node=num_items)
    net = reference_model.DHCN(
        adjacency=train_data.adjacency, n_node=num_items, lr=LR, layers=LAYERS, l2=1e-5, beta=BETA,
        dataset="beauty", emb_size=HIDDEN, batch_size=BATCH_SIZE,
    )  # fmt: skip
    net.load_state_dict(torch.load(work / "initial.pt"), strict=True)
    slices = [np.arange(k * BATCH_SIZE, (k + 1) * BATCH_SIZE) for k in range(args.batches)]

    def eval_scores():
        net.eval()
        with torch.no_grad():
            return reference_model.forward(net, slices[0], train_data)[1].numpy()

    before = eval_scores()
    losses, times = [], []
    gradient = None
    for step, rows in enumerate(slices):  # the body of the reference's train_test() loop
        net.train()
        torch.manual_seed(step_seed(args, step))
        started = time.perf_counter()
        net.zero_grad()
        batch_targets, scores, con_loss = reference_model.forward(net, rows, train_data)
        loss = net.loss_function(scores + 1e-8, batch_targets) + con_loss
        loss.backward()
        if step == 0:
            gradient = net.embedding.weight.grad.numpy().copy()
        net.optimizer.step()
        times.append(time.perf_counter() - started)
        losses.append(float(loss.detach()))
    np.savez(work / "reference.npz", before=before, after=eval_scores(), losses=losses, times=times, gradient=gradient)
    return {"batches": len(slices)}


def run_child(kind: str, work: Path, args) -> dict:
    command = [
        sys.executable, str(Path(__file__).resolve()), "--child", kind, "--work", str(work),
        "--batches", str(args.batches), "--threads", str(args.threads), "--seed", str(args.seed),
        "--adam", args.adam, "--reference-dir", str(args.reference_dir or ""),
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


def compare(work: Path) -> dict:
    ours, ref = np.load(work / "ours.npz"), np.load(work / "reference.npz")

    def gap(name):
        a, b = ours[name].astype(np.float64), ref[name].astype(np.float64)
        return {"max_abs": float(np.abs(a - b).max()), "scale": float(np.abs(b).max())}

    losses = np.abs(ours["losses"] - ref["losses"])
    return {
        "scores_before": gap("before"),
        "scores_after": gap("after"),
        "gradient_step0": gap("gradient"),
        "loss_max_abs": float(losses.max()),
        "loss_first": (float(ours["losses"][0]), float(ref["losses"][0])),
        "loss_last": (float(ours["losses"][-1]), float(ref["losses"][-1])),
        "top20_same_before": float(
            np.mean(
                [
                    set(np.argsort(-a)[:20]) == set(np.argsort(-b)[:20])
                    for a, b in zip(ours["before"], ref["before"], strict=True)
                ]
            )
        ),
        "ms_per_batch": (1000 * float(np.median(ours["times"])), 1000 * float(np.median(ref["times"]))),
    }


def report(result: dict, args, command: str, meta: dict) -> str:
    c = result
    ours_ms, ref_ms = c["ms_per_batch"]
    lines = [
        "# DHCN: ours against the authors' code (xiaxin1998/DHCN) on the same batches",
        "",
        f"Generated by `{command}` on {meta['date']}.",
        "",
        f"- Machine: {meta['machine']}; torch threads: {args.threads}; load average before / after: "
        f"{meta['load_before']} / {meta['load_after']}.",
        f"- {meta['examples']:,} train examples (all of them are the hyperedges), {meta['num_items']:,} items; "
        f"the first {args.batches} batches of {BATCH_SIZE} of one seeded shuffle (seed {args.seed}).",
        f"- d = {HIDDEN}, {LAYERS} layers, β = {BETA}, Adam lr {LR} without weight decay (ours: {args.adam}).",
        "",
        "| quantity | max abs difference | scale (max abs, reference) |",
        "|---|---:|---:|",
        f"| scores, first batch, before training | {c['scores_before']['max_abs']:.2e} | "
        f"{c['scores_before']['scale']:.3g} |",
        f"| item-table gradient, step 0 | {c['gradient_step0']['max_abs']:.2e} | {c['gradient_step0']['scale']:.3g} |",
        f"| training loss, any of the {args.batches} steps | {c['loss_max_abs']:.2e} | {max(c['loss_first']):.3g} |",
        f"| scores, first batch, after the {args.batches} steps | {c['scores_after']['max_abs']:.2e} | "
        f"{c['scores_after']['scale']:.3g} |",
        "",
        f"Loss at the first / last step: ours {c['loss_first'][0]:.5f} / {c['loss_last'][0]:.5f}, "
        f"reference {c['loss_first'][1]:.5f} / {c['loss_last'][1]:.5f}. Sessions of the first batch "
        f"whose top-20 set is the same before training: {100 * c['top20_same_before']:.0f}%.",
        "",
        f"Median time per training batch on this machine: ours {ours_ms:.1f} ms, reference {ref_ms:.1f} ms "
        f"(peak RSS: ours {meta['ours_rss']:.0f} MB, reference {meta['ref_rss']:.0f} MB). Compare them only "
        "within one run on a quiet machine.",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference-dir", type=Path, help="checkout of xiaxin1998/DHCN (model.py, util.py)")
    parser.add_argument("--dataset", type=Path, help="prepared dataset folder (default: Beauty under runs/)")
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--adam", choices=("fused", "foreach"), default="fused")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "dhcn-reference.md")
    parser.add_argument("--child", choices=("ours", "reference"), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        result = (child_ours if args.child == "ours" else child_reference)(args, args.work)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    if not args.reference_dir or not (args.reference_dir / "model.py").is_file():
        raise SystemExit("--reference-dir must be a checkout of xiaxin1998/DHCN (model.py not found)")

    from intentrec.experiments.records import machine
    from intentrec.io import atomic_open

    command = "python benchmarks/dhcn_reference.py " + shlex.join(sys.argv[1:])
    values, offsets, targets, num_items = load_train(args)
    order = np.random.default_rng(args.seed).permutation(len(targets))
    lengths = np.diff(offsets)[order]
    new_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    take = np.repeat(offsets[:-1][order] - new_offsets[:-1], lengths) + np.arange(new_offsets[-1])
    values, offsets, targets = values[take], new_offsets, targets[order]
    args.batches = min(args.batches, len(targets) // BATCH_SIZE)

    meta = {
        "machine": machine(threads=args.threads),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_before": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "examples": len(targets),
        "num_items": num_items,
    }
    with tempfile.TemporaryDirectory(prefix="dhcn-reference-") as tmp:
        work = Path(tmp)
        np.savez(work / "train.npz", values=values, offsets=offsets, targets=targets, num_items=num_items)
        print(f"ours: {args.batches} batches ...", flush=True)
        meta["ours_rss"] = run_child("ours", work, args)["peak_rss_mb"]
        print(f"reference: {args.batches} batches ...", flush=True)
        meta["ref_rss"] = run_child("reference", work, args)["peak_rss_mb"]
        result = compare(work)
    meta["load_after"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    text = report(result, args, command, meta)
    print(text)
    print(json.dumps(result))
    with atomic_open(args.out, "w", encoding="utf-8") as fh:
        fh.write(text)


if __name__ == "__main__":
    main()
