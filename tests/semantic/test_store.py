"""The SQLite answer store: keys, idempotence, WAL, concurrency, kill -9 durability, export."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from intentrec.errors import DataError
from intentrec.semantic.store import (
    AnswerRecord,
    AnswerStore,
    answer_key,
    dataset_fingerprint,
)


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTENTREC_HOME", str(tmp_path / "home"))


def record(i: int, *, model: str = "m1", template: str = "llm4sbr-long", answer: str | None = None) -> AnswerRecord:
    prompt = f"prompt {i}"
    key = answer_key("llamacpp", f"sha-{model}", {"temperature": 0.0}, "1", prompt)
    return AnswerRecord(
        key=key,
        backend="llamacpp",
        model=model,
        model_sha256=f"sha-{model}",
        template=template,
        template_version="1",
        decoding_json='{"temperature": 0.0}',
        prompt=prompt,
        answer=answer if answer is not None else f"answer {i}",
        prompt_tokens=10 + i,
        completion_tokens=3,
        latency_s=0.5,
        created_at=1000.0 + i,
    )


def test_answer_key_is_canonical_and_sensitive_to_every_part() -> None:
    base = answer_key("llamacpp", "abc", {"temperature": 0.0, "top_p": 1.0}, "1", "hello")
    assert len(base) == 64 and int(base, 16) >= 0
    assert answer_key("llamacpp", "abc", {"top_p": 1.0, "temperature": 0.0}, "1", "hello") == base
    variants = [
        answer_key("openai", "abc", {"temperature": 0.0, "top_p": 1.0}, "1", "hello"),
        answer_key("llamacpp", "abd", {"temperature": 0.0, "top_p": 1.0}, "1", "hello"),
        answer_key("llamacpp", "abc", {"temperature": 0.1, "top_p": 1.0}, "1", "hello"),
        answer_key("llamacpp", "abc", {"temperature": 0.0, "top_p": 1.0}, "2", "hello"),
        answer_key("llamacpp", "abc", {"temperature": 0.0, "top_p": 1.0}, "1", "hello "),
    ]
    assert len({base, *variants}) == 6


def test_default_path_is_under_intentrec_home(tmp_path: Path) -> None:
    with AnswerStore() as store:
        assert store.path == tmp_path / "home" / "answers.sqlite"
        assert store.journal_mode == "wal"


def test_put_is_idempotent_and_missing_get_many_agree(tmp_path: Path) -> None:
    with AnswerStore(tmp_path / "a.sqlite") as store:
        recs = [record(i) for i in range(5)]
        assert store.put_many(recs[:3]) == 3
        # Re-putting the same keys (even with a different answer) inserts nothing and keeps the first.
        changed = record(0, answer="other")
        assert store.put_many([changed, *recs]) == 2
        assert store.stats()["answers"] == 5
        assert store.get_many([recs[0].key])[recs[0].key].answer == "answer 0"
        absent = answer_key("x", "y", {}, "1", "z")
        assert store.missing([absent, recs[1].key, absent]) == [absent]
        got = store.get_many([r.key for r in recs] + [absent])
        assert set(got) == {r.key for r in recs}
        assert got[recs[4].key] == recs[4]
        assert store.put_many([]) == 0


def test_many_keys_beyond_the_sqlite_parameter_limit(tmp_path: Path) -> None:
    with AnswerStore(tmp_path / "a.sqlite") as store:
        recs = [record(i) for i in range(1500)]
        store.put_many(recs)
        assert len(store.get_many([r.key for r in recs])) == 1500
        assert store.missing([r.key for r in recs]) == []


def test_example_links_and_answers_for_examples(tmp_path: Path) -> None:
    with AnswerStore(tmp_path / "a.sqlite") as store:
        recs = [record(i) for i in range(3)]
        store.put_many(recs[:2])
        store.link_examples("fp", "llm4sbr-long", "sha-m1", [(10, recs[0].key), (11, recs[1].key), (12, recs[2].key)])
        got = store.answers_for_examples("fp", "llm4sbr-long", "sha-m1", [10, 11, 12, 13])
        assert sorted(got) == [10, 11]  # 12 is linked but its answer is not stored; 13 not linked
        assert got[11].answer == "answer 1"
        assert store.answers_for_examples("other-fp", "llm4sbr-long", "sha-m1", [10]) == {}
        assert store.answers_for_examples("fp", "llm4sbr-short", "sha-m1", [10]) == {}
        # A newer link for the same example replaces the old one.
        store.link_examples("fp", "llm4sbr-long", "sha-m1", [(10, recs[1].key)])
        assert store.answers_for_examples("fp", "llm4sbr-long", "sha-m1", [10])[10].answer == "answer 1"
        assert store.stats()["example_links"] == 3


def test_stats_counts_per_model_and_template(tmp_path: Path) -> None:
    with AnswerStore(tmp_path / "a.sqlite") as store:
        store.put_many([record(i) for i in range(4)])
        store.put_many([record(i + 100, model="m2") for i in range(2)])
        store.put_many([record(i + 200, template="dmsrec") for i in range(3)])
        stats = store.stats()
    assert stats["answers"] == 9
    assert stats["distinct_prompts"] == 9
    groups = {(g["model"], g["template"]): g["answers"] for g in stats["by_model_template"]}
    assert groups == {("m1", "llm4sbr-long"): 4, ("m2", "llm4sbr-long"): 2, ("m1", "dmsrec"): 3}
    m2 = next(g for g in stats["by_model_template"] if g["model"] == "m2")
    assert m2["completion_tokens"] == 6 and m2["generation_seconds"] == pytest.approx(1.0)


def test_distinct_prompts_counts_prompts_not_answers(tmp_path: Path) -> None:
    with AnswerStore(tmp_path / "a.sqlite") as store:
        a = record(1)
        b = record(1, model="m2")  # same prompt text, other model → other key
        store.put_many([a, b])
        stats = store.stats()
    assert (stats["answers"], stats["distinct_prompts"]) == (2, 1)


def test_export_parquet_round_trip(tmp_path: Path) -> None:
    recs = [record(i) for i in range(4)]
    recs[2].prompt_tokens = None
    recs[3].answer = "Ünïcode ✓ ; quotes \"'"
    with AnswerStore(tmp_path / "a.sqlite") as store:
        store.put_many(recs)
        assert store.export_parquet(tmp_path / "out" / "answers.parquet") == 4
    rows = pq.read_table(tmp_path / "out" / "answers.parquet").to_pylist()
    assert [AnswerRecord(**r) for r in rows] == recs
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def test_export_of_an_empty_store(tmp_path: Path) -> None:
    with AnswerStore(tmp_path / "a.sqlite") as store:
        assert store.export_parquet(tmp_path / "empty.parquet") == 0
    assert pq.read_table(tmp_path / "empty.parquet").num_rows == 0


def test_reader_sees_only_committed_rows_while_a_writer_writes(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite"
    writer = AnswerStore(path)
    reader = AnswerStore(path)
    errors: list[BaseException] = []
    seen: list[int] = []

    def write() -> None:
        try:
            for batch in range(20):
                writer.put_many([record(batch * 10 + j) for j in range(10)])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=write)
    thread.start()
    while thread.is_alive():
        n = reader.stats()["answers"]
        assert n % 10 == 0  # a transaction is all or nothing
        seen.append(n)
    thread.join()
    assert not errors
    assert reader.stats()["answers"] == 200
    assert seen == sorted(seen)
    writer.close()
    reader.close()


_WRITER = textwrap.dedent(
    """
    import sys, time
    from intentrec.semantic.store import AnswerRecord, AnswerStore
    store = AnswerStore(sys.argv[1])
    i = 0
    while True:
        rows = [AnswerRecord(key=f"k{i}-{j}", backend="b", model="m", model_sha256="s", template="t",
                             template_version="1", decoding_json="{}", prompt=f"p{i}-{j}",
                             answer="x" * 200, created_at=float(i)) for j in range(5)]
        store.put_many(rows)
        print(i, flush=True)
        i += 1
    """
)


def test_kill_minus_9_keeps_every_committed_row(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    assert proc.stdout is not None
    committed = -1
    deadline = time.time() + 60
    while committed < 30 and time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        committed = int(line)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert committed >= 30, "writer did not start"
    # Every batch reported as committed before the kill is there, whole; nothing is half-written.
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    with AnswerStore(path) as store:
        keys = [f"k{i}-{j}" for i in range(committed + 1) for j in range(5)]
        assert store.missing(keys) == []
        total = store.stats()["answers"]
        assert total % 5 == 0 and total >= len(keys)
        assert store.put_many([record(1)]) == 1  # still writable


def test_a_file_that_is_not_sqlite_is_a_data_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database" * 100)
    with pytest.raises(DataError, match="bad.sqlite"):
        AnswerStore(bad)


def test_dataset_fingerprint_ignores_when_and_where_the_dataset_was_prepared(tmp_path: Path) -> None:
    manifest = {
        "created": "2026-01-01T00:00:00Z",
        "inputs": [{"path": "/a/x.csv", "sha256": "ab"}],
        "statistics": {"seconds": 1.0, "items": 3},
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    first = dataset_fingerprint(tmp_path)
    again = {
        "created": "2027-05-05T00:00:00Z",
        "inputs": [{"path": "/b/x.csv", "sha256": "ab"}],
        "statistics": {"seconds": 9.5, "items": 3},
    }
    (tmp_path / "manifest.json").write_text(json.dumps(again, indent=2))
    assert dataset_fingerprint(tmp_path) == first
    (tmp_path / "manifest.json").write_text(json.dumps({**again, "statistics": {"items": 4}}))
    assert dataset_fingerprint(tmp_path) != first
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="manifest"):
        dataset_fingerprint(tmp_path)
    with pytest.raises(DataError, match="manifest"):
        dataset_fingerprint(tmp_path / "nowhere")
