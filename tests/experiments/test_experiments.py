"""The experiment runner without the command: grid expansion, spec errors, reports, machine records.

``intentrec experiment`` itself (a tiny real grid, resume, lanes, errors) is tested in tests/cli/test_cli_experiment.py.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest
import yaml

from intentrec.errors import ConfigError
from intentrec.experiments.plan import check_settings, execution_order, expand, make_run_id, select
from intentrec.experiments.report import Row, baseline_of, mean_std, pct_cell
from intentrec.experiments.spec import build_spec, load_spec

REPO = Path(__file__).resolve().parents[2]


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
    assert ids[:4] == [
        "d/srgnn/default/s0",
        "d/srgnn/default/s1",
        "d/srgnn+llm4sbr/default/s0",
        "d/srgnn+llm4sbr/default/s1",
    ]
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
        "d/stamp/default/s0",
        "d/stamp/default/s1",
        "d/stamp+llm4sbr/default/s0",
        "d/stamp+llm4sbr/default/s1",
    ]
    assert len(select(runs, ["*/wo-*", "*/paper/*"])) == 4


def test_grid_errors_name_the_problem():
    with pytest.raises(ConfigError, match="defined twice with different settings"):
        expand(_spec(grids=[{"backbones": ["srgnn"]}, {"backbones": ["srgnn"], "settings": {"train.lr": 0.1}}]))
    with pytest.raises(ConfigError, match=r"variants.wo-au sets method.\* keys.*'none'"):
        expand(
            _spec(grids=[{"backbones": ["srgnn"], "methods": ["none", "x"], "variants": {"wo-au": {"method.a": 1}}}])
        )
    with pytest.raises(ConfigError, match="seeds"):
        expand(_spec(settings={"train.seed": 3}))
    with pytest.raises(
        ConfigError, match=r"settings: setting 'epochs' needs a section prefix: 'model.epochs', 'train.epochs'"
    ):
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
        "name": "t",
        "runs_dir": "r",
        "records_dir": "rec",
        "datasets": {"d": {"prepare": {"source": "generic", "path": "x"}}},
        "grids": [{"backbones": ["srgnn"]}],
        "anchors": [{"label": "A", "HR@20": 1.0}],
    }
    cases = [
        ({"seedz": [1]}, "unknown key 'seedz'", "runs_dir"),
        ({"grids": [{"backbones": ["srgnn"], "method": ["x"]}]}, "unknown key 'grids.0.method'", "variants"),
        (
            {"datasets": {"d": {"prepare": {"source": "generic", "path": "x", "protocl": "p"}}}},
            "unknown key 'datasets.d.prepare.protocl'",
            "protocol",
        ),
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
    for name, count, anchored in (
        ("llm4sbr-beauty", 78, True),
        ("dmsrec-beauty", 75, True),
        ("backbones-beauty", 48, True),
        ("llm4sbr-ml1m", 60, False),  # the papers' ML-1M numbers could not be read (see the files)
        ("dmsrec-ml1m", 36, False),
    ):
        spec = load_spec(REPO / "experiments" / f"{name}.yaml")
        runs = expand(spec)
        assert len(runs) == count and bool(spec.anchors) == anchored, name
        check_settings(runs)  # backbone and trainer settings are valid; unknown methods are skipped
    ids = {r.run_id for r in expand(load_spec(REPO / "experiments/llm4sbr-beauty.yaml"))}
    assert {"beauty/srgnn+llm4sbr/wo-au/s0", "beauty/gcegnn/default/s2", "beauty/srgnn/paper-mode/s1"} <= ids
    assert {"beauty/dhcn+llm4sbr/default/s2", "beauty/dhcn/paper-mode/s0"} <= ids
    zoo = {r.run_id: r for r in expand(load_spec(REPO / "experiments/backbones-beauty.yaml"))}
    # the new models' block raises the epoch cap; the first block's runs keep theirs (their records stay valid)
    assert zoo["beauty/msgifsr/default/s0"].settings["train"]["epochs"] == 30
    assert zoo["beauty/srgnn/default/s0"].settings["train"]["epochs"] == 12


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
