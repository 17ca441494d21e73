"""Results of an experiment from its run records: ``<name>.md``, ``<name>.csv`` and ``<name>.png``.

One row per (dataset, backbone, method, variant); metrics are test metrics in percent, mean ± sample
std over seeds. Rows selected on TEST (paper mode) are marked in the table and explained under it.
An incomplete grid says so and lists the missing runs. Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from intentrec.evaluation.report import metric_columns
from intentrec.experiments.plan import RunSpec
from intentrec.experiments.records import COLD_START_KEY
from intentrec.experiments.significance import RANKS_KEY, PairedTest, format_p, paired_test
from intentrec.experiments.spec import NO_METHOD, ComparisonSpec, ExperimentSpec, normalize_settings
from intentrec.io import atomic_open, atomic_path

PAPER_MODE_LABEL = "PAPER MODE"
NONE_LABEL = "—"
CAP_MARK = "†"  # the selected epoch was the last one allowed


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1); std is 0.0 for one value, NaN for none."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def pct_cell(values: Sequence[float]) -> str:
    """Fractions → ``"15.10 ± 0.32"`` in percent; the ± part only with two or more values."""
    mean, std = mean_std([100 * v for v in values])
    return f"{mean:.2f} ± {std:.2f}" if len(values) >= 2 else f"{mean:.2f}"


@dataclass
class Row:
    dataset: str
    backbone: str
    method: str | None
    variant: str
    order: int
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def paper_mode(self) -> bool:
        return any(r.get("paper_mode") for r in self.records)

    @property
    def seeds(self) -> list[int]:
        return [r["seed"] for r in self.records]

    def values(self, metric: str) -> list[float]:
        return [r["test"][metric] for r in self.records if metric in r["test"]]

    def mean_pct(self, metric: str) -> float:
        return 100 * mean_std(self.values(metric))[0]

    def variant_label(self) -> str:
        return f"{self.variant} — {PAPER_MODE_LABEL}" if self.paper_mode else self.variant


@dataclass
class Report:
    spec: ExperimentSpec
    spec_file: str
    runs: list[RunSpec]
    records: dict[str, dict[str, Any]]  # run id → record, done runs only
    stale: dict[str, list[str]] = field(default_factory=dict)  # run id → settings differences
    orphans: int = 0  # records in records_dir that belong to no run of the grid

    @property
    def missing(self) -> list[str]:
        return [r.run_id for r in self.runs if r.run_id not in self.records]

    def rows(self) -> list[Row]:
        rows: dict[tuple, Row] = {}
        for run in self.runs:
            row = rows.setdefault(run.group, Row(*run.group, order=run.order))
            if run.run_id in self.records:
                row.records.append(self.records[run.run_id])
        for row in rows.values():
            row.records.sort(key=lambda r: r["seed"])
        return [row for row in sorted(rows.values(), key=lambda r: r.order) if row.records]

    def metrics(self) -> list[str]:
        return metric_columns([{"test": r["test"]} for r in self.records.values()])


# --------------------------------------------------------------------------- markdown


def render_markdown(report: Report) -> str:
    spec, rows, metrics = report.spec, report.rows(), report.metrics()
    top = _top_metric_pair(metrics)
    multi_dataset = len({r.dataset for r in rows}) > 1
    done, total = len(report.records), len(report.runs)
    lines = [f"# Experiment `{spec.name}`", ""]
    if spec.description:
        lines += [spec.description.strip(), ""]
    lines += [
        f"Produced by `intentrec experiment {report.spec_file}` from the run records in",
        f"`{spec.records_dir}` (one JSON per finished run); every number below is read from them.",
        f"Rebuild: `intentrec experiment {report.spec_file} --report-only`.",
        "",
    ]
    if done == total:
        lines += [f"**Complete**: all {total} runs of the grid have finished.", ""]
    else:
        lines += [
            f"**Incomplete**: {done} of {total} runs have finished, {total - done} missing (listed at "
            "the end); rows may have fewer seeds than planned (column `n`).",
            "",
        ]
    if not rows:
        lines += ["No run has finished yet.", ""]
    else:
        lines += _table(rows, metrics, top, multi_dataset)
        lines += ["", *_table_notes(rows, top)]
        lines += _comparisons_section(spec, rows, top, multi_dataset)
        lines += _cold_start_section(rows, multi_dataset)
    if spec.anchors:
        lines += ["", "## Published anchors (test-selected)", ""]
        lines += [
            "Numbers reported by the papers, which select on the TEST split (compare them with",
            f"{PAPER_MODE_LABEL} rows, not with validation-selected ones).",
            "",
            "| model | HR@20 | MRR@20 | note |",
            "|---|---|---|---|",
        ]
        for a in spec.anchors:
            hr = f"{a.hr20:.2f}" if a.hr20 is not None else NONE_LABEL
            mrr = f"{a.mrr20:.2f}" if a.mrr20 is not None else NONE_LABEL
            lines.append(f"| {a.label} | {hr} | {mrr} | {a.note} |")
    lines += ["", "## Datasets", ""]
    for name, ds in _datasets(report).items():
        lines.append(f"- `{name}`: {ds}")
    lines += ["", "## Settings", "", *_settings_lines(spec)]
    commands = sorted({r["command"] for r in report.records.values() if r.get("command")})
    machines = sorted({r["machine"] for r in report.records.values() if r.get("machine")})
    if commands:
        lines += ["", "Runs recorded here were produced by:", ""]
        lines += [f"- `{c}`" for c in commands]
    reused = sorted(
        {
            r["trained_by"]
            for r in report.records.values()
            if r.get("trained_by") and r["trained_by"] != r.get("command")
        }
    )
    if reused:
        lines += [
            "",
            "Some run folders were trained earlier by another command with the same settings and "
            "picked up (not retrained) by the runner:",
            "",
        ]
        lines += [f"- `{c}`" for c in reused]
    if machines:
        lines += ["", "Machine: " + "; ".join(machines) + "."]
    lines += _reproduction_lines(report)
    if report.missing:
        lines += ["", f"## Missing runs ({len(report.missing)} of {total})", ""]
        for run_id in report.missing:
            why = report.stale.get(run_id)
            note = f" (its record has other settings: {'; '.join(why)})" if why else ""
            lines.append(f"- `{run_id}`{note}")
    if report.orphans:
        lines += [
            "",
            f"{report.orphans} record(s) in `{spec.records_dir}` belong to no run of this grid (other "
            "experiments may share the folder) and are not shown.",
        ]
    return "\n".join(lines) + "\n"


def _reproduction_lines(report: Report) -> list[str]:
    """What ``--reproduce`` found: finished runs retrained from their records' settings."""
    done = {run_id: r["reproduction"] for run_id, r in report.records.items() if r.get("reproduction")}
    if not done:
        return []
    differ = {run_id: rep for run_id, rep in done.items() if not rep.get("agrees")}
    lines = [
        "",
        f"Reproduced (`--reproduce`: retrained from the record's settings): "
        f"{len(done) - len(differ)} of {len(done)} run(s) gave the record's test metrics again, and their",
        "records gained the per-example ranks used by the paired tests.",
    ]
    if differ:
        lines += [f"Did not reproduce ({len(differ)}; the records keep their first numbers, without ranks):", ""]
        lines += [
            f"- `{run_id}`: largest test metric difference {100 * rep['max_abs_difference']:.2f} points"
            for run_id, rep in sorted(differ.items())
        ]
    return lines


#: the cut-off the papers headline (HR@20 / MRR@20); the Δ column and the bar plot use it when present
HEADLINE_K = 20


def _top_metric_pair(metrics: list[str]) -> tuple[str, str] | None:
    ks = sorted({int(m.split("@")[1]) for m in metrics})
    for k in [HEADLINE_K, *reversed(ks)]:
        if f"HR@{k}" in metrics and f"MRR@{k}" in metrics:
            return f"HR@{k}", f"MRR@{k}"
    return None


def _table(rows: list[Row], metrics: list[str], top: tuple[str, str] | None, multi: bool) -> list[str]:
    header = (["dataset"] if multi else []) + ["backbone", "method", "variant", "n", *metrics]
    tested = top is not None and _has_ranks(rows)
    if top:
        header.append(f"Δ {top[0]} / {top[1]}")
    if tested:
        header.append(f"p {top[0]} / {top[1]}")
    header += ["epochs (best)", "s/epoch", "peak RSS MB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = ([row.dataset] if multi else []) + [
            row.backbone,
            row.method or NONE_LABEL,
            row.variant_label(),
            str(len(row.records)),
            *[pct_cell(row.values(m)) if row.values(m) else NONE_LABEL for m in metrics],
        ]
        if top:
            cells.append(_delta(row, rows, top))
        if tested:
            cells.append(_p_cell(row, rows, top))
        cells.append(" ".join(epochs_cell(r) for r in row.records))
        cells.append(_mean_cell([r.get("train_seconds_per_epoch") for r in row.records], "{:.1f}"))
        rss = [r["peak_rss_mb"] for r in row.records if r.get("peak_rss_mb") is not None]
        cells.append(f"{max(rss):.0f}" if rss else NONE_LABEL)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def hit_epoch_cap(record: dict[str, Any]) -> bool:
    """The run selected the last epoch it was allowed (``train.epochs``): more might have helped."""
    cap = ((record.get("config") or {}).get("trainer") or {}).get("epochs")
    return cap is not None and record.get("best_epoch") == record.get("epochs_run") == cap


def epochs_cell(record: dict[str, Any]) -> str:
    """``run(best)`` epochs, with a dagger when the epoch cap bound (see :func:`hit_epoch_cap`)."""
    return f"{record['epochs_run']}({record['best_epoch']})" + (CAP_MARK if hit_epoch_cap(record) else "")


def baseline_of(row: Row, rows: list[Row]) -> Row | None:
    """The backbone alone for a method row: same dataset, same variant, else the default variant,
    else the only alone row there is (always with the same selection mode)."""
    if row.method is None:
        return None
    alone = [
        r
        for r in rows
        if r.method is None
        and (r.dataset, r.backbone) == (row.dataset, row.backbone)
        and r.paper_mode == row.paper_mode
    ]
    by_variant = {r.variant: r for r in alone}
    base = by_variant.get(row.variant) or by_variant.get("default")
    return base or (alone[0] if len(alone) == 1 else None)


def _delta(row: Row, rows: list[Row], top: tuple[str, str]) -> str:
    base = baseline_of(row, rows)
    if base is None:
        return NONE_LABEL
    return " / ".join(f"{row.mean_pct(m) - base.mean_pct(m):+.2f}" for m in top)


def _has_ranks(rows: list[Row]) -> bool:
    return any(RANKS_KEY in r for row in rows for r in row.records)


def _paired(row: Row, rows: list[Row], top: tuple[str, str]) -> PairedTest | None:
    base = baseline_of(row, rows)
    if base is None or row.paper_mode:
        return None
    return paired_test(row.records, base.records, int(top[0].split("@")[1]))


def _p_cell(row: Row, rows: list[Row], top: tuple[str, str]) -> str:
    test = _paired(row, rows, top)
    return NONE_LABEL if test is None else f"{format_p(test.p_hr)} / {format_p(test.p_mrr)}"


def _mean_cell(values: list[Any], fmt: str) -> str:
    present = [v for v in values if v is not None]
    return fmt.format(sum(present) / len(present)) if present else NONE_LABEL


def _table_notes(rows: list[Row], top: tuple[str, str] | None) -> list[str]:
    notes = [
        "Test metrics in percent over all items (full ranking; ties count against the target): mean",
        f"± sample std over the `n` seeds (no ± with one seed). Unless marked {PAPER_MODE_LABEL}, the checkpoint is",
        "selected on the **validation** split and evaluated once on test.",
    ]
    notes += _eval_sample_notes(rows)
    if top:
        notes += [
            f"`Δ {top[0]} / {top[1]}`: a method's mean minus its backbone alone (same dataset and",
            "variant, else the default variant, else the only one; same selection mode), in percentage",
            "points.",
        ]
    if top and _has_ranks(rows):
        notes += [
            f"`p {top[0]} / {top[1]}`: two-sided paired tests of a method against that same baseline over",
            "the test examples both scored, seeds pooled (seed s of the method is paired with seed s of",
            f"the baseline; every (seed, example) is one pair): exact McNemar test for {top[0]}, Wilcoxon",
            f"signed-rank test on per-example reciprocal ranks for {top[1]} (zero differences dropped).",
            f"{NONE_LABEL} where a side has no per-example ranks (records made before they were kept) or in",
            "paper mode.",
        ]
    notes += [
        "`epochs (best)`: epochs run (selected epoch) per seed; `s/epoch`: training time per epoch",
        "(evaluation excluded), mean over seeds; `peak RSS MB`: maximum over seeds of the training",
        "process's peak, which includes earlier runs made by the same process.",
    ]
    if any(hit_epoch_cap(r) for row in rows for r in row.records):
        notes += [
            f"{CAP_MARK}: the run selected the last epoch it was allowed (`train.epochs`), so the cap",
            "bound and more epochs might give better numbers for that row.",
        ]
    if any(r.paper_mode for r in rows):
        notes += [
            "",
            f"**{PAPER_MODE_LABEL}** rows select on the TEST split, as the papers' code does: their test",
            "numbers are the per-metric maximum over epochs and are optimistically biased. Compare them",
            "only with each other and with the published anchors.",
        ]
    return notes


def comparison_rows(spec: ExperimentSpec, rows: list[Row]) -> list[tuple[ComparisonSpec, Row, Row]]:
    """(comparison, row a, row b) for every comparison of the file and every dataset and backbone that
    has both rows, validation-selected only (paper mode picks each metric's best epoch on test)."""

    def key(row: Row) -> tuple[str, str]:
        return (row.method or NO_METHOD, row.variant)

    by_place: dict[tuple[str, str], dict[tuple[str, str], Row]] = {}
    for row in rows:
        if not row.paper_mode:
            by_place.setdefault((row.dataset, row.backbone), {})[key(row)] = row
    out: list[tuple[ComparisonSpec, Row, Row]] = []
    for comparison in spec.comparisons:
        for (_, backbone), present in by_place.items():
            if comparison.backbones is not None and backbone not in comparison.backbones:
                continue
            a = present.get((comparison.a.method, comparison.a.variant))
            b = present.get((comparison.b.method, comparison.b.variant))
            if a is not None and b is not None:
                out.append((comparison, a, b))
    return out


def _comparisons_section(spec: ExperimentSpec, rows: list[Row], top: tuple[str, str] | None, multi: bool) -> list[str]:
    found = comparison_rows(spec, rows) if top else []
    if not found or top is None:
        return []
    k = int(top[0].split("@")[1])
    pair = f"{top[0]} / {top[1]}"
    header = (["dataset"] if multi else []) + [
        "backbone", "comparison (a − b)", "n a / b", f"a {pair}", f"b {pair}", f"Δ {pair}", f"p {pair}", "pairs",
    ]  # fmt: skip
    lines = ["", "## Paired comparisons", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for comparison, a, b in found:
        test = paired_test(a.records, b.records, k)
        cells = ([a.dataset] if multi else []) + [
            a.backbone,
            comparison.title(),
            f"{len(a.records)} / {len(b.records)}",
            " / ".join(f"{a.mean_pct(m):.2f}" for m in top),
            " / ".join(f"{b.mean_pct(m):.2f}" for m in top),
            " / ".join(f"{a.mean_pct(m) - b.mean_pct(m):+.2f}" for m in top),
            NONE_LABEL if test is None else f"{format_p(test.p_hr)} / {format_p(test.p_mrr)}",
            NONE_LABEL if test is None else str(test.pairs),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Rows named in the file's `comparisons`, on each backbone that has both: means over each row's",
        "seeds in percent, Δ = a − b in percentage points; p: the same two-sided paired tests as above",
        f"(McNemar for {top[0]}, Wilcoxon signed-rank on reciprocal ranks for {top[1]}) between a and b,",
        "seeds pooled, over `pairs` (seed, test example) pairs; — where a side has no per-example ranks.",
    ]
    return lines


#: the rankers of a cold-start evaluation (intentrec.training.cold_start), in table order
COLD_RANKERS = {
    "model": "model, rows from text",
    "id_rows": "model, own rows",
    "popularity": "popularity",
    "text_similarity": "text similarity",
}
COLD_TARGETS = ("cold", "warm", "all")


def _cold_rows(rows: list[Row]) -> list[Row]:
    """Rows with a cold-start evaluation, each with only its records that have one."""
    out = []
    for row in rows:
        kept = [r for r in row.records if COLD_START_KEY in r]
        if kept:
            out.append(Row(row.dataset, row.backbone, row.method, row.variant, row.order, kept))
    return out


def _cold_values(row: Row, ranker: str, targets: str, metric: str) -> list[float]:
    values = []
    for record in row.records:
        by_target = record[COLD_START_KEY]["metrics"].get(ranker) or {}
        if by_target.get(targets) and metric in by_target[targets]:
            values.append(by_target[targets][metric])
    return values


def _cold_pair(rows: list[Row]) -> tuple[str, str] | None:
    names = {m for row in rows for r in row.records for m in (r[COLD_START_KEY]["metrics"]["model"]["all"] or {})}
    return _top_metric_pair(sorted(names))


def _cold_start_section(rows: list[Row], multi: bool) -> list[str]:
    cold_rows = _cold_rows(rows)
    top = _cold_pair(cold_rows)
    if not cold_rows or top is None:
        return []
    lines = ["", "## Cold-start items", ""]
    header = (["dataset"] if multi else []) + ["backbone", "method", "variant", "n", "ranker"]
    header += [f"{m} {t}" for t in COLD_TARGETS for m in top]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in cold_rows:
        for ranker, label in COLD_RANKERS.items():
            cells = [_cold_cell(_cold_values(row, ranker, t, m)) for t in COLD_TARGETS for m in top]
            if all(c == NONE_LABEL for c in cells):
                continue
            ids = ([row.dataset] if multi else []) + [row.backbone, row.method or NONE_LABEL, row.variant_label()]
            lines.append("| " + " | ".join([*ids, str(len(row.records)), label, *cells]) + " |")
    lines += ["", *_cold_start_notes(cold_rows)]
    return lines


def _cold_cell(values: list[float]) -> str:
    return pct_cell(values) if values else NONE_LABEL


def _cold_start_notes(rows: list[Row]) -> list[str]:
    entries = [r[COLD_START_KEY] for row in rows for r in row.records]
    sets = sorted({(row.dataset, json.dumps(r[COLD_START_KEY]["cold_start"], sort_keys=True)) for row in rows
                   for r in row.records})  # fmt: skip
    notes = [
        "Runs trained with `train.cold_start`: a seeded fraction of the items was hidden from training",
        "(their clicks removed from every input session, cold targets dropped from train and valid), so the",
        "main table's test metrics are over warm targets only. Here, after training, each run's test",
        "examples — cold items removed from the inputs, cold targets kept — are ranked over all items",
        "(`intentrec evaluate RUN --cold-start F`), percent on cold targets, on warm ones and on all, mean ±",
        "sample std over the `n` seeds. The four rankers score the same examples:",
        "",
        "- `model, rows from text`: the run's model, the cold items' rows placed from their text;",
        "- `model, own rows`: the run's model with its own rows for the cold items (never trained on a click",
        "  of theirs), for reference;",
        "- `popularity`: train clicks (a cold item has none, so it ranks below every warm item);",
        "- `text similarity`: cosine of the session's mean text vector to every item's (same encoder).",
        "",
    ]
    for dataset, info in dict.fromkeys(sets):
        c = json.loads(info)
        notes.append(
            f"`{dataset}`: {c['cold_items']} cold items ({100 * c['fraction']:g}% of the items, seed {c['seed']}); "
            f"{c['cold_targets']} cold targets among {c['examples']} test examples."
        )
    maps = sorted({_map_text(e["map"]) for e in entries})
    scorings = sorted({_scoring_text(e.get("scoring")) for e in entries})
    notes.append("Rows from text: " + "; ".join(maps) + ". Their scores: " + "; ".join(scorings) + ".")
    return notes


def _map_text(info: dict[str, Any]) -> str:
    if info["kind"] == "model":
        text = "the model's own text placement"
    else:
        text = f"{info['kind']} map fitted on the trained items' rows"
        if info.get("min_train_clicks", 1) > 1:
            text += f" (items with ≥ {info['min_train_clicks']} train clicks)"
    return f"{text}, encoder `{info['encoder']}`, template `{info['template']}`"


def _scoring_text(scoring: dict[str, Any] | None) -> str:
    if not scoring or scoring.get("calibration", "none") == "none":
        return "as the model scores them"
    text = {
        "quantiles": "mapped per session onto the warm items' score quantiles (by their rank among the cold items)",
        "moments": "calibrated per session to the mean and std of the warm items' scores",
    }[scoring["calibration"]]
    weight = scoring.get("text_weight") or 0
    if weight == 1:
        return text + ", the cold items ordered by text similarity alone (`text_weight` 1)"
    return text + (f", blended with text similarity (`text_weight` {weight:g})" if weight else "")


def eval_sample_of(record: dict[str, Any]) -> tuple[int, int] | None:
    """(N, seed) of a run validated and tested on a seeded sample (``train.eval_sample``), else None."""
    trainer = (record.get("config") or {}).get("trainer") or {}
    if not trainer.get("eval_sample"):
        return None
    return int(trainer["eval_sample"]), int(trainer.get("eval_sample_seed", 0))


def _eval_sample_notes(rows: list[Row]) -> list[str]:
    labels: dict[tuple[int, int] | None, list[str]] = {}
    for row in rows:
        model = row.backbone if row.method is None else f"{row.backbone}+{row.method}"
        for key in dict.fromkeys(eval_sample_of(r) for r in row.records):
            labels.setdefault(key, []).append(f"{row.dataset}/{model}/{row.variant}")
    notes = []
    for key in sorted(k for k in labels if k is not None):
        n, seed = key
        which = "every row" if len(labels) == 1 else "rows " + ", ".join(f"`{label}`" for label in labels[key])
        notes += [
            f"Validation and test on a seeded sample of {n} examples of each split (seed {seed}; `train.eval_sample`),",
            f"the same examples for {which}: `intentrec evaluate RUN --sample {n} --seed {seed}` scores them.",
        ]
    if notes and None in labels:
        notes.append("Rows " + ", ".join(f"`{label}`" for label in labels[None]) + ": the full splits.")
    return notes


def _dataset_id(dataset: dict[str, Any]) -> str:
    if dataset.get("fingerprint"):
        return f"fingerprint {dataset['fingerprint'][:12]}…"
    return f"manifest sha256 {dataset['manifest_sha256'][:12]}…"


def _datasets(report: Report) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, ds in report.spec.datasets.items():
        recs = [r for r in report.records.values() if r["dataset"]["name"] == name]
        path = recs[0]["dataset"]["path"] if recs else report.spec.dataset_dir(name).as_posix()
        text = f"`{path}`"
        if ds.prepare is not None:
            text += f", prepared from `{ds.prepare.source}` `{ds.prepare.path}`"
        protocols = sorted({str(r["dataset"].get("protocol")) for r in recs})
        # records from before fingerprints name the dataset by its manifest file's sha256 only
        ids = sorted({_dataset_id(r["dataset"]) for r in recs})
        if protocols:
            text += f", protocol `{', '.join(protocols)}`"
        elif ds.prepare is not None and ds.prepare.protocol:
            text += f", protocol `{ds.prepare.protocol}`"
        if ids:
            text += f", {', '.join(ids)}"
            if len(ids) > 1:
                text += " (**records disagree on the dataset**)"
        out[name] = text
    return out


def _settings_lines(spec: ExperimentSpec) -> list[str]:
    lines = [f"- every run: {_fmt_settings(spec.settings) or 'library defaults'}; seeds {spec.seeds}"]
    for i, grid in enumerate(spec.grids):
        methods = ", ".join(grid.methods)
        text = f"- block {i + 1}: backbones {', '.join(grid.backbones)} × methods {methods}"
        if grid.seeds:
            text += f", seeds {grid.seeds}"
        if grid.settings:
            text += f"; {_fmt_settings(grid.settings)}"
        lines.append(text)
        for name, values in grid.variants.items():
            lines.append(f"  - `{name}`: {_fmt_settings(values or {}) or 'no changes'}")
    lines.append(
        "- `method.*` settings apply to runs with a method only; each backbone starts from its "
        "paper's trainer settings (`default_train`)."
    )
    return lines


def _fmt_settings(values: dict[str, Any]) -> str:
    flat = normalize_settings(values, "settings")
    return ", ".join(f"`{s}.{k}={json.dumps(v)}`" for s, fields in flat.items() for k, v in fields.items())


# --------------------------------------------------------------------------- csv and png


def render_csv(report: Report) -> str:
    metrics = report.metrics()
    header = ["dataset", "backbone", "method", "variant", "paper_mode", "n", "seeds"]
    for m in metrics:
        header += [f"{m}_mean_pct", f"{m}_std_pct"]
    header += ["epochs_run_mean", "best_epoch_mean", "train_seconds_per_epoch_mean", "peak_rss_mb_max"]
    header += ["num_parameters"]
    rows = report.rows()
    top = _top_metric_pair(metrics)
    tested = top is not None and _has_ranks(rows)
    if tested:
        header += [f"p_{top[0]}", f"p_{top[1]}", "paired_examples"]
    cold_rows = {row.order: row for row in _cold_rows(rows)}
    cold_top = _cold_pair(list(cold_rows.values()))
    cold_columns = [(k, t, m) for k in COLD_RANKERS for t in COLD_TARGETS for m in cold_top] if cold_top else []
    if cold_columns:
        header.append("cold_start_n")
        for ranker, targets, m in cold_columns:
            header += [f"cold_start_{ranker}_{targets}_{m}_mean_pct", f"cold_start_{ranker}_{targets}_{m}_std_pct"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        out: list[Any] = [row.dataset, row.backbone, row.method or "", row.variant, row.paper_mode]
        out += [len(row.records), " ".join(map(str, row.seeds))]
        for m in metrics:
            mean, std = mean_std([100 * v for v in row.values(m)])
            out += [_num(mean), _num(std) if len(row.values(m)) >= 2 else ""]
        recs = row.records
        out.append(_num(mean_std([r["epochs_run"] for r in recs])[0]))
        out.append(_num(mean_std([r["best_epoch"] for r in recs])[0]))
        secs = [r["train_seconds_per_epoch"] for r in recs if r.get("train_seconds_per_epoch") is not None]
        out.append(_num(mean_std(secs)[0]) if secs else "")
        rss = [r["peak_rss_mb"] for r in recs if r.get("peak_rss_mb") is not None]
        out.append(max(rss) if rss else "")
        params = {r.get("num_parameters") for r in recs} - {None}
        out.append(params.pop() if len(params) == 1 else "")
        if tested:
            test = _paired(row, rows, top)
            out += ["", "", ""] if test is None else [f"{test.p_hr:.3g}", f"{test.p_mrr:.3g}", test.pairs]
        if cold_columns:
            cold = cold_rows.get(row.order)
            out.append(len(cold.records) if cold else "")
            for ranker, targets, m in cold_columns:
                values = [100 * v for v in _cold_values(cold, ranker, targets, m)] if cold else []
                mean, std = mean_std(values)
                out += [_num(mean), _num(std) if len(values) >= 2 else ""]
        writer.writerow(out)
    return buffer.getvalue()


def _num(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.4f}"


def write_png(report: Report, target: Path) -> bool:
    """Grouped bars of the top HR/MRR pair (e.g. HR@20, MRR@20) with std error bars; False if empty."""
    rows = report.rows()
    top = _top_metric_pair(report.metrics())
    if not rows or top is None:
        return False
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    multi = len({r.dataset for r in rows}) > 1
    labels = []
    for row in rows:
        label = row.backbone if row.method is None else f"{row.backbone}+{row.method}"
        if row.variant != "default" or row.paper_mode:
            label += f"\n{row.variant_label()}"
        labels.append(f"{row.dataset}: {label}" if multi else label)
    width = 0.38
    fig = Figure(figsize=(max(6.0, 0.55 * len(rows) + 2), 4.8), layout="constrained")
    ax = fig.add_subplot()
    for j, metric in enumerate(top):
        stats = [mean_std([100 * v for v in row.values(metric)]) for row in rows]
        xs = [i + (j - 0.5) * width for i in range(len(rows))]
        errors = [s if len(row.values(metric)) >= 2 else math.nan for (_, s), row in zip(stats, rows)]
        bars = ax.bar(xs, [m for m, _ in stats], width, yerr=errors, capsize=3, label=metric)
        for bar, row in zip(bars, rows):
            if row.paper_mode:
                bar.set_hatch("//")
    ax.set_xticks(range(len(rows)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("test, % (mean ± std over seeds)")
    title = f"{report.spec.name}: {top[0]} and {top[1]}"
    if any(r.paper_mode for r in rows):
        title += f" (hatched: {PAPER_MODE_LABEL}, test-selected)"
    ax.set_title(title, fontsize=10)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return True


def write_report(report: Report) -> list[Path]:
    """Write ``<results_dir>/<name>.md``, ``.csv`` and ``.png`` (the latter only with results)."""
    folder, name = Path(report.spec.results_dir), report.spec.name
    written = []
    for suffix, text in ((".md", render_markdown(report)), (".csv", render_csv(report))):
        path = folder / f"{name}{suffix}"
        with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        written.append(path)
    png = folder / f"{name}.png"
    if write_png(report, png):
        written.append(png)
    else:
        png.unlink(missing_ok=True)
    return written
