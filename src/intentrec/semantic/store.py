"""The durable LLM answer store: one SQLite file (``<home>/answers.sqlite``) in WAL mode.

Every answer is keyed by :func:`answer_key` — a sha256 over what determines it (backend, model
weights, decoding settings, template version, prompt) — so a prompt is never sent twice for the same
model and settings, and re-running inference after a crash resumes where it stopped. A second table
links the examples of a prepared dataset (by its fingerprint) to the keys of their answers.

Durability: each ``put_many``/``link_examples`` is one transaction. WAL with ``synchronous=NORMAL``
keeps every committed transaction across a killed process (kill -9); only a power loss can drop the
last few commits, never corrupt the file.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from intentrec.data.identity import fingerprint
from intentrec.errors import DataError
from intentrec.io import atomic_path

ANSWERS_FILE = "answers.sqlite"
_MAX_PARAMS = 500  # well under SQLite's host-parameter limit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    model_sha256 TEXT NOT NULL,
    template TEXT NOT NULL,
    template_version TEXT NOT NULL,
    decoding_json TEXT NOT NULL,
    prompt TEXT NOT NULL,
    answer TEXT NOT NULL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    latency_s REAL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS example_answers (
    dataset_fingerprint TEXT NOT NULL,
    template TEXT NOT NULL,
    model_sha256 TEXT NOT NULL,
    example_id INTEGER NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (dataset_fingerprint, template, model_sha256, example_id)
);
CREATE INDEX IF NOT EXISTS answers_by_model_template ON answers (model_sha256, template);
"""


def canonical_json(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def answer_key(backend: str, model_sha256: str, decoding: dict, template_version: str, prompt_text: str) -> str:
    """sha256 hex of the canonical JSON of everything that determines an answer."""
    payload = canonical_json(
        {
            "backend": backend,
            "model_sha256": model_sha256,
            "decoding": decoding,
            "template_version": template_version,
            "prompt": prompt_text,
        }
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def dataset_fingerprint(dataset_dir: str | Path) -> str:
    """The prepared dataset's content fingerprint (:mod:`intentrec.data.identity`).

    It survives preparing the same files again elsewhere, so answers linked to a dataset's examples on
    one machine (a GPU box) stay linked to the same dataset prepared on another.
    """
    manifest = Path(dataset_dir) / "manifest.json"
    if not manifest.is_file():
        raise DataError("not a prepared dataset (no manifest.json)", path=dataset_dir)
    try:
        content = json.loads(manifest.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"manifest is not valid JSON: {exc}", path=manifest) from None
    return fingerprint(content)


@dataclass
class AnswerRecord:
    key: str
    backend: str
    model: str
    model_sha256: str
    template: str
    template_version: str
    decoding_json: str
    prompt: str
    answer: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None
    created_at: float = field(default_factory=time.time)


_COLUMNS = tuple(AnswerRecord.__dataclass_fields__)


def default_store_path() -> Path:
    from intentrec.paths import intentrec_home

    return intentrec_home() / ANSWERS_FILE


class AnswerStore:
    """Thread-safe handle on the answer store (one connection, guarded by a lock)."""

    def __init__(self, path: str | Path | None = None, *, timeout_s: float = 60.0):
        self.path = Path(path) if path is not None else default_store_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise DataError(f"cannot open the answer store: {exc}", path=self.path) from None

    # -- lifecycle --------------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> AnswerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def journal_mode(self) -> str:
        with self._lock:
            return str(self._conn.execute("PRAGMA journal_mode").fetchone()[0])

    def _transaction(self, sql: str, rows: Iterable[Sequence[object]]) -> int:
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                before = self._conn.total_changes
                cur.executemany(sql, rows)
                cur.execute("COMMIT")
                return self._conn.total_changes - before
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    # -- answers ----------------------------------------------------------------------------------
    def put_many(self, records: Sequence[AnswerRecord]) -> int:
        """Insert records in one transaction; keys already present are left untouched.

        Returns the number of rows actually inserted.
        """
        if not records:
            return 0
        sql = f"INSERT OR IGNORE INTO answers ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
        return self._transaction(sql, ([getattr(r, c) for c in _COLUMNS] for r in records))

    def _select_in(self, sql_prefix: str, values: Sequence[object], params: Sequence[object] = ()) -> list:
        rows: list = []
        with self._lock:
            for start in range(0, len(values), _MAX_PARAMS):
                chunk = list(values[start : start + _MAX_PARAMS])
                marks = ", ".join("?" * len(chunk))
                rows.extend(self._conn.execute(sql_prefix.format(marks=marks), [*params, *chunk]))
        return rows

    def missing(self, keys: Sequence[str]) -> list[str]:
        """The keys (in the given order, without repeats) that have no answer yet."""
        unique = list(dict.fromkeys(keys))
        present = {r[0] for r in self._select_in("SELECT key FROM answers WHERE key IN ({marks})", unique)}
        return [k for k in unique if k not in present]

    def get_many(self, keys: Sequence[str]) -> dict[str, AnswerRecord]:
        unique = list(dict.fromkeys(keys))
        sql = f"SELECT {', '.join(_COLUMNS)} FROM answers WHERE key IN ({{marks}})"
        return {row[0]: AnswerRecord(*row) for row in self._select_in(sql, unique)}

    # -- example links ----------------------------------------------------------------------------
    def link_examples(
        self, fingerprint: str, template: str, model_sha256: str, pairs: Iterable[tuple[int, str]]
    ) -> int:
        """Point dataset examples at answer keys; a newer link for the same example replaces the old
        one (e.g. after a template's wording changed)."""
        rows = [(fingerprint, template, model_sha256, int(eid), key) for eid, key in pairs]
        if not rows:
            return 0
        sql = (
            "INSERT OR REPLACE INTO example_answers "
            "(dataset_fingerprint, template, model_sha256, example_id, key) VALUES (?, ?, ?, ?, ?)"
        )
        return self._transaction(sql, rows)

    def linked_keys(
        self, fingerprint: str, template: str, model_sha256: str, example_ids: Sequence[int]
    ) -> dict[int, str]:
        sql = (
            "SELECT example_id, key FROM example_answers WHERE dataset_fingerprint = ? AND template = ? "
            "AND model_sha256 = ? AND example_id IN ({marks})"
        )
        ids = [int(e) for e in dict.fromkeys(int(x) for x in example_ids)]
        return {int(e): k for e, k in self._select_in(sql, ids, (fingerprint, template, model_sha256))}

    def answers_for_examples(
        self, fingerprint: str, template: str, model_sha256: str, example_ids: Sequence[int]
    ) -> dict[int, AnswerRecord]:
        """Answers of the examples that have one (linked and stored); others are absent."""
        links = self.linked_keys(fingerprint, template, model_sha256, example_ids)
        records = self.get_many(list(links.values()))
        return {eid: records[key] for eid, key in links.items() if key in records}

    # -- reporting --------------------------------------------------------------------------------
    def stats(self) -> dict:
        with self._lock:
            total = self._conn.execute("SELECT COUNT(*), COUNT(DISTINCT prompt) FROM answers").fetchone()
            groups = self._conn.execute(
                "SELECT backend, model, model_sha256, template, template_version, COUNT(*), "
                "SUM(COALESCE(completion_tokens, 0)), SUM(COALESCE(latency_s, 0)) FROM answers "
                "GROUP BY backend, model, model_sha256, template, template_version "
                "ORDER BY model, template"
            ).fetchall()
            links = self._conn.execute("SELECT COUNT(*) FROM example_answers").fetchone()[0]
        return {
            "path": str(self.path),
            "answers": int(total[0]),
            "distinct_prompts": int(total[1]),
            "example_links": int(links),
            "by_model_template": [
                {
                    "backend": g[0],
                    "model": g[1],
                    "model_sha256": g[2],
                    "template": g[3],
                    "template_version": g[4],
                    "answers": int(g[5]),
                    "completion_tokens": int(g[6] or 0),
                    "generation_seconds": float(g[7] or 0.0),
                }
                for g in groups
            ],
        }

    def export_parquet(self, path: str | Path) -> int:
        """Write every answer to a parquet file (atomically); returns the number of rows."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        with self._lock:
            rows = self._conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM answers ORDER BY created_at, key").fetchall()
        schema = pa.schema(
            [(c, pa.string()) for c in _COLUMNS[:9]]
            + [
                ("prompt_tokens", pa.int64()),
                ("completion_tokens", pa.int64()),
                ("latency_s", pa.float64()),
                ("created_at", pa.float64()),
            ]
        )
        columns = list(zip(*rows)) if rows else [[] for _ in _COLUMNS]
        table = pa.table(
            {c: pa.array(list(col), type=schema.field(c).type) for c, col in zip(_COLUMNS, columns)}, schema=schema
        )
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        return len(rows)
