"""Does a code change keep the numbers? Train the same short runs with two versions of intentrec and compare.

One run per backbone family and per method, with the settings of the committed grid records
(``benchmarks/records/beauty``: SR-GNN, GCE-GNN, LLM4SBR(SR-GNN), LLM-DMsRec(SR-GNN), seed 0), cut to
``--epochs`` epochs (LLM-DMsRec's candidate models to ``--candidate-epochs``), run through the public
command line (``intentrec experiment``) so that any version of the library can run them::

    python benchmarks/same_numbers.py run --out /tmp/after                    # this checkout
    PYTHONPATH=/path/to/old/src python benchmarks/same_numbers.py run --out /tmp/before
    python benchmarks/same_numbers.py compare /tmp/before /tmp/after

``run`` writes ``summary.json`` (per run: the loss, valid metrics and lr of every epoch, the final
test metrics) and prints it as a table; ``compare`` prints both side by side and exits 1 if any
number differs in any digit. Both versions must see the same data and the same thread count.

``steps`` is the quick check for the other backbones: a few Adam steps of each on the same Beauty
batches, printing every loss and a checksum of the scores with all their digits, one line per backbone
(run it with both versions and ``diff`` the outputs)::

    python benchmarks/same_numbers.py steps --data /tmp/after/data/beauty --backbones niser tagnn gcsan stamp
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

RECORDS = Path(__file__).resolve().parent / "records" / "beauty" / "beauty"
#: (record folder, backbone, method): one per backbone family and per method.
RUNS = (
    ("srgnn", "srgnn", None),
    ("gcegnn", "gcegnn", None),
    ("srgnn+llm4sbr", "srgnn", "llm4sbr"),
    ("srgnn+dmsrec", "srgnn", "dmsrec"),
)


def grid(out: Path, epochs: int, candidate_epochs: int) -> dict:
    """An experiment file with each record's settings, shortened to ``epochs``."""
    grids = []
    for folder, backbone, method in RUNS:
        record = json.loads((RECORDS / folder / "default" / "s0.json").read_text(encoding="utf-8"))
        settings = {f"{section}.{k}": v for section, values in record["settings"].items() for k, v in values.items()}
        settings.pop("train.seed", None)  # the grid's seed
        settings["train.epochs"] = epochs
        if method == "dmsrec":
            settings["method.candidate_epochs"] = candidate_epochs
            settings["method.candidate_work_dir"] = str(out / "candidates")
        grids.append(
            {
                "backbones": [backbone],
                "methods": [method or "none"],
                "settings": settings,
            }
        )
    return {
        "name": "same-numbers",
        "description": "short runs with the committed records' settings, to compare two versions",
        "runs_dir": str(out / "runs"),
        "records_dir": str(out / "records"),
        "results_dir": str(out / "results"),
        "datasets": {
            "beauty": {
                "path": str(out / "data" / "beauty"),
                "prepare": {"source": "generic", "path": "amazon/beauty-2014-5core", "protocol": "llm4sbr-beauty"},
            }
        },
        "seeds": [0],
        "grids": grids,
    }


def summarise(out: Path) -> dict:
    summary = {}
    for run_dir in sorted((out / "runs").glob("beauty/*/default/s0")):
        log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text(encoding="utf-8").splitlines() if line]
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        summary[run_dir.parent.parent.name] = {
            "epochs": [{"epoch": r["epoch"], "loss": r["loss"], "lr": r["lr"], "valid": r.get("valid")} for r in log],
            "best_epoch": metrics["best_epoch"],
            "test": metrics["test"],
            "seconds_per_epoch": metrics.get("seconds_per_epoch_mean"),
        }
    return summary


def run(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    spec = out / "grid.yaml"
    spec.write_text(yaml.safe_dump(grid(out, args.epochs, args.candidate_epochs), sort_keys=False), encoding="utf-8")
    env = {**os.environ, "INTENTREC_HOME": str(out / "home")}
    command = [sys.executable, "-m", "intentrec.cli.main", "experiment", str(spec), "--threads", str(args.threads)]
    subprocess.run([*command, "--no-progress"], check=True, env=env)
    version = subprocess.run(
        [sys.executable, "-c", "import intentrec, sys; sys.stdout.write(intentrec.__file__)"],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    ).stdout
    summary = {"library": version, "threads": args.threads, "runs": summarise(out)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    for name, result in summary["runs"].items():
        print(name)
        for epoch in result["epochs"]:
            print(f"  epoch {epoch['epoch']}: loss {epoch['loss']!r}  valid MRR@20 {epoch['valid']['MRR@20']!r}")
        print(f"  test HR@20 {result['test']['HR@20']!r}  MRR@20 {result['test']['MRR@20']!r}")
    return 0


def compare(args: argparse.Namespace) -> int:
    left, right = (json.loads((Path(p) / "summary.json").read_text(encoding="utf-8")) for p in (args.a, args.b))
    print(f"A: {left['library']} ({left['threads']} threads)\nB: {right['library']} ({right['threads']} threads)\n")
    differences = 0
    print("| run | number | A | B | same |\n|---|---|---:|---:|:---:|")
    for name in sorted(set(left["runs"]) | set(right["runs"])):
        a, b = left["runs"].get(name), right["runs"].get(name)
        if a is None or b is None:
            print(f"| {name} | (missing in {'A' if a is None else 'B'}) | | | no |")
            differences += 1
            continue
        rows = [("best epoch", a["best_epoch"], b["best_epoch"])]
        for ea, eb in zip(a["epochs"], b["epochs"], strict=False):
            rows.append((f"epoch {ea['epoch']} loss", ea["loss"], eb["loss"]))
            rows += [(f"epoch {ea['epoch']} valid {k}", ea["valid"][k], eb["valid"].get(k)) for k in ea["valid"]]
        if len(a["epochs"]) != len(b["epochs"]):
            rows.append(("epochs run", len(a["epochs"]), len(b["epochs"])))
        rows += [(f"test {k}", a["test"][k], b["test"].get(k)) for k in a["test"]]
        for label, va, vb in rows:
            same = va == vb
            differences += not same
            if not same or label.startswith(("epoch 1 loss", "epoch 2 loss", "test HR@20", "test MRR@20")):
                print(f"| {name} | {label} | {va!r} | {vb!r} | {'yes' if same else 'NO'} |")
    total = sum(1 for _ in left["runs"])
    print(f"\n{differences} differing numbers over {total} runs" + ("" if differences else ": identical"))
    return 1 if differences else 0


def steps(args: argparse.Namespace) -> int:
    import torch

    from intentrec.data.dataset import PreparedDataset
    from intentrec.models.registry import build_backbone

    torch.set_num_threads(args.threads)
    dataset = PreparedDataset(args.data)
    batches = list(dataset.examples("train").batches(100, shuffle=True, seed=1))[: args.steps]
    for name in args.backbones:
        torch.manual_seed(0)
        model = build_backbone(name, dataset.num_items, {})
        model.prepare(dataset)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
        losses = []
        for batch in batches:
            opt.zero_grad()
            loss = model.loss(batch)
            loss.backward()
            opt.step()
            losses.append(repr(loss.item()))
        model.eval()
        with torch.no_grad():
            checksum = model(batches[0]).double().sum().item()
        print(name, "losses", " ".join(losses), "scores-sum", repr(checksum))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="train the short runs with the intentrec on sys.path")
    p_run.add_argument("--out", required=True, help="folder for the dataset, runs and summary.json")
    p_run.add_argument("--epochs", type=int, default=2)
    p_run.add_argument("--candidate-epochs", type=int, default=1, help="epochs of LLM-DMsRec's candidate models")
    p_run.add_argument("--threads", type=int, default=1)
    p_cmp = sub.add_parser("compare", help="compare two run folders' summary.json")
    p_cmp.add_argument("a")
    p_cmp.add_argument("b")
    p_steps = sub.add_parser("steps", help="a few training steps per backbone, every loss printed")
    p_steps.add_argument("--data", type=Path, required=True, help="a prepared dataset (e.g. the one run prepared)")
    p_steps.add_argument("--backbones", nargs="+", default=["niser", "tagnn", "gcsan", "stamp", "srgnn"])
    p_steps.add_argument("--steps", type=int, default=4)
    p_steps.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    return {"run": run, "compare": compare, "steps": steps}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
