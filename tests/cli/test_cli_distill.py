"""``intentrec distill``: a student from answers already in the store (no LLM is loaded), and errors."""

from __future__ import annotations

import json

import pytest

from intentrec.cli.main import main
from intentrec.models.methods.llm4sbr_distill import run_teacher
from intentrec.semantic.llm import resolve_llm_identity
from intentrec.semantic.store import AnswerStore
from tests.helpers.distill import TitleTeacher, make_title_bert
from tests.helpers.semantic import LLM_TITLES, llm_sessions, write_dataset


def _run(monkeypatch, capsys, *args):
    monkeypatch.setattr("sys.argv", ["intentrec", "distill", *map(str, args)])
    main()
    return json.loads(capsys.readouterr().out)


def test_cli_distill_from_stored_answers_and_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("INTENTREC_HOME", str(tmp_path / "home"))
    data = write_dataset(tmp_path / "ds", {"train": llm_sessions(12, 5), "test": llm_sessions(2, 3)}, LLM_TITLES)
    bert = make_title_bert(tmp_path / "bert")
    store = tmp_path / "answers.sqlite"
    # answers stored under the shipped smollm2's identity, so '--llm smollm2' finds them all
    with AnswerStore(store) as s:
        teacher = TitleTeacher(identity=resolve_llm_identity("smollm2"))
        run_teacher(data, llm=teacher, views=["long", "short"], sample=30, seed=4, store=s, progress=False)
    common = [data, "--llm", "smollm2", "--sample", 30, "--seed", 4, "--store", store, "--json", "--no-generate"]

    planned = _run(monkeypatch, capsys, *common, "--teacher-only")
    assert planned["generated"] == 0 and all(v["covered"] == 30 for v in planned["views"].values())

    out = _run(
        monkeypatch, capsys, *common, "--out", tmp_path / "student", "--encoder", f"hf:{bert}",
        "--student-set", "epochs=5", "--student-set", "hidden=16",
    )  # fmt: skip
    assert out["folder"] == str(tmp_path / "student") and out["kind"] == "head"
    assert out["examples"]["with_targets"] == 30 and out["teacher"]["model"] == "smollm2"
    identity = json.loads((tmp_path / "student" / "student.json").read_text())
    assert identity["config"]["hidden"] == 16 and identity["sample"]["seed"] == 4

    for args, message in (
        ([*common], "--out DIR is required"),
        ([*common, "--out", tmp_path / "s2", "--student-set", "hiden=3"], "hiden"),
        ([*common, "--out", tmp_path / "s3", "--sample", 1], "--sample must be at least 2"),
    ):
        monkeypatch.setattr("sys.argv", ["intentrec", "distill", *map(str, args)])
        with pytest.raises(SystemExit) as exc:
            main()
        assert exc.value.code == 2 and message in capsys.readouterr().err
