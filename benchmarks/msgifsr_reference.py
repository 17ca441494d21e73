"""MSGIFSR against the authors' code (SpaceLearner/SessionRec-pytorch): same weights, same batches.

    python benchmarks/msgifsr_reference.py --reference-dir /tmp/SessionRec-pytorch \\
        --dgl-path /tmp/dgl-site --batches 20

The reference is the authors' checkout *outside* this repository (the folder holding ``src/``); it is
imported unmodified. It needs DGL: ``--dgl-path`` is a folder with a DGL install (e.g.
``pip install --target DIR --no-deps dgl==2.1.0``; PyPI's DGL wheels are built for older torch
versions, and DGL 2.1 imports ``dgl.graphbolt``, whose C++ library exists only for those, so this
script stubs that module out: the session graphs use none of it). The code's unused ``numba`` import
is stubbed too.

For the first ``--batches`` batches of ``--batch-size`` train examples of Beauty (``llm4sbr-beauty``,
in order), both models get the same weights (ours copied from theirs), then

1. scores: both in eval mode (no dropout) on each batch; the reference's ``log p`` against ours.
   The maths is the same with ``short_units="smallest_item"`` (the code's rule for sessions shorter
   than a granularity) as long as every relation of the heterogeneous graph has an edge in the batch
   (DGL skips an edgeless relation's residual and bias; we never do); the script counts the batches
   where one has none. Entries where the reference's probability underflows to 0 (``log 0``) are
   counted apart: ours are computed in log space and stay finite;
2. speed: one training step per batch (forward, backward, Adam) of each, in train mode; the
   reference's graph building (its DataLoader's collate, run in worker processes by its own script)
   is timed apart from its step.

Prints a Markdown report (and writes it to ``--out`` if given). Compare times only within one run.
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def import_reference(reference_dir: Path, dgl_path: Path | None):
    if dgl_path is not None:
        sys.path.insert(0, str(dgl_path))
    sys.modules.setdefault("dgl.graphbolt", types.ModuleType("dgl.graphbolt"))
    numba = types.ModuleType("numba")
    numba.jit = lambda *a, **k: lambda f: f  # imported by collate.py, never used there
    sys.modules.setdefault("numba", numba)
    sys.path.insert(0, str(reference_dir))
    import dgl  # noqa: F401 - fails here, with DGL's own message, if it cannot be imported
    from src.models.msgifsr import MSGIFSR as Reference
    from src.utils.data.collate import collate_fn_factory_ccs, seq_to_ccs_graph

    return Reference, collate_fn_factory_ccs((seq_to_ccs_graph,), order=3)


@torch.no_grad()
def copy_weights(reference, ours, order: int) -> None:
    """Our parameters from the reference's (their item id i = our item index i + 1)."""
    ours.id_table.copy_(reference.embeddings.weight)
    for k in range(2, order + 1):
        gru, cell = reference.expander.GRUs[k - 2], ours.unit_grus[k - 2]
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(gru, f"{name}_l0"))
    for theirs_layer, our_layer in zip(reference.layers, ours.layers, strict=True):
        for conv, convs in (
            (theirs_layer.conv1, our_layer.forward_convs),
            (theirs_layer.conv2, our_layer.backward_convs),
        ):
            for name, module in conv.mods.items():
                target = convs["inter" if name == "inter" else f"intra_{name[len('intra') :]}"]
                target.fc.weight.copy_(module.fc.weight)
                target.attn_l.copy_(module.attn_l.view_as(target.attn_l))
                target.attn_r.copy_(module.attn_r.view_as(target.attn_r))
                target.bias.copy_(module.bias)
    for k in range(order):
        ours.readout_node[k].load_state_dict(reference.readout.fc_u[k].state_dict())
        ours.readout_last[k].load_state_dict(reference.readout.fc_v[k].state_dict())
        ours.readout_score[k].load_state_dict(reference.readout.fc_e[k].state_dict())
        ours.intent[k].load_state_dict(reference.fc_sr[k].state_dict())
    ours.repeat_gate[0].load_state_dict(reference.sc_sr[0][0].state_dict())
    ours.repeat_gate[2].load_state_dict(reference.sc_sr[0][2].state_dict())
    ours.granularity_logits.copy_(reference.alpha)


def edgeless_relations(graph) -> list[str]:
    return [str(etype) for etype in graph.canonical_etypes if graph.num_edges(etype) == 0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference-dir", type=Path, required=True, help="the authors' checkout (holds src/)")
    parser.add_argument("--dgl-path", type=Path, help="folder with a DGL install to put on sys.path")
    parser.add_argument("--dataset", type=Path, help="prepared dataset (default: Beauty, llm4sbr-beauty, under runs/)")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the report here")
    args = parser.parse_args(argv)

    from _common import command_line, prepare_beauty

    from intentrec.data.dataset import PreparedDataset
    from intentrec.models.registry import build_backbone

    torch.set_num_threads(args.threads)
    Reference, collate = import_reference(args.reference_dir, args.dgl_path)
    dataset = PreparedDataset(args.dataset or prepare_beauty(REPO / "runs" / "bench-backbones-beauty"))
    examples = dataset.examples("train")
    n, order, d = dataset.num_items, 3, 256

    torch.manual_seed(args.seed)
    reference = Reference(n, None, d, 1, dropout=0.1, reducer="mean", order=order, norm=True, extra=True, fusion=True)
    ours = build_backbone("msgifsr", n, {"embedding_dim": d, "order": order, "short_units": "smallest_item"})
    copy_weights(reference, ours, order)

    batches = []
    for number, batch in enumerate(examples.batches(args.batch_size)):
        if number == args.batches:
            break
        rows = [row[: int(length)] for row, length in zip(batch.items.tolist(), batch.lengths.tolist(), strict=True)]
        samples = [(np.asarray(row, dtype=np.int64) - 1, int(t)) for row, t in zip(rows, batch.targets.tolist())]
        batches.append((batch, samples))

    # ---- scores, eval mode, same weights
    reference.eval(), ours.eval()
    worst, underflow, edgeless_batches, entries = 0.0, 0, 0, 0
    loss_gap = 0.0
    with torch.no_grad():
        for batch, samples in batches:
            (graph,), labels = collate(samples)
            edgeless_batches += bool(edgeless_relations(graph))
            theirs = reference(graph)
            mine = ours(batch)
            finite = torch.isfinite(theirs)
            underflow += int((~finite).sum())
            entries += theirs.numel()
            worst = max(worst, float((theirs[finite] - mine[finite]).abs().max()))
            their_loss = torch.nn.functional.nll_loss(theirs, labels)
            loss_gap = max(loss_gap, abs(float(their_loss) - float(ours.loss(batch))))

    # ---- one training step per batch, train mode
    reference.train(), ours.train()
    their_opt = torch.optim.Adam(reference.parameters(), lr=1e-3, weight_decay=1e-4)
    our_opt = torch.optim.Adam(ours.parameters(), lr=1e-3, weight_decay=1e-4)
    collate_s = their_step_s = our_step_s = 0.0
    for batch, samples in batches:
        started = time.perf_counter()
        (graph,), labels = collate(samples)
        collate_s += time.perf_counter() - started
        started = time.perf_counter()
        their_opt.zero_grad()
        torch.nn.functional.nll_loss(reference(graph), labels).backward()
        their_opt.step()
        their_step_s += time.perf_counter() - started
        started = time.perf_counter()
        our_opt.zero_grad()
        ours.loss(batch).backward()
        our_opt.step()
        our_step_s += time.perf_counter() - started

    count = len(batches)
    lines = [
        "# MSGIFSR: ours against the authors' code",
        "",
        f"Generated by `{command_line()}`.",
        "",
        f"- {count} batches of {args.batch_size} Beauty train examples, {n:,} items, d = {d}, order {order}, "
        f"one layer, RE and IFR on, torch threads {args.threads}.",
        f"- Scores (eval mode, our weights copied from theirs): largest |difference| of log p "
        f"{worst:.2e}; largest loss difference {loss_gap:.2e}.",
        f"- Reference entries with p underflowed to 0 (log p = -inf; ours finite): {underflow:,} of {entries:,}.",
        f"- Batches where a relation has no edge (DGL drops its residual and bias there): {edgeless_batches} of {count}.",
        "",
        "| per batch (train step) | ms |",
        "|---|---:|",
        f"| reference: graph building (collate) | {1000 * collate_s / count:.1f} |",
        f"| reference: forward + backward + Adam | {1000 * their_step_s / count:.1f} |",
        f"| ours: graph building + forward + backward + Adam | {1000 * our_step_s / count:.1f} |",
        "",
    ]
    report = "\n".join(lines)
    print(report)
    if args.out:
        from _common import write_markdown

        write_markdown(args.out, report)


if __name__ == "__main__":
    main()
