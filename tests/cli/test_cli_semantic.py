"""``intentrec embed`` / ``intents`` / ``cache stats`` on a tiny hand-written prepared dataset."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from intentrec.semantic.intents import load_intents
from intentrec.semantic.store import AnswerStore, dataset_fingerprint
from tests.helpers.intents import LLM, make_tiny_bert, put_answers, write_dataset


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTENTREC_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert-intents"))


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    from intentrec.cli.main import main

    monkeypatch.setattr(sys, "argv", ["intentrec", *args])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_cache_stats_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    data = write_dataset(tmp_path / "ds")
    code, out, _ = run_cli(["cache", "stats", "--json"], monkeypatch, capsys)
    assert code == 0 and json.loads(out)["answers"] == 0
    with AnswerStore() as store:
        put_answers(store, data, "llm4sbr-long", {0: "a", 1: "b"})
        put_answers(store, data, "dmsrec", {0: "c"})
    code, out, _ = run_cli(["cache", "stats", "--json"], monkeypatch, capsys)
    stats = json.loads(out)
    assert code == 0
    assert stats["answers"] == 2 and stats["distinct_prompts"] == 2  # dmsrec reused the same prompt text → same key
    code, out, _ = run_cli(["cache", "stats"], monkeypatch, capsys)
    assert code == 0 and "2 answers" in out and "llm4sbr-long" in out


def test_cli_cache_stats_missing_store_is_a_clean_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    code, _, err = run_cli(["cache", "stats", "--store", str(tmp_path / "nope.sqlite")], monkeypatch, capsys)
    assert code == 2 and "nope.sqlite" in err and "Traceback" not in err


def test_cli_embed_and_intents(
    tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    data = write_dataset(tmp_path / "ds")
    code, out, err = run_cli(["embed", str(data), "--encoder", f"hf:{tiny_bert}", "--json"], monkeypatch, capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["items"] == 7 and summary["dim"] == 16 and summary["encoded_texts"] == 7
    assert Path(summary["path"]).is_file()
    code, out, _ = run_cli(["embed", str(data), "--encoder", f"hf:{tiny_bert}"], monkeypatch, capsys)
    assert code == 0 and "up to date" in out

    import intentrec.cli.semantic as cli_semantic

    monkeypatch.setattr(cli_semantic, "resolve_llm_identity", lambda spec: LLM)
    with AnswerStore() as store:
        put_answers(store, data, "llm4sbr-short", {6: "red nail polish", 7: "blue"})
    args = [
        "intents",
        str(data),
        "--prompt",
        "llm4sbr-short",
        "--llm",
        "fake.gguf",
        "--k",
        "2",
        "--encoder",
        f"hf:{tiny_bert}",
        "--split",
        "test",
    ]
    code, out, err = run_cli([*args, "--json"], monkeypatch, capsys)
    assert code == 0, err
    report = json.loads(out)
    assert (report["examples"], report["with_intent"], report["missing"]) == (2, 2, 0)
    tensors, _ = load_intents(report["path"])
    assert tensors["example_ids"].tolist() == [6, 7] and tensors["vectors"].shape == (2, 16)
    code, out, _ = run_cli(args[:-2] + ["--split", "valid"], monkeypatch, capsys)
    assert code == 0 and "0/1" in out and "intentrec infer" in out


def test_cli_intents_errors_are_clean(
    tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    data = write_dataset(tmp_path / "ds")
    code, _, err = run_cli(["intents", str(data), "--prompt", "nope", "--llm", "x"], monkeypatch, capsys)
    assert code == 2 and "unknown prompt template 'nope'" in err
    code, _, err = run_cli(["embed", str(tmp_path / "missing"), "--encoder", f"hf:{tiny_bert}"], monkeypatch, capsys)
    assert code == 2 and "manifest.json" in err and "Traceback" not in err


def test_cli_intents_with_the_real_llm_identity_of_a_gguf_path(
    tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("intentrec.semantic.llm")
    import hashlib

    data = write_dataset(tmp_path / "ds")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF not really a model")
    sha = hashlib.sha256(gguf.read_bytes()).hexdigest()
    with AnswerStore() as store:
        put_answers(store, data, "llm4sbr-long", {6: "red lipstick"})
        store.link_examples(
            dataset_fingerprint(data),
            "llm4sbr-long",
            sha,
            store.linked_keys(dataset_fingerprint(data), "llm4sbr-long", LLM["model_sha256"], [6]).items(),
        )
    code, out, err = run_cli(
        [
            "intents",
            str(data),
            "--prompt",
            "llm4sbr-long",
            "--llm",
            str(gguf),
            "--encoder",
            f"hf:{tiny_bert}",
            "--split",
            "test",
            "--json",
        ],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    assert json.loads(out)["with_intent"] == 1


@pytest.mark.slow
def test_cli_embed_with_minilm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("sentence_transformers")
    data = write_dataset(tmp_path / "ds")
    code, out, err = run_cli(["embed", str(data), "--json"], monkeypatch, capsys)
    assert code == 0, err
    summary = json.loads(out)
    vectors = np.load(summary["path"])
    assert vectors.shape == (7, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # "red nail polish" is closer to "blue nail polish" than to "garden hose".
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
