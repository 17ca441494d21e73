"""benchmarks/llm_rank_table.py: a trained row's metrics on the LLM's sample come from its records' ranks."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from intentrec.evaluation.metrics import metrics_from_ranks
from intentrec.experiments.plan import expand
from intentrec.experiments.significance import encode_ranks
from intentrec.experiments.spec import build_spec

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "llm_rank_table.py"
KS = [5, 10, 20, 50, 100]


def _load():
    spec = importlib.util.spec_from_file_location("llm_rank_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(seed: int, ids: np.ndarray, ranks: np.ndarray, fingerprint: str = "fp") -> dict:
    return {
        "run_id": f"beauty/niser/default/s{seed}",
        "backbone": "niser",
        "method": None,
        "variant": "default",
        "seed": seed,
        "paper_mode": False,
        "dataset": {"fingerprint": fingerprint},
        "test_ranks": encode_ranks(ids, ranks, KS),
    }


def _report(sample_ids: list[int]) -> dict:
    return {
        "baseline": "fs",
        "llm": {"model": "qwen.gguf"},
        "dataset_fingerprint": "fp",
        "metrics": metrics_from_ranks(np.full(len(sample_ids), 7), KS),
        "counts": {"examples": len(sample_ids), "ranked": len(sample_ids), "missing": 0, "stale": 0}
        | {"empty": 0, "garbage": 0, "no_rationale": 0},
        "generated": len(sample_ids),
        "generation_seconds": 2.0 * len(sample_ids),
        "sample": {"split": "test", "sample": len(sample_ids), "seed": 0, "examples": len(sample_ids)}
        | {"rule": "select_rows", "example_ids": sample_ids},
    }


def test_sample_metrics_are_those_of_the_sampled_examples_only():
    module = _load()
    rng = np.random.default_rng(0)
    ids = np.arange(10, 410, 2)
    ranks = rng.integers(1, 1000, size=ids.size)
    sample = np.sort(rng.choice(ids, size=40, replace=False))
    got, cap = module.sample_metrics(_record(0, ids, ranks), sample, "rec")
    expected = metrics_from_ranks(np.minimum(ranks[np.searchsorted(ids, sample)], 101), KS)
    assert cap == 101
    assert got == pytest.approx(expected)
    # the other examples' ranks do not enter: a sample of hits only gives HR@5 = 1
    hits = ids[ranks <= 5][:5]
    assert module.sample_metrics(_record(0, ids, ranks), hits, "rec")[0]["HR@5"] == 1.0


def test_a_sampled_example_without_a_rank_is_an_error():
    module = _load()
    ids = np.arange(1, 50)
    with pytest.raises(module.TableError, match="1 sampled example"):
        module.sample_metrics(_record(0, ids, np.ones_like(ids)), np.array([3, 99]), "rec")


def test_table_end_to_end_only_finished_runs_and_fingerprint_check(tmp_path):
    spec_values = {
        "name": "t",
        "runs_dir": "runs",
        "records_dir": "records",
        "datasets": {"beauty": {"path": "data"}},
        "seeds": [0, 1],
        "settings": {"train.epochs": 2},
        "grids": [{"backbones": ["niser", "srgnn"], "methods": ["none"]}],
    }
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(spec_values))
    runs = {r.run_id: r for r in expand(build_spec(spec_values))}
    ids = np.arange(1, 201)

    def write(run_id: str, ranks: np.ndarray, **changes) -> None:
        run = runs[run_id]
        record = _record(run.seed, ids, ranks) | {"run_id": run_id, "backbone": run.backbone}
        record |= {"settings": run.settings} | changes
        path = run.record_path(tmp_path / "records")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))

    for seed in (0, 1):
        write(f"beauty/niser/default/s{seed}", np.where(ids % (seed + 2) == 0, 1, 300))
    # made with other settings than the grid's now: stale, left out like the experiment report does
    write("beauty/srgnn/default/s0", np.ones_like(ids), settings={"train": {"epochs": 9}})
    sample = [4, 9, 12, 33, 160, 200]
    report = tmp_path / "fs.json"
    report.write_text(json.dumps(_report(sample)))
    cmd = [sys.executable, str(SCRIPT), str(report), "--experiment", "e.yaml", "--out", "table.md"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=tmp_path)
    text = (tmp_path / "table.md").read_text()
    assert text.strip() == done.stdout.strip()
    row = next(line for line in text.splitlines() if line.startswith("| niser / — / default"))
    # seed 0: even ids hit (4, 12, 160, 200: 4 of 6); seed 1: multiples of 3 (9, 12, 33: 3 of 6)
    hr20 = [100 * 4 / 6, 100 * 3 / 6]
    assert f"| {np.mean(hr20):.2f} ± {np.std(hr20, ddof=1):.2f} |" in row
    assert "| 2 |" in row
    assert "srgnn" not in text
    llm = next(line for line in text.splitlines() if line.startswith("| LLM-as-RS fs — qwen.gguf"))
    assert "ranked 6/6" in llm and "2.00 s/call (6 calls)" in llm

    write("beauty/niser/default/s0", np.ones_like(ids), dataset={"fingerprint": "other"})
    failed = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert failed.returncode == 1
    assert "dataset fingerprint other is not the LLM reports' fp" in failed.stderr
