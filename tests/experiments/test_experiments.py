"""``intentrec experiment``: grid expansion, spec errors, a tiny real grid, resume, reports, dry run."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from intentrec import training
from intentrec.cli.main import app
from intentrec.data.identity import DatasetIdentity
from intentrec.errors import ConfigError, IntentrecError
from intentrec.experiments.plan import check_settings, execution_order, expand, make_run_id, select
from intentrec.experiments.report import Row, baseline_of, mean_std, pct_cell
from intentrec.experiments.spec import build_spec, load_spec

sys.path.insert(0, str(Path(__file__).parents[1] / "training"))
from tinyrun import TEST_BACKBONE, write_tiny_dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _spec(**overrides):
    values = {
        "name": "t",
        "runs_dir": "runs",
        "records_dir": "records",
        "datasets": {"d": {"path": "data"}},
        "seeds": [0, 1],
        "settings": {"train.epochs": 2, "model": {"embedding_dim": 8}},
        "grids": [{"backbones": ["srgnn", "stamp"], "methods": ["none", "llm4sbr"]}],
    }
    values.update(overrides)
    return build_spec(values)


def _invoke(*args, expect: int = 0):
    result = runner.invoke(app, [str(a) for a in args])
    if expect == 0 and result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == expect, result.output
    return result


# --------------------------------------------------------------------------- spec and grid


def test_grid_expands_to_readable_ids_with_merged_settings():
    spec = _spec(
        grids=[
            {"backbones": ["srgnn", "stamp"], "methods": ["none", "llm4sbr"]},
            {
                "backbones": ["srgnn"],
                "methods": ["llm4sbr"],
                "settings": {"method.k": 5, "train.epochs": 3},
                "variants": {"wo-au": {"method.lambda_au": 0}, "wo-long": {"method": {"views": ["short"]}}},
                "seeds": [7],
            },
            {"backbones": ["srgnn"], "methods": ["none"], "variants": {"paper": {"train.select_on": "test"}}},
            {"backbones": ["srgnn"], "methods": ["none"]},  # the same runs again: kept once
        ],
        settings={"train.epochs": 2, "model": {"embedding_dim": 8}, "method.source": "titles"},
    )
    runs = expand(spec)
    ids = [r.run_id for r in runs]
    assert ids[:4] == ["d/srgnn/default/s0", "d/srgnn/default/s1", "d/srgnn+llm4sbr/default/s0", "d/srgnn+llm4sbr/default/s1"]
    assert "d/srgnn+llm4sbr/wo-au/s7" in ids and "d/srgnn+llm4sbr/wo-long/s7" in ids
    assert len(ids) == len(set(ids)) == 8 + 2 + 2
    by_id = {r.run_id: r for r in runs}
    alone = by_id["d/srgnn/default/s1"]
    assert alone.settings == {"model": {"embedding_dim": 8}, "train": {"epochs": 2, "seed": 1}}
    assert alone.method is None and not alone.paper_mode
    ablation = by_id["d/srgnn+llm4sbr/wo-au/s7"]
    assert ablation.settings == {
        "model": {"embedding_dim": 8},
        "train": {"epochs": 3, "seed": 7},
        "method": {"source": "titles", "k": 5, "lambda_au": 0},
    }
    assert by_id["d/srgnn+llm4sbr/wo-long/s7"].settings["method"]["views"] == ["short"]
    assert by_id["d/srgnn/paper/s0"].paper_mode
    assert make_run_id("beauty", "srgnn", "llm4sbr", "wo-au", 0) == "beauty/srgnn+llm4sbr/wo-au/s0"

    # seed by seed: every row's first seed comes before any second seed
    order = execution_order(runs)
    firsts = {}
    for run in runs:
        firsts.setdefault(run.group, run.run_id)
    positions = [run.run_id in firsts.values() for run in order]
    assert positions == sorted(positions, reverse=True) and sorted(order, key=lambda r: r.order) == runs
    assert [r.run_id for r in select(runs, ["d/stamp*"])] == [
        "d/stamp/default/s0", "d/stamp/default/s1", "d/stamp+llm4sbr/default/s0", "d/stamp+llm4sbr/default/s1"
    ]
    assert len(select(runs, ["*/wo-*", "*/paper/*"])) == 4


def test_grid_errors_name_the_problem():
    with pytest.raises(ConfigError, match="defined twice with different settings"):
        expand(_spec(grids=[{"backbones": ["srgnn"]}, {"backbones": ["srgnn"], "settings": {"train.lr": 0.1}}]))
    with pytest.raises(ConfigError, match=r"variants.wo-au sets method.\* keys.*'none'"):
        expand(_spec(grids=[{"backbones": ["srgnn"], "methods": ["none", "x"], "variants": {"wo-au": {"method.a": 1}}}]))
    with pytest.raises(ConfigError, match="seeds"):
        expand(_spec(settings={"train.seed": 3}))
    with pytest.raises(ConfigError, match=r"settings: setting 'epochs' needs a section prefix: 'model.epochs', 'train.epochs'"):
        expand(_spec(settings={"epochs": 3}))
    with pytest.raises(ConfigError, match="grids.0.variants: variant 'x y' must start with"):
        _spec(grids=[{"backbones": ["srgnn"], "variants": {"x y": {}}}])
    with pytest.raises(ConfigError, match="names 'other', which is not under 'datasets'"):
        _spec(grids=[{"backbones": ["srgnn"], "datasets": ["other"]}])
    with pytest.raises(ConfigError, match=r"(?s)run d/srgnn/default/s0: .*unknown key 'no_such_field'"):
        check_settings(expand(_spec(settings={"model.no_such_field": 1})))
    with pytest.raises(ConfigError, match=r"(?s)run d/srgnn/default/s0: .*unknown key 'lrr'"):
        check_settings(expand(_spec(settings={"train.lrr": 1})))


def test_unknown_yaml_keys_are_rejected_with_their_name(tmp_path):
    base = {
        "name": "t", "runs_dir": "r", "records_dir": "rec",
        "datasets": {"d": {"prepare": {"source": "generic", "path": "x"}}},
        "grids": [{"backbones": ["srgnn"]}],
        "anchors": [{"label": "A", "HR@20": 1.0}],
    }
    cases = [
        ({"seedz": [1]}, "unknown key 'seedz'", "runs_dir"),
        ({"grids": [{"backbones": ["srgnn"], "method": ["x"]}]}, "unknown key 'grids.0.method'", "variants"),
        ({"datasets": {"d": {"prepare": {"source": "generic", "path": "x", "protocl": "p"}}}},
         "unknown key 'datasets.d.prepare.protocl'", "protocol"),
        ({"anchors": [{"label": "A", "HR@10": 1.0}]}, "unknown key 'anchors.0.HR@10'", "HR@20"),
    ]
    for change, message, known in cases:
        path = tmp_path / "e.yaml"
        path.write_text(yaml.safe_dump({**base, **change}))
        with pytest.raises(ConfigError) as info:
            load_spec(path)
        text = str(info.value)
        assert str(path) in text and message in text and known in text.split(message)[1].splitlines()[0]
    path.write_text(yaml.safe_dump(base))
    spec = load_spec(path)
    assert spec.anchors[0].hr20 == 1.0 and spec.dataset_dir("d") == Path("r/data/d")


def test_mean_std_and_cells():
    assert all(math.isnan(v) for v in mean_std([]))
    assert mean_std([0.5]) == (0.5, 0.0)
    mean, std = mean_std([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3) and std == pytest.approx(statistics.stdev([1.0, 2.0, 4.0]))
    assert pct_cell([0.1512]) == "15.12"
    assert pct_cell([0.1, 0.12]) == f"11.00 ± {statistics.stdev([10.0, 12.0]):.2f}"


def test_delta_baseline_keeps_the_selection_mode():
    def row(method, variant, paper=False):
        return Row("d", "srgnn", method, variant, 0, [{"paper_mode": paper, "seed": 0, "test": {}}])

    alone, alone_paper = row(None, "default"), row(None, "paper-mode", paper=True)
    wo_au, paper, leaky = row("m", "wo-au"), row("m", "paper-mode", True), row("m", "paper-leaky", True)
    rows = [alone, alone_paper, wo_au, paper, leaky]
    assert baseline_of(wo_au, rows) is alone  # no alone row of that variant: the default one
    assert baseline_of(paper, rows) is alone_paper  # same variant, same selection
    assert baseline_of(leaky, rows) is alone_paper  # the only paper-mode alone row
    assert baseline_of(alone, rows) is None
    # Never across selection modes, and never a guess between several rows.
    assert baseline_of(leaky, [alone, leaky]) is None
    assert baseline_of(leaky, [alone, alone_paper, row(None, "other", True), leaky]) is None


def test_shipped_experiment_files_expand():
    for name, count in (("llm4sbr-beauty", 66), ("dmsrec-beauty", 51)):
        spec = load_spec(REPO / "experiments" / f"{name}.yaml")
        runs = expand(spec)
        assert len(runs) == count and spec.anchors
        check_settings(runs)  # backbone and trainer settings are valid; unknown methods are skipped
    ids = {r.run_id for r in expand(load_spec(REPO / "experiments/llm4sbr-beauty.yaml"))}
    assert {"beauty/srgnn+llm4sbr/wo-au/s0", "beauty/gcegnn/default/s2", "beauty/srgnn/paper-mode/s1"} <= ids


# --------------------------------------------------------------------------- a tiny real grid


def _write_experiment(folder: Path, epochs: int = 2) -> Path:
    spec = {
        "name": "tiny",
        "runs_dir": "out/runs",
        "records_dir": "out/records",
        "results_dir": "out/results",
        "datasets": {"tiny": {"path": "data"}},
        "seeds": [0, 1],
        "settings": {
            "train.epochs": epochs, "train.patience": None, "train.batch_size": 64,
            "model.embedding_dim": 8,
        },
        "grids": [
            {"backbones": [TEST_BACKBONE, "gru4rec"]},
            {"backbones": [TEST_BACKBONE], "seeds": [0], "variants": {"paper-mode": {"train.select_on": "test"}}},
        ],
        "anchors": [{"label": "Some paper", "HR@20": 15.06, "MRR@20": 3.99, "note": "test-selected"}],
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _boom(*args, **kwargs):
    raise AssertionError("train() must not be called")


def _records(folder: Path) -> dict[str, dict]:
    return {
        p.relative_to(folder).with_suffix("").as_posix(): json.loads(p.read_text())
        for p in sorted(folder.rglob("*.json"))
    }


def test_tiny_grid_runs_records_reports_and_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths in the file are relative to the current directory
    data = write_tiny_dataset(tmp_path / "data")
    _write_experiment(tmp_path)
    real_train = training.train
    ids = [
        f"tiny/{TEST_BACKBONE}/default/s0", f"tiny/{TEST_BACKBONE}/default/s1",
        "tiny/gru4rec/default/s0", "tiny/gru4rec/default/s1", f"tiny/{TEST_BACKBONE}/paper-mode/s0",
    ]

    # dry run: lists every run as to do, trains nothing
    monkeypatch.setattr(training, "train", _boom)
    out = _invoke("experiment", "tiny.yaml", "--dry-run").output
    assert "5 runs — 0 done, 5 to run, 0 stale" in out
    assert all(f"todo  {i}" in out for i in ids) and f"{ids[4]}  [PAPER MODE]" in out

    # a first chunk: seed 0 of every row
    monkeypatch.setattr(training, "train", real_train)
    out = _invoke("experiment", "tiny.yaml", "--max-runs", "3", "--threads", "1", "--no-progress").output
    assert "3 to train now (--max-runs 3 of 5 to do)" in out
    assert "[1/5]" in out and "[3/5]" in out and "[4/5]" not in out and "ETA" in out and "epoch   2" in out
    assert set(_records(tmp_path / "out/records")) == {ids[0], ids[2], ids[4]}
    md = (tmp_path / "out/results/tiny.md").read_text()
    assert "**Incomplete**: 3 of 5 runs have finished, 2 missing" in md
    assert "## Missing runs (2 of 5)" in md and f"- `{ids[1]}`" in md and f"- `{ids[3]}`" in md

    # the rest; then everything is complete
    out = _invoke("experiment", "tiny.yaml", "--threads", "1", "--no-progress").output
    assert "2 to train now" in out and "[2/2]" in out
    records = _records(tmp_path / "out/records")
    assert set(records) == set(ids)

    rec = records[ids[1]]
    manifest_sha = hashlib.sha256((data / "manifest.json").read_bytes()).hexdigest()
    identity = DatasetIdentity.of(data)
    assert rec["dataset"] == {
        "name": "tiny", "path": "data", "manifest_sha256": manifest_sha,
        "fingerprint": identity.fingerprint, "protocol": "test-tiny",
    }
    assert (rec["backbone"], rec["method"], rec["variant"], rec["seed"]) == (TEST_BACKBONE, None, "default", 1)
    assert rec["settings"]["train"] == {"epochs": 2, "patience": None, "batch_size": 64, "seed": 1}
    assert rec["config"]["trainer"]["num_threads"] == 1
    assert rec["config"]["model"] == {"name": TEST_BACKBONE, "config": {"embedding_dim": 8, "dropout": 0.2}}
    assert rec["command"] == "intentrec experiment tiny.yaml --threads 1"
    assert rec["epochs_run"] == 2 and rec["num_parameters"] > 0 and rec["peak_rss_mb"] > 0
    assert not rec["paper_mode"] and "warning" not in rec and rec["run_dir"] == f"out/runs/{ids[1]}"
    assert rec["library_version"] and rec["finished"] and rec["train_seconds_per_epoch"] > 0
    paper = records[ids[4]]
    assert paper["paper_mode"] and "PAPER MODE" in paper["warning"] and paper["selection"].startswith("paper-mode")

    md = (tmp_path / "out/results/tiny.md").read_text()
    assert "**Complete**: all 5 runs" in md and "Missing runs" not in md
    assert "intentrec experiment tiny.yaml --report-only" in md
    assert "## Published anchors (test-selected)" in md and "| Some paper | 15.06 | 3.99 | test-selected |" in md
    rows = {
        line.split(" | ")[0].strip("| ") + "/" + line.split(" | ")[2]: line
        for line in md.splitlines()
        if line.startswith((f"| {TEST_BACKBONE} ", "| gru4rec "))
    }
    default_row = rows[f"{TEST_BACKBONE}/default"]
    pair = [records[ids[0]], records[ids[1]]]
    for metric in ("HR@5", "MRR@10", "NDCG@20", "HR@20"):
        values = [100 * r["test"][metric] for r in pair]
        assert f"| {statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} |" in default_row
    assert "| 2 |" in default_row and "2(" in default_row
    paper_row = rows[f"{TEST_BACKBONE}/paper-mode — PAPER MODE"]
    assert f"| {100 * paper['test']['HR@20']:.2f} |" in paper_row and "±" not in paper_row
    assert "**PAPER MODE** rows select on the TEST split" in md

    with open(tmp_path / "out/results/tiny.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [(r["backbone"], r["variant"], r["n"]) for r in table] == [
        (TEST_BACKBONE, "default", "2"), ("gru4rec", "default", "2"), (TEST_BACKBONE, "paper-mode", "1")
    ]
    gru = [records[ids[2]], records[ids[3]]]
    values = [100 * r["test"]["MRR@20"] for r in gru]
    assert float(table[1]["MRR@20_mean_pct"]) == pytest.approx(statistics.mean(values), abs=1e-4)
    assert float(table[1]["MRR@20_std_pct"]) == pytest.approx(statistics.stdev(values), abs=1e-4)
    assert table[2]["paper_mode"] == "True" and table[2]["HR@20_std_pct"] == ""
    assert (tmp_path / "out/results/tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # again: nothing is retrained, no record is rewritten
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "out/records").rglob("*.json")}
    monkeypatch.setattr(training, "train", _boom)
    out = _invoke("experiment", "tiny.yaml").output
    assert "0 to train now" in out and "trained 0 run(s)" in out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert _records(tmp_path / "out/records") == records

    # the same dataset prepared again (another time, another input folder): the records still count;
    # a record from before fingerprints falls back to the manifest file's sha256
    manifest = json.loads((data / "manifest.json").read_text())
    (data / "manifest.json").write_text(json.dumps({**manifest, "created": "2030-01-01T00:00:00Z"}))
    assert DatasetIdentity.of(data).manifest_sha256 != manifest_sha
    out = _invoke("experiment", "tiny.yaml", "--dry-run").output
    assert "5 runs — 5 done, 0 to run, 0 stale" in out
    legacy = tmp_path / "out/records" / f"{ids[1]}.json"
    old_record = legacy.read_text()
    legacy.write_text(json.dumps({**rec, "dataset": {k: v for k, v in rec["dataset"].items() if k != "fingerprint"}}))
    out = _invoke("experiment", "tiny.yaml", "--dry-run").output
    assert "4 done, 0 to run, 1 stale" in out and "(record has no fingerprint)" in out
    legacy.write_text(old_record)
    (data / "manifest.json").write_text(json.dumps({**manifest, "protocol": "another"}))
    out = _invoke("experiment", "tiny.yaml", "--dry-run").output
    assert "0 done, 0 to run, 5 stale" in out and "dataset fingerprint" in out
    (data / "manifest.json").write_text(json.dumps(manifest, indent=2))

    # a changed setting makes the records stale: listed, refused, and reported as missing
    _write_experiment(tmp_path, epochs=3)
    out = _invoke("experiment", "tiny.yaml", "--dry-run", "--only", "*/gru4rec/*").output
    assert "2 runs selected of 5 — 0 done, 0 to run, 2 stale" in out
    assert "STALE tiny/gru4rec/default/s0  (record has other settings: train.epochs: 2 → 3)" in out
    result = _invoke("experiment", "tiny.yaml", expect=1)
    assert isinstance(result.exception, IntentrecError) and "5 run(s) have records made with other settings" in str(result.exception)
    _invoke("experiment", "tiny.yaml", "--report-only")
    md = (tmp_path / "out/results/tiny.md").read_text()
    assert "No run has finished yet." in md and "(its record has other settings: train.epochs: 2 → 3)" in md
    assert not (tmp_path / "out/results/tiny.png").exists()


def _lane_experiment(folder: Path) -> list[str]:
    spec = {
        "name": "lanes", "runs_dir": "out/runs", "records_dir": "out/records", "results_dir": "out/results",
        "datasets": {"tiny": {"path": "data"}}, "seeds": [0, 1, 2, 3],
        "settings": {"train.epochs": 2, "train.batch_size": 64, "model.embedding_dim": 8},
        "grids": [{"backbones": [TEST_BACKBONE]}],
    }
    (folder / "lanes.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return [f"tiny/{TEST_BACKBONE}/default/s{s}" for s in range(4)]


def test_a_run_another_process_is_training_is_skipped_not_trained_twice(tmp_path, monkeypatch):
    import os

    from intentrec.io import exclusive_lock

    monkeypatch.chdir(tmp_path)
    write_tiny_dataset(tmp_path / "data")
    ids = _lane_experiment(tmp_path)
    busy = tmp_path / "out/runs" / ids[1]
    with exclusive_lock(busy / ".lock", what="another lane's run"):
        out = _invoke("experiment", "lanes.yaml", "--threads", "1", "--no-progress").output
    assert f"[2/4] {ids[1]}: skipped, being trained by pid {os.getpid()} since " in out
    assert "trained 3 run(s) now; 1 selected run(s) still without a record (1 being trained by another process)" in out
    assert set(_records(tmp_path / "out/records")) == {ids[0], ids[2], ids[3]}
    assert sorted(p.name for p in busy.iterdir()) == [".lock", ".runner.lock"]  # nothing trained there


def test_max_runs_counts_only_runs_trained_here(tmp_path, monkeypatch):
    from intentrec.io import exclusive_lock

    monkeypatch.chdir(tmp_path)
    write_tiny_dataset(tmp_path / "data")
    ids = _lane_experiment(tmp_path)
    with exclusive_lock(tmp_path / "out/runs" / ids[0] / ".lock", what="another lane's run"):
        out = _invoke("experiment", "lanes.yaml", "--max-runs", "2", "--threads", "1", "--no-progress").output
    assert "2 to train now (--max-runs 2 of 4 to do)" in out and f"[1/4] {ids[0]}: skipped" in out
    assert set(_records(tmp_path / "out/records")) == {ids[1], ids[2]}  # the skip did not use up a slot
    assert "[4/4]" not in out


def test_two_lanes_share_a_grid_and_train_each_run_once(tmp_path):
    write_tiny_dataset(tmp_path / "data")
    ids = _lane_experiment(tmp_path)
    lane = (
        "import sys; sys.path.insert(0, sys.argv[1]); import tinyrun; from intentrec.cli.main import app; "
        "app(['experiment', 'lanes.yaml', '--threads', '1', '--no-progress'])"
    )
    helpers = str(Path(__file__).parents[1] / "training")
    procs = [
        subprocess.Popen([sys.executable, "-c", lane, helpers], cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    finished = [{i for i in ids if f"] {i}: test HR@20" in out} for out in outputs]
    assert not finished[0] & finished[1] and finished[0] | finished[1] == set(ids), outputs
    trained = [int(re.search(r"^trained (\d+) run\(s\) now", out, re.M).group(1)) for out in outputs]
    assert trained == [len(f) for f in finished]
    assert set(_records(tmp_path / "out/records")) == set(ids)
    for run_id in ids:  # one lane's epochs only: a second trainer would have appended or rewritten
        assert len((tmp_path / "out/runs" / run_id / "log.jsonl").read_text().splitlines()) == 2


def test_cli_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nruns_dir: r\nrecords_dir: q\ndatasets: {d: {path: p}}\ngrids: [{backbones: [srgnn]}]\nseedz: [1]\n")
    proc = subprocess.run(
        [sys.executable, "-m", "intentrec.cli.main", "experiment", str(bad), "--dry-run"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: invalid experiment file")
    assert "unknown key 'seedz'" in proc.stderr and "Traceback" not in proc.stderr
    help_text = _invoke("experiment", "--help").output
    assert "--dry-run" in help_text and "--max-runs" in help_text and "Examples" in help_text


def test_machine_names_the_cpu_and_the_threads_the_work_ran_with():
    import torch

    from intentrec.experiments.records import machine

    assert f"{torch.get_num_threads()} torch threads" in machine()
    # A parent describing work its child processes did names their thread count, not its own.
    assert "7 torch threads" in machine(threads=7)
    assert "logical CPUs" in machine()


def test_runs_that_select_their_last_allowed_epoch_are_marked():
    from intentrec.experiments.report import CAP_MARK, epochs_cell, hit_epoch_cap

    capped = {"epochs_run": 12, "best_epoch": 12, "config": {"trainer": {"epochs": 12}}}
    stopped = {"epochs_run": 9, "best_epoch": 6, "config": {"trainer": {"epochs": 12}}}
    last_but_early = {"epochs_run": 8, "best_epoch": 8, "config": {"trainer": {"epochs": 12}}}
    assert hit_epoch_cap(capped) and epochs_cell(capped) == f"12(12){CAP_MARK}"
    assert not hit_epoch_cap(stopped) and epochs_cell(stopped) == "9(6)"
    assert not hit_epoch_cap(last_but_early)  # cannot happen with patience, but is not the cap
    assert not hit_epoch_cap({"epochs_run": 3, "best_epoch": 3})  # no config: unknown, unmarked
