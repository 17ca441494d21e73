"""The LLM-as-recommender rows next to every trained row of a grid, on the same sampled test examples.

    intentrec llm-rank runs/data/beauty-semsr --baseline fs --llm qwen0.5b --sample 500 --seed 0 \\
        --json > fs-qwen0.5b.json
    python benchmarks/llm_rank_table.py fs-qwen0.5b.json --experiment experiments/semsr-beauty.yaml \\
        --out docs/results/semsr-beauty-llm-rank.md

An `intentrec llm-rank` report lists the test examples it ranked (`sample.example_ids`). Every
record of the grid keeps the exact target rank of each test example under its selected checkpoint
(`test_ranks`, capped at the largest cut-off + 1), so a trained row's metrics on the LLM's sample
are read from its records, no checkpoint needed: for each seed, the metrics of the ranks of the
sampled examples, then the mean over seeds. This equals `intentrec evaluate RUN --sample N --seed S`
on the run folder (same examples, same ranks). The reports must share one sample and the records'
dataset fingerprint must be the reports' — each is an error otherwise. Rows follow the grid's order;
only its finished runs count (a record made with other settings than the grid's now is stale and left
out, as in the experiment report), and paper-mode rows are left out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, write_markdown  # noqa: E402

from intentrec.errors import IntentrecError  # noqa: E402
from intentrec.evaluation.metrics import metrics_from_ranks  # noqa: E402
from intentrec.experiments.plan import expand, read_record, run_status  # noqa: E402
from intentrec.experiments.report import pct_cell  # noqa: E402
from intentrec.experiments.significance import RANKS_KEY, decode_ranks  # noqa: E402
from intentrec.experiments.spec import load_spec  # noqa: E402

KS = (5, 10, 20, 50, 100)
COLUMNS = [f"{m}@{k}" for k in (20, 100) for m in ("HR", "MRR", "NDCG")]


class TableError(Exception):
    pass


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise TableError(f"{path}: cannot read JSON ({exc})") from None


def llm_label(report: dict[str, Any]) -> str:
    identity = report.get("llm") or {}
    name = identity.get("model") or identity.get("name") or identity.get("backend") or "LLM"
    return f"LLM-as-RS {report['baseline']} — {Path(str(name)).name}"


def sample_metrics(record: dict[str, Any], ids: np.ndarray, where: str) -> tuple[dict[str, float], int]:
    ranks = decode_ranks(record[RANKS_KEY], where)
    pos = np.searchsorted(ranks.example_ids, ids)
    pos = np.minimum(pos, len(ranks.example_ids) - 1)
    if not np.array_equal(ranks.example_ids[pos], ids):
        missing = int((ranks.example_ids[pos] != ids).sum())
        raise TableError(f"{where}: {missing} sampled example(s) have no test rank in this record")
    ks = [k for k in KS if k < ranks.cap]
    return metrics_from_ranks(ranks.ranks[pos], ks), ranks.cap


def trained_rows(experiment: Path, ids: np.ndarray, fingerprint: str) -> tuple[list[dict[str, Any]], Path]:
    spec = load_spec(experiment)
    groups: dict[tuple, list[dict[str, float]]] = {}
    for run in expand(spec):
        path = run.record_path(spec.records_dir)
        record = read_record(path)
        if run.paper_mode or run_status(run, record)[0] != "done" or RANKS_KEY not in record:
            continue
        got = (record.get("dataset") or {}).get("fingerprint")
        if got != fingerprint:
            raise TableError(f"{path}: dataset fingerprint {got} is not the LLM reports' {fingerprint}")
        groups.setdefault(run.group, []).append(sample_metrics(record, ids, str(path))[0])
    rows = []
    for (_, backbone, method, variant), runs in groups.items():
        cells = {col: pct_cell([m[col] for m in runs]) for col in COLUMNS if all(col in m for m in runs)}
        label = f"{backbone} / {method or '—'} / {variant}"
        rows.append({"row": label, "n": len(runs), "cells": cells, "extra": ""})
    return rows, Path(spec.records_dir)


def llm_rows(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for report in reports:
        m, counts = report["metrics"], report["counts"]
        cells = {col: pct_cell([m[col]]) for col in COLUMNS if col in m}
        generated = report.get("generated") or 0
        seconds = report.get("generation_seconds") or 0.0
        per_prompt = f"{seconds / generated:.2f} s/call ({generated} calls)" if generated else "answers stored earlier"
        unranked = ", ".join(f"{k} {counts[k]}" for k in ("missing", "stale", "empty", "garbage", "no_rationale"))
        extra = f"ranked {counts['ranked']}/{counts['examples']} ({unranked}); {per_prompt}"
        if "answers" in report:
            a = report["answers"]
            extra += (
                f"; {a['distinct_titles']} distinct titles, the most common one "
                f"{100 * a['most_common_title_share']:.0f} % of answers"
            )
            if report.get("few_shot"):
                extra += f", {a['copied_example_answer']} copy a few-shot example's answer"
        rows.append({"row": llm_label(report), "n": 1, "cells": cells, "extra": extra})
    return rows


def render(reports: list[dict[str, Any]], rows: list[dict[str, Any]], records_dir: Path) -> str:
    sample = reports[0]["sample"]
    head = ["row", "n", *COLUMNS, "LLM answers"]
    lines = [
        "# LLM as the recommender, next to the trained rows, on the same sampled test examples",
        "",
        f"Produced by `{command_line()}` from the `intentrec llm-rank` reports and the run records in",
        f"`{records_dir.as_posix()}`. Sample: {sample['examples']} {sample['split']} examples, "
        f"`--sample {sample['sample']} --seed {sample['seed']}` (`{sample['rule']}`).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in rows:
        cells = [row["cells"].get(col, "—") for col in COLUMNS]
        lines.append("| " + " | ".join([row["row"], str(row["n"]), *cells, row["extra"]]) + " |")
    lines += [
        "",
        "Test metrics in percent over all items (full ranking, ties against the target). Trained rows: "
        "mean ± sample std over seeds of each seed's metrics on these examples, read from the records' "
        "per-example ranks (validation-selected checkpoints); a `+` (re-ranked) record keeps ranks up "
        "to 20 only, so its @100 cells are empty. LLM rows: the generated title encoded by the "
        "catalogue's encoder and ranked against every item by cosine; an answer that could not be used "
        "gets the worst rank.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", type=Path, nargs="+", help="intentrec llm-rank --json reports")
    parser.add_argument("--experiment", type=Path, required=True, help="the grid (experiment YAML)")
    parser.add_argument("--out", type=Path, help="markdown file to write (default: print only)")
    args = parser.parse_args()
    try:
        reports = [_read(p) for p in args.reports]
        ids0 = reports[0]["sample"]["example_ids"]
        fingerprint = reports[0]["dataset_fingerprint"]
        for path, report in zip(args.reports, reports):
            if report["sample"]["example_ids"] != ids0:
                raise TableError(f"{path}: ranks another sample than {args.reports[0]}")
            if report["dataset_fingerprint"] != fingerprint:
                raise TableError(f"{path}: made on another dataset than {args.reports[0]}")
        ids = np.asarray(sorted(ids0), dtype=np.int64)
        trained, records_dir = trained_rows(args.experiment, ids, fingerprint)
        rows = llm_rows(reports) + trained
    except (TableError, IntentrecError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    text = render(reports, rows, records_dir)
    print(text)
    if args.out:
        write_markdown(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
