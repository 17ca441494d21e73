"""On-disk cache of text embeddings, so a catalogue (or a set of answers) is encoded only once.

One SQLite file per encoder identity and normalisation under ``<home>/embeddings/``::

    <encoder identity key>.<norm|raw>.sqlite
        meta(key TEXT PRIMARY KEY, value TEXT)          encoder identity (JSON), dim
        vectors(text_sha256 TEXT PRIMARY KEY, vector BLOB)   float32 little-endian bytes

Texts are keyed by the sha256 of their UTF-8 bytes: re-running encodes only texts never seen before
(a changed title is a new text). New vectors are committed in chunks, so an interrupted run keeps
what it finished; SQLite's transactions mean a reader never sees a half-written vector.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from intentrec.errors import DataError
from intentrec.paths import intentrec_home
from intentrec.semantic.encoders import TextEncoder

_MAX_PARAMS = 500


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class CacheReport:
    texts: int  # texts asked for
    distinct: int  # distinct texts among them
    encoded: int  # distinct texts that had to be encoded now
    reused: int  # distinct texts found in the cache
    path: str


class EmbeddingCache:
    def __init__(self, encoder: TextEncoder, *, normalize: bool, root: str | Path | None = None):
        self.encoder = encoder
        self.normalize = normalize
        root = Path(root) if root is not None else intentrec_home() / "embeddings"
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / f"{encoder.identity_key()}.{'norm' if normalize else 'raw'}.sqlite"
        try:
            self._conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                "CREATE TABLE IF NOT EXISTS vectors (text_sha256 TEXT PRIMARY KEY, vector BLOB NOT NULL);"
            )
            self._conn.execute(
                "INSERT OR IGNORE INTO meta VALUES ('identity', ?)",
                (json.dumps(encoder.identity(), sort_keys=True),),
            )
        except sqlite3.DatabaseError as exc:
            raise DataError(f"cannot open the embedding cache: {exc}", path=self.path) from None

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])

    def _lookup(self, hashes: list[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(hashes), _MAX_PARAMS):
            chunk = hashes[start : start + _MAX_PARAMS]
            marks = ", ".join("?" * len(chunk))
            for h, blob in self._conn.execute(
                f"SELECT text_sha256, vector FROM vectors WHERE text_sha256 IN ({marks})", chunk
            ):
                found[h] = np.frombuffer(blob, dtype="<f4")
        return found

    def _store(self, hashes: list[str], vectors: np.ndarray) -> None:
        rows = [(h, np.ascontiguousarray(v, dtype="<f4").tobytes()) for h, v in zip(hashes, vectors)]
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)", rows)
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    def encode(
        self, texts: list[str], *, batch_size: int = 64, commit_every: int = 2048
    ) -> tuple[np.ndarray, CacheReport]:
        """Vectors [len(texts), d] in the order of ``texts``; only unseen texts reach the encoder."""
        hashes = [text_sha256(t) for t in texts]
        distinct = list(dict.fromkeys(hashes))
        found = self._lookup(distinct)
        todo = [h for h in distinct if h not in found]
        todo_set = set(todo)
        first_text = {h: t for t, h in zip(texts, hashes) if h in todo_set}
        for start in range(0, len(todo), commit_every):
            chunk = todo[start : start + commit_every]
            vectors = self.encoder.encode(
                [first_text[h] for h in chunk], normalize=self.normalize, batch_size=batch_size
            )
            self._store(chunk, vectors)
            found.update(zip(chunk, np.asarray(vectors, dtype=np.float32)))
        if texts:
            out = np.stack([found[h] for h in hashes]).astype(np.float32, copy=False)
        else:
            out = np.zeros((0, 0), dtype=np.float32)
        report = CacheReport(len(texts), len(distinct), len(todo), len(distinct) - len(todo), str(self.path))
        return out, report


def encode_cached(
    encoder: TextEncoder,
    texts: list[str],
    *,
    normalize: bool,
    batch_size: int = 64,
    root: str | Path | None = None,
) -> tuple[np.ndarray, CacheReport]:
    """Encode ``texts`` through the on-disk cache of ``encoder`` (see module doc)."""
    with EmbeddingCache(encoder, normalize=normalize, root=root) as cache:
        return cache.encode(texts, batch_size=batch_size)
