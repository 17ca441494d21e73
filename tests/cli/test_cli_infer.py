"""``intentrec infer``: the dry-run report as JSON, and one-line errors (no LLM is loaded)."""

from __future__ import annotations

import json

import pytest

from intentrec.cli.main import main
from tests.helpers.semantic import SESSIONS, write_dataset


@pytest.fixture
def dataset(tmp_path):
    return write_dataset(tmp_path / "ds", SESSIONS)


def test_cli_infer_json_and_errors(dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("INTENTREC_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(
        "sys.argv",
        ["intentrec", "infer", str(dataset), "--prompt", "llm4sbr-short", "--llm", "smollm2", "--dry-run", "--json"],
    )
    main()
    out = json.loads(capsys.readouterr().out)
    assert out["examples"] == 12 and out["unique_prompts"] == 7 and out["coverage"] == 0.0
    monkeypatch.setattr(
        "sys.argv",
        ["intentrec", "infer", str(dataset), "--prompt", "llm4sbr-short", "--llm", "no-such-model", "--dry-run"],
    )
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2 and "no-such-model" in capsys.readouterr().err
    monkeypatch.setattr(
        "sys.argv",
        ["intentrec", "infer", str(dataset), "--prompt", "llm4sbr-short", "--set", "max_tokenz=3", "--dry-run"],
    )
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2 and "max_tokenz" in capsys.readouterr().err
