"""``intentrec experiment``: a tiny real grid run through the command (records, reports, resume), lanes
that share a grid, and one-line errors. The runner's logic without the command is tested in tests/experiments."""

from __future__ import annotations

import csv
import hashlib
import json
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
from intentrec.errors import IntentrecError
from intentrec.evaluation.metrics import metrics_from_ranks
from intentrec.experiments.significance import RANKS_KEY, decode_ranks
from tests.helpers import child_env
from tests.helpers.tinyrun import TEST_BACKBONE, write_tiny_dataset

runner = CliRunner()


def _invoke(*args, expect: int = 0):
    result = runner.invoke(app, [str(a) for a in args])
    if expect == 0 and result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == expect, result.output
    return result


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
            "train.epochs": epochs,
            "train.patience": None,
            "train.batch_size": 64,
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
        f"tiny/{TEST_BACKBONE}/default/s0",
        f"tiny/{TEST_BACKBONE}/default/s1",
        "tiny/gru4rec/default/s0",
        "tiny/gru4rec/default/s1",
        f"tiny/{TEST_BACKBONE}/paper-mode/s0",
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

    # every validation-selected record keeps its test ranks, and they give its test metrics exactly
    for run_id in ids[:4]:
        kept = decode_ranks(records[run_id][RANKS_KEY])
        again = metrics_from_ranks(kept.ranks, records[run_id]["config"]["trainer"]["ks"])
        assert again == pytest.approx(records[run_id]["test"], abs=1e-12) and kept.cap == 21
        assert "test_ranks_warning" not in records[run_id]
    assert RANKS_KEY not in records[ids[4]]  # paper mode: the test numbers are a maximum over epochs

    rec = records[ids[1]]
    manifest_sha = hashlib.sha256((data / "manifest.json").read_bytes()).hexdigest()
    identity = DatasetIdentity.of(data)
    assert rec["dataset"] == {
        "name": "tiny",
        "path": "data",
        "manifest_sha256": manifest_sha,
        "fingerprint": identity.fingerprint,
        "protocol": "test-tiny",
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
        (TEST_BACKBONE, "default", "2"),
        ("gru4rec", "default", "2"),
        (TEST_BACKBONE, "paper-mode", "1"),
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

    # a record from before ranks were kept gets them from its run folder, without training
    legacy = tmp_path / "out/records" / f"{ids[1]}.json"
    legacy.write_text(json.dumps({k: v for k, v in records[ids[1]].items() if k != RANKS_KEY}))
    out = _invoke("experiment", "tiny.yaml").output
    assert f"{ids[1]}: test ranks added to its record" in out and "0 to train now" in out
    assert json.loads(legacy.read_text())[RANKS_KEY] == records[ids[1]][RANKS_KEY]

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
    assert isinstance(result.exception, IntentrecError) and "5 run(s) have records made with other settings" in str(
        result.exception
    )
    _invoke("experiment", "tiny.yaml", "--report-only")
    md = (tmp_path / "out/results/tiny.md").read_text()
    assert "No run has finished yet." in md and "(its record has other settings: train.epochs: 2 → 3)" in md
    assert not (tmp_path / "out/results/tiny.png").exists()


def _lane_experiment(folder: Path) -> list[str]:
    spec = {
        "name": "lanes",
        "runs_dir": "out/runs",
        "records_dir": "out/records",
        "results_dir": "out/results",
        "datasets": {"tiny": {"path": "data"}},
        "seeds": [0, 1, 2, 3],
        "settings": {"train.epochs": 2, "train.batch_size": 64, "model.embedding_dim": 8},
        "grids": [{"backbones": [TEST_BACKBONE]}],
    }
    (folder / "lanes.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return [f"tiny/{TEST_BACKBONE}/default/s{s}" for s in range(4)]


def _write_rerank_experiment(folder: Path) -> tuple[str, str, str]:
    """A grid with one + row: GRU4Rec's lists re-ranked by the test backbone; (plus, first, second)."""
    write_tiny_dataset(folder / "data")
    spec = {
        "name": "rr",
        "runs_dir": "out/runs",
        "records_dir": "out/records",
        "results_dir": "out/results",
        "datasets": {"tiny": {"path": "data"}},
        "seeds": [0],
        "settings": {"train.epochs": 2, "train.patience": None, "model.embedding_dim": 8},
        "grids": [
            {"backbones": ["gru4rec"], "rerank_with": {"backbone": TEST_BACKBONE}},
            {"backbones": [TEST_BACKBONE]},
        ],
    }
    (folder / "rr.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return "tiny/gru4rec/default+/s0", "tiny/gru4rec/default/s0", f"tiny/{TEST_BACKBONE}/default/s0"


def test_rerank_rows_are_evaluated_from_two_finished_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plus, first, second = _write_rerank_experiment(tmp_path)
    out = _invoke("experiment", "rr.yaml", "--dry-run").output
    assert f"todo  {plus}  [re-ranked by {second}; evaluation only]" in out

    # the + row waits until the run that re-ranks has finished (here: not selected)
    out = _invoke("experiment", "rr.yaml", "--only", "*/gru4rec/*", "--threads", "1", "--no-progress").output
    assert f"{plus}: waits for {second} (not finished yet)" in out
    assert set(_records(tmp_path / "out/records")) == {first}

    out = _invoke("experiment", "rr.yaml", "--threads", "1", "--no-progress").output
    assert f"{plus}: re-ranking the test lists of {first} by {second}" in out
    records = _records(tmp_path / "out/records")
    rec = records[plus]
    assert (rec["reranks"], rec["reranked_by"], rec["variant"]) == (first, second, "default+")
    assert rec["settings"]["rerank"] == {"of": first, "with": second}
    expected = json.loads(
        _invoke("evaluate", f"out/runs/{first}", "--rerank-with", f"out/runs/{second}", "--json").output
    )
    assert rec["test"] == pytest.approx(expected["metrics"], abs=1e-12)
    for k in (5, 10, 20):  # HR@K is the re-ranked run's by construction
        assert rec["test"][f"HR@{k}"] == records[first]["test"][f"HR@{k}"]
    kept = decode_ranks(rec[RANKS_KEY])
    assert kept.cap == 21 and metrics_from_ranks(kept.ranks, [20])["MRR@20"] == pytest.approx(rec["test"]["MRR@20"])
    md = (tmp_path / "out/results/rr.md").read_text()
    assert "| gru4rec | — | default+ |" in md

    out = _invoke("experiment", "rr.yaml", "--dry-run").output
    assert "3 runs — 3 done, 0 to run, 0 stale" in out


def test_rerank_rows_whose_inputs_lack_checkpoints_wait_for_reproduce(tmp_path, monkeypatch):
    """Records travel with the repository, run folders do not: a + row over records made elsewhere
    says what to run; --reproduce retrains its inputs and checks them against their records."""
    import shutil

    monkeypatch.chdir(tmp_path)
    plus, first, second = _write_rerank_experiment(tmp_path)
    records_dir, runs_dir = tmp_path / "out/records", tmp_path / "out/runs"
    _invoke("experiment", "rr.yaml", "--threads", "1", "--no-progress")
    made_here = _records(records_dir)

    # as on a fresh machine: the inputs' records without their run folders, the + row not done
    (records_dir / f"{plus}.json").unlink()
    for run_id in (first, second):
        shutil.rmtree(runs_dir / run_id)
    out = _invoke("experiment", "rr.yaml", "--threads", "1", "--no-progress").output
    assert f"{plus}: cannot re-rank: {first}, {second} have records but no checkpoints here" in out
    assert f"--reproduce --only {first} --only {second}" in out
    assert set(_records(records_dir)) == {first, second}

    monkeypatch.setattr(training, "train", _boom)  # a normal run trains nothing for it either
    _invoke("experiment", "rr.yaml", "--threads", "1", "--no-progress")
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)

    out = _invoke("experiment", "rr.yaml", "--reproduce", "--only", plus, "--threads", "1", "--no-progress").output
    assert "2 finished run(s) to retrain (0 without test ranks, 2 whose checkpoint other runs read), 2 now" in out
    assert f"{first}: reproduced" in out and "its checkpoint is here again" in out
    after = _records(records_dir)
    for run_id in (first, second):
        assert after[run_id]["reproduction"]["agrees"] and after[run_id]["reproduction"]["same_ranks"]
        assert after[run_id][RANKS_KEY] == made_here[run_id][RANKS_KEY]
    out = _invoke("experiment", "rr.yaml", "--threads", "1", "--no-progress").output
    assert f"{plus}: re-ranking the test lists of {first} by {second}" in out
    assert _records(records_dir)[plus]["test"] == made_here[plus]["test"]

    # a retrained checkpoint that does not give its record's metrics is not read
    (records_dir / f"{plus}.json").unlink()
    shutil.rmtree(runs_dir / second)
    tampered = _records(records_dir)[second]
    tampered["test"]["HR@20"] += 0.05
    (records_dir / f"{second}.json").write_text(json.dumps(tampered))
    out = _invoke("experiment", "rr.yaml", "--reproduce", "--only", plus, "--threads", "1", "--no-progress").output
    assert "1 finished run(s) to retrain (0 without test ranks, 1 whose checkpoint other runs read)" in out
    assert f"{second}: warning: did NOT reproduce" in out
    assert not _records(records_dir)[second]["reproduction"]["agrees"]
    out = _invoke("experiment", "rr.yaml", "--threads", "1", "--no-progress").output
    assert f"{plus}: cannot re-rank: the checkpoint of {second} was retrained and did not reproduce its record" in out
    assert plus not in _records(records_dir)


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
        "import tests.helpers.tinyrun; from intentrec.cli.main import app; "
        "app(['experiment', 'lanes.yaml', '--threads', '1', '--no-progress'])"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", lane],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=child_env(),
        )
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
    bad.write_text(
        "name: x\nruns_dir: r\nrecords_dir: q\ndatasets: {d: {path: p}}\ngrids: [{backbones: [srgnn]}]\nseedz: [1]\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "intentrec.cli.main", "experiment", str(bad), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: invalid experiment file")
    assert "unknown key 'seedz'" in proc.stderr and "Traceback" not in proc.stderr
    help_text = _invoke("experiment", "--help").output
    assert "--dry-run" in help_text and "--max-runs" in help_text and "Examples" in help_text


def test_reproduce_retrains_records_without_ranks_and_adds_them_only_when_the_metrics_agree(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_tiny_dataset(tmp_path / "data")
    _write_experiment(tmp_path)
    ids = [f"tiny/{TEST_BACKBONE}/default/s0", "tiny/gru4rec/default/s0"]
    only = [a for i in ids for a in ("--only", i)]
    _invoke("experiment", "tiny.yaml", *only, "--threads", "1", "--no-progress")
    first = _records(tmp_path / "out/records")

    # records as an earlier session left them: no ranks, no run folders; one with other numbers
    import shutil

    for run_id in ids:
        shutil.rmtree(tmp_path / "out/runs" / run_id)
        legacy = {k: v for k, v in first[run_id].items() if k != RANKS_KEY}
        if run_id == ids[1]:
            legacy["test"] = {**legacy["test"], "HR@20": legacy["test"]["HR@20"] + 0.05}
        (tmp_path / "out/records" / f"{run_id}.json").write_text(json.dumps(legacy))
    assert "2 done, 0 to run, 0 stale" in _invoke("experiment", "tiny.yaml", "--dry-run", *only).output

    out = _invoke("experiment", "tiny.yaml", "--reproduce", *only, "--threads", "1", "--no-progress").output
    assert "2 finished run(s) to retrain (2 without test ranks, 0 whose checkpoint other runs read), 2 now" in out
    assert f"{ids[0]}: reproduced" in out and f"{ids[1]}: warning: did NOT reproduce" in out
    after = _records(tmp_path / "out/records")
    assert after[ids[0]][RANKS_KEY] == first[ids[0]][RANKS_KEY]
    assert after[ids[0]]["reproduction"]["agrees"] and after[ids[0]]["test"] == first[ids[0]]["test"]
    assert after[ids[0]]["reproduction"]["command"].endswith("--reproduce")
    assert RANKS_KEY not in after[ids[1]] and not after[ids[1]]["reproduction"]["agrees"]
    assert after[ids[1]]["reproduction"]["max_abs_difference"] == pytest.approx(0.05, abs=1e-9)
    assert after[ids[1]]["test"]["HR@20"] == pytest.approx(first[ids[1]]["test"]["HR@20"] + 0.05)
    md = (tmp_path / "out/results/tiny.md").read_text()
    assert "1 of 2 run(s) gave the record's test metrics again" in md
    assert f"- `{ids[1]}`: largest test metric difference 5.00 points" in md

    # each record is tried once; nothing new is trained by --reproduce
    monkeypatch.setattr(training, "train", _boom)
    out = _invoke("experiment", "tiny.yaml", "--reproduce", "--threads", "1").output
    assert "0 finished run(s) to retrain" in out
    _invoke("experiment", "tiny.yaml", *only)  # the backfill leaves the retrained folder's ranks out
    assert RANKS_KEY not in _records(tmp_path / "out/records")[ids[1]]
    refused = _invoke("experiment", "tiny.yaml", "--reproduce", "--dry-run", expect=1)
    assert "--dry-run, --report-only and --reproduce exclude each other" in str(refused.exception)
