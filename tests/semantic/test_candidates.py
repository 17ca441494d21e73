"""Cross-fitted candidate lists: no training example is ranked by a model that saw its session."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from intentrec.data.candidates import candidates_path, read_candidates
from intentrec.data.folds import assign_folds
from intentrec.errors import ConfigError, DataError
from intentrec.training.candidates import ALL_FOLD, ALL_RUN, cross_fit_candidates
from tests.helpers.tiny_dataset import write_tiny_dataset

TINY = {"model_config": {"embedding_dim": 8}, "trainer_config": {"epochs": 1}}


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def crossfit(tmp_path_factory):
    root = tmp_path_factory.mktemp("candidates")
    dataset = write_tiny_dataset(root / "ds")
    result = cross_fit_candidates(
        dataset.path, model="gcegnn", folds=3, top=12, work_dir=root / "work", progress=False, **TINY
    )
    return dataset, result, root


def _table(path: Path) -> dict[str, np.ndarray]:
    t = pq.read_table(path)
    return {
        "example_id": t.column("example_id").to_numpy(),
        "candidates": np.asarray(t.column("candidates").to_pylist()),
        "fold": t.column("fold").to_numpy(),
        "scored_by": np.asarray(t.column("scored_by").to_pylist(), dtype=object),
    }


def _examples(dataset_dir: Path):
    t = pq.read_table(Path(dataset_dir) / "examples.parquet")
    return (
        t.column("example_id").to_numpy(),
        np.asarray(t.column("split").to_pylist(), dtype=object),
        t.column("session_index").to_numpy(),
    )


def _trained_sessions(run_dir: Path) -> tuple[set[int], set[int]]:
    """Sessions behind a run: those its train examples come from, and its train-split sessions."""
    record = json.loads((run_dir / "config.json").read_text())
    data = Path(record["dataset"]["path"])
    _, split, session = _examples(data)
    sessions = pq.read_table(data / "sessions.parquet")
    s_split = np.asarray(sessions.column("split").to_pylist(), dtype=object)
    s_index = sessions.column("session_index").to_numpy()
    return set(session[split == "train"].tolist()), set(s_index[s_split == "train"].tolist())


def test_no_train_example_is_scored_by_a_model_that_saw_its_session(crossfit):
    dataset, result, _ = crossfit
    assert result.path == candidates_path(dataset.path, "gcegnn", 3) and not result.reused
    table = _table(result.path)
    ids, split, session = _examples(dataset.path)
    split_of = dict(zip(ids.tolist(), split.tolist()))
    session_of = dict(zip(ids.tolist(), session.tolist()))
    assert sorted(table["example_id"].tolist()) == sorted(ids.tolist())  # every example, once

    runs = result.provenance["runs"]
    assert set(runs) == {"fold-0", "fold-1", "fold-2", ALL_RUN}
    trained = {run: _trained_sessions(Path(info["run_dir"])) for run, info in runs.items()}
    all_train_sessions = set(session[split == "train"].tolist())
    for eid, fold, run in zip(table["example_id"].tolist(), table["fold"].tolist(), table["scored_by"].tolist()):
        if split_of[eid] == "train":
            assert run == f"fold-{fold}"
            from_examples, graph_sessions = trained[run]
            # neither its training examples nor its train sessions (GCE-GNN's global graph) hold the session
            assert session_of[eid] not in from_examples and session_of[eid] not in graph_sessions
        else:
            assert (run, fold) == (ALL_RUN, ALL_FOLD)
    assert trained[ALL_RUN][0] == all_train_sessions
    # folds are by session: all prefixes of a session share one fold, and the folds cover the train sessions
    fold_of_session: dict[int, set[int]] = {}
    for eid, fold in zip(table["example_id"].tolist(), table["fold"].tolist()):
        if split_of[eid] == "train":
            fold_of_session.setdefault(session_of[eid], set()).add(fold)
    assert all(len(f) == 1 for f in fold_of_session.values())
    # each fold model trained on exactly the other folds' sessions (as the provenance records)
    for f in range(3):
        held = {s for s, fs in fold_of_session.items() if fs == {f}}
        assert trained[f"fold-{f}"][0] == all_train_sessions - held
        info = result.provenance["folds"][str(f)]
        assert info["scored_by"] == f"fold-{f}"
        assert info["train_examples_scored"] == int((table["fold"] == f).sum())
        assert runs[f"fold-{f}"]["trained_on"]["train_sessions"] == len(all_train_sessions - held)


def test_candidate_lists_are_valid_rankings(crossfit):
    dataset, result, _ = crossfit
    cands = _table(result.path)["candidates"]
    assert cands.shape[1] == 12 and cands.min() >= 1 and cands.max() <= dataset.num_items
    assert all(len(set(row)) == 12 for row in cands.tolist())
    ids = np.array([5, 0, 200])
    got = read_candidates(result.path, ids)
    table = _table(result.path)
    for row, eid in zip(got, ids):
        assert row.tolist() == table["candidates"][table["example_id"] == eid][0].tolist()
    assert read_candidates(result.path, ids, top=4).shape == (3, 4)


def test_fold_assignment_is_seeded_and_balanced():
    sessions = np.arange(100, 111)
    folds = assign_folds(sessions, 3, seed=7)
    assert sorted(np.bincount(folds).tolist()) == [3, 4, 4]
    assert np.array_equal(folds, assign_folds(sessions, 3, seed=7))
    assert not np.array_equal(folds, assign_folds(sessions, 3, seed=8))


def test_finished_files_and_runs_are_reused(crossfit):
    dataset, result, root = crossfit
    again = cross_fit_candidates(
        dataset.path, model="gcegnn", folds=3, top=12, work_dir=root / "work", progress=False, **TINY
    )
    assert again.reused and again.provenance == result.provenance
    # a shorter list: a new file scored by the same finished runs, nothing is trained again
    logs = {r: (Path(i["run_dir"]) / "log.jsonl").read_text() for r, i in result.provenance["runs"].items()}
    shorter = cross_fit_candidates(
        dataset.path,
        model="gcegnn",
        folds=3,
        top=4,
        work_dir=root / "work",
        progress=False,
        out=root / "top4.parquet",
        **TINY,
    )
    assert not shorter.reused
    assert {r: i["run_dir"] for r, i in shorter.provenance["runs"].items()} == {
        r: i["run_dir"] for r, i in result.provenance["runs"].items()
    }
    assert {r: (Path(i["run_dir"]) / "log.jsonl").read_text() for r, i in shorter.provenance["runs"].items()} == logs
    np.testing.assert_array_equal(_table(shorter.path)["candidates"], _table(result.path)["candidates"][:, :4])


def test_a_second_process_waits_for_the_file_then_reuses_it(crossfit, capsys):
    import threading
    import time

    from intentrec.io import exclusive_lock

    dataset, result, root = crossfit
    held = threading.Event()

    def writer():  # stands in for another process that is still writing the file
        with exclusive_lock(result.path.with_name(result.path.name + ".lock"), what="x"):
            held.set()
            time.sleep(0.5)

    thread = threading.Thread(target=writer)
    thread.start()
    held.wait(5)
    started = time.perf_counter()
    again = cross_fit_candidates(
        dataset.path, model="gcegnn", folds=3, top=12, work_dir=root / "work", progress=False, **TINY
    )
    waited = time.perf_counter() - started
    thread.join()
    assert again.reused and waited >= 0.3
    assert f"candidates: waiting for pid {os.getpid()}" in capsys.readouterr().err


def test_leaky_mode_is_flagged_and_shares_the_all_run(crossfit):
    dataset, crossfitted, root = crossfit
    all_run = Path(crossfitted.provenance["runs"][ALL_RUN]["run_dir"])
    log = (all_run / "log.jsonl").read_text()
    result = cross_fit_candidates(
        dataset.path, model="gcegnn", folds=3, top=12, leaky=True, work_dir=root / "work", progress=False, **TINY
    )
    assert result.path.name == "candidates.gcegnn.f3.leaky.parquet"
    assert result.provenance["leaky"] is True and "leaky" in result.provenance["rule"]
    assert set(result.provenance["runs"]) == {ALL_RUN} and result.provenance["folds"] == {}
    table = _table(result.path)
    assert set(table["scored_by"].tolist()) == {ALL_RUN} and set(table["fold"].tolist()) == {ALL_FOLD}
    # the model trained on all train examples is the cross-fitted file's: reused, not retrained
    assert Path(result.provenance["runs"][ALL_RUN]["run_dir"]) == all_run and (all_run / "log.jsonl").read_text() == log
    crossfitted_table = _table(crossfitted.path)
    valid_test = crossfitted_table["fold"] == ALL_FOLD
    np.testing.assert_array_equal(table["candidates"][valid_test], crossfitted_table["candidates"][valid_test])
    with pytest.raises(ConfigError, match="folds >= 2"):
        cross_fit_candidates(dataset.path, model="gcegnn", folds=1, work_dir=root / "work", progress=False, **TINY)


def test_read_candidates_names_the_file_on_errors(tmp_path, crossfit):
    _, result, _ = crossfit
    with pytest.raises(DataError, match="no candidates for 1 of 2 examples"):
        read_candidates(result.path, np.array([0, 99999]))
    with pytest.raises(DataError, match="fewer than 13 candidates"):
        read_candidates(result.path, np.array([0]), top=13)
    with pytest.raises(DataError, match="candidate file not found"):
        read_candidates(tmp_path / "nope.parquet", np.array([0]))
