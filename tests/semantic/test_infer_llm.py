"""The engine with the real SmolLM2 model: generation into the store, and kill -9 followed by a rerun."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from intentrec.data.dataset import PreparedDataset
from intentrec.errors import IntentrecError
from intentrec.semantic.infer import run_inference
from intentrec.semantic.llm.base import DecodingConfig
from intentrec.semantic.store import AnswerStore, dataset_fingerprint
from tests.helpers.llm import require_smollm2
from tests.helpers.semantic import LLM_TITLES, llm_sessions, write_dataset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    require_smollm2()
    # 8 test sessions of 6 items -> 40 prefix examples
    return write_dataset(
        tmp_path_factory.mktemp("tiny") / "ds", {"train": llm_sessions(2, 4), "test": llm_sessions(8, 6)}, LLM_TITLES
    )


def test_real_generation_lands_in_the_store(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("INTENTREC_HOME", str(tmp_path))
    with AnswerStore(tmp_path / "answers.sqlite") as store:
        report = run_inference(
            tiny,
            template="llm4sbr-short",
            llm="smollm2",
            limit=6,
            store=store,
            progress=False,
            decoding=DecodingConfig(max_tokens=16),
            llm_options={"n_parallel": 2},
        )
        assert report.generated == report.unique_prompts == 6 and report.covered == 6
        assert report.prompt_tokens > 6 * 30 and report.completion_tokens > 0
        ids = PreparedDataset(tiny).examples("test").example_ids[:6].tolist()
        records = store.answers_for_examples(dataset_fingerprint(tiny), "llm4sbr-short", report.model_sha256, ids)
        assert sorted(records) == ids and store.stats()["answers"] == 6
        assert all(r.answer.strip() and r.completion_tokens > 0 and r.prompt_tokens > 0 for r in records.values())
        assert {r.model for r in records.values()} == {"smollm2"}


def test_prompts_too_long_for_the_context_are_refused_before_any_call(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("INTENTREC_HOME", str(tmp_path))
    with AnswerStore(tmp_path / "answers.sqlite") as store:
        # the prompts have 108-209 tokens; llama.cpp rounds the context up to 256 cells, so with
        # 64 answer tokens the longest few do not fit and the others do
        with pytest.raises(IntentrecError, match=r"\b([1-9]|[1-3]\d) of 40 prompts do not fit the 256-token") as err:
            run_inference(
                tiny,
                template="llm4sbr-short",
                llm="smollm2",
                store=store,
                progress=False,
                decoding=DecodingConfig(max_tokens=64),
                llm_options={"n_parallel": 2, "n_ctx_per_seq": 160},
            )
        assert "n_ctx_per_seq" in str(err.value) and "max_session_items" in str(err.value)
        assert store.stats()["answers"] == 0  # nothing was generated, not even the prompts that fit


def _infer_cmd(dataset, home):
    return (
        [
            sys.executable,
            "-m",
            "intentrec.cli.main",
            "infer",
            str(dataset),
            "--prompt",
            "llm4sbr-short",
            "--llm",
            "smollm2",
            "--chunk-size",
            "4",
            "--llm-set",
            "n_parallel=2",
            "--set",
            "max_tokens=12",
            "--no-progress",
            "--json",
        ],
        {**os.environ, "INTENTREC_HOME": str(home)},
    )


def _answers(home) -> dict[str, str]:
    with sqlite3.connect(home / "answers.sqlite") as conn:
        return dict(conn.execute("SELECT key, answer FROM answers").fetchall())


def _links(home) -> int:
    with sqlite3.connect(home / "answers.sqlite") as conn:
        return conn.execute("SELECT COUNT(*) FROM example_answers").fetchone()[0]


@pytest.mark.slow
def test_kill_9_then_rerun_loses_nothing_and_duplicates_nothing(tiny, tmp_path):
    clean_home, killed_home = tmp_path / "clean", tmp_path / "killed"
    cmd, env = _infer_cmd(tiny, clean_home)
    clean = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout)
    assert clean["examples"] == 40 and clean["covered"] == 40
    n_unique = clean["unique_prompts"]

    cmd, env = _infer_cmd(tiny, killed_home)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    committed = 0
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        try:
            committed = len(_answers(killed_home))
        except sqlite3.Error:
            continue  # the store is not created yet
        if committed >= 8:
            break
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = _answers(killed_home)
    assert 8 <= len(partial) < n_unique

    cmd, env = _infer_cmd(tiny, killed_home)
    resumed = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout)
    assert resumed["already_stored"] == len(partial) and resumed["generated"] == n_unique - len(partial)
    final = _answers(killed_home)
    assert len(final) == n_unique and _links(killed_home) == 40
    assert final == _answers(clean_home)  # same keys, same greedy answers
