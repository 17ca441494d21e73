"""Grids whose method runs read another run of the same seed (LLMGR's ID side), and eval-sample notes."""

from __future__ import annotations

import pytest

from intentrec.errors import ConfigError
from intentrec.experiments.plan import execution_order, expand
from intentrec.experiments.report import Row, _eval_sample_notes, eval_sample_of
from intentrec.experiments.runner import Experiment, RunOptions, run_experiment
from intentrec.experiments.spec import build_spec


def _spec(grids, tmp=None, **overrides):
    values = {
        "name": "t",
        "runs_dir": "runs" if tmp is None else str(tmp / "runs"),
        "records_dir": "records" if tmp is None else str(tmp / "records"),
        "results_dir": "results" if tmp is None else str(tmp / "results"),
        "datasets": {"d": {"path": "data"}},
        "seeds": [0, 1],
        "grids": grids,
    }
    values.update(overrides)
    return build_spec(values)


LLMGR_FIRST = [
    # the method block before the ID block: the runner still trains each ID run first
    {"backbones": ["gcsan", "stamp"], "methods": ["llmgr"], "id_run_from": {"variant": "default"}},
    {"backbones": ["gcsan", "stamp"], "methods": ["none"]},
]


def test_id_run_from_names_the_same_seed_and_orders_it_first():
    runs = expand(_spec(LLMGR_FIRST))
    by_id = {r.run_id: r for r in runs}
    run = by_id["d/stamp+llmgr/default/s1"]
    assert run.settings["method"] == {"id_run": "runs/d/stamp/default/s1"}
    assert run.needs == ("d/stamp/default/s1",)
    assert by_id["d/gcsan/default/s0"].needs == ()
    order = [r.run_id for r in execution_order(runs)]
    for r in runs:
        for need in r.needs:
            assert order.index(need) < order.index(r.run_id)
    assert order[:2] == ["d/gcsan/default/s0", "d/gcsan+llmgr/default/s0"]


def test_id_run_from_another_backbone_and_variant():
    grids = [
        {"backbones": ["gcsan"], "methods": ["none"], "variants": {"long": {"train.epochs": 9}}},
        {"backbones": ["stamp"], "methods": ["llmgr"], "id_run_from": {"backbone": "gcsan", "variant": "long"}},
    ]
    run = {r.run_id: r for r in expand(_spec(grids))}["d/stamp+llmgr/default/s0"]
    assert run.settings["method"]["id_run"] == "runs/d/gcsan/long/s0" and run.needs == ("d/gcsan/long/s0",)


def test_id_run_placeholders_are_filled_per_run_and_found_in_the_grid():
    grids = [
        {"backbones": ["gcsan"], "methods": ["none"]},
        {
            "backbones": ["gcsan"],
            "methods": ["llmgr"],
            "settings": {"method.id_run": "runs/{dataset}/{backbone}/default/s{seed}"},
        },
        {"backbones": ["stamp"], "methods": ["llmgr"], "variants": {"x": {"method.id_run": "elsewhere/s{seed}"}}},
    ]
    by_id = {r.run_id: r for r in expand(_spec(grids))}
    inside = by_id["d/gcsan+llmgr/default/s1"]
    assert inside.settings["method"]["id_run"] == "runs/d/gcsan/default/s1"
    assert inside.needs == ("d/gcsan/default/s1",)
    outside = by_id["d/stamp+llmgr/x/s0"]
    assert outside.settings["method"]["id_run"] == "elsewhere/s0" and outside.needs == ()


@pytest.mark.parametrize(
    ("grids", "message"),
    [
        ([{"backbones": ["gcsan"], "methods": ["none", "llmgr"], "id_run_from": {}}], "backbone-alone"),
        (
            [{"backbones": ["gcsan"], "methods": ["llmgr"], "id_run_from": {}, "settings": {"method.id_run": "r"}}],
            "not both",
        ),
        ([{"backbones": ["gcsan"], "methods": ["llmgr"], "id_run_from": {}}], "which the grid does not define"),
        ([{"backbones": ["gcsan"], "methods": ["llmgr"], "id_run_from": {"method": "llmgr"}}], "its own ID run"),
    ],
)
def test_id_run_from_errors(grids, message):
    with pytest.raises(ConfigError, match=message):
        expand(_spec(grids))


def test_unknown_id_run_from_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown key 'grids.0.id_run_from.seed'"):
        _spec([{"backbones": ["gcsan"], "methods": ["llmgr"], "id_run_from": {"seed": 1}}])


def test_runner_waits_for_an_unfinished_id_run(tmp_path):
    spec = _spec(LLMGR_FIRST, tmp_path, seeds=[0])
    experiment = Experiment(spec, "t.yaml", expand(spec))
    lines: list[str] = []
    outcome = run_experiment(experiment, RunOptions(only=["d/gcsan+llmgr/*"]), echo=lines.append)
    assert outcome.trained == [] and outcome.remaining == 1
    assert any("waits for its ID run d/gcsan/default/s0" in line for line in lines)


def test_runner_skips_a_run_whose_id_run_has_a_record_but_no_checkpoint_here(tmp_path, monkeypatch):
    import json

    from intentrec.experiments import runner
    from intentrec.experiments.runner import _checkpoints_needed

    monkeypatch.setattr(runner, "write_report", lambda report: [])  # the hand-made record has no metrics

    spec = _spec(LLMGR_FIRST, tmp_path, seeds=[0])
    experiment = Experiment(spec, "t.yaml", expand(spec))
    id_run = next(r for r in experiment.runs if r.run_id == "d/gcsan/default/s0")
    path = id_run.record_path(spec.records_dir)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"run_id": id_run.run_id, "settings": id_run.settings}))
    lines: list[str] = []
    outcome = run_experiment(experiment, RunOptions(only=["d/gcsan+llmgr/*"]), echo=lines.append)
    assert outcome.trained == [] and outcome.remaining == 1
    assert any(
        "cannot read its ID run: d/gcsan/default/s0 has a record but no checkpoint here" in line
        and "--reproduce --only d/gcsan/default/s0" in line
        for line in lines
    ), lines
    llmgr_runs = [r for r in experiment.runs if r.method == "llmgr"]
    assert _checkpoints_needed(experiment, llmgr_runs) == {"d/gcsan/default/s0"}


def _record(trainer: dict) -> dict:
    return {"seed": 0, "test": {}, "config": {"trainer": trainer}}


def test_report_notes_the_eval_sample():
    sampled = {"eval_sample": 2000, "eval_sample_seed": 0}
    assert eval_sample_of(_record(sampled)) == (2000, 0)
    assert eval_sample_of(_record({"eval_sample": None})) is None and eval_sample_of({"seed": 0}) is None
    rows = [
        Row("d", "gcsan", None, "default", 0, [_record(sampled)]),
        Row("d", "gcsan", "llmgr", "default", 1, [_record(sampled)]),
    ]
    notes = " ".join(_eval_sample_notes(rows))
    assert "test on a seeded sample of 2000 examples" in notes and "every row" in notes
    assert _eval_sample_notes([Row("d", "gcsan", None, "default", 0, [_record({})])]) == []
    mixed = " ".join(_eval_sample_notes([*rows, Row("d", "stamp", None, "default", 2, [_record({})])]))
    assert "`d/gcsan/default`, `d/gcsan+llmgr/default`" in mixed and "`d/stamp/default`: the full splits" in mixed
