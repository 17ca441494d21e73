"""Items added while serving: an SQLite file (WAL) and the catalogue the server ranks over.

An item is acknowledged only after its row is committed, so a killed server loses none it answered
for. The catalogue is append-only: readers take ``size`` once per batch and never see a half-added
item; nothing is copied when an item is added.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path

from intentrec.errors import DataError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    description TEXT,
    categories TEXT NOT NULL DEFAULT '[]',
    added REAL NOT NULL DEFAULT (julianday('now'))
)
"""


@dataclass(frozen=True)
class AddedItem:
    seq: int
    item_id: str
    title: str
    description: str | None = None
    categories: tuple[str, ...] = ()


class ItemStore:
    """The SQLite file of added items. One connection, used from one thread at a time (a lock)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before the item is acknowledged (also across a power loss)
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.execute(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise DataError(f"cannot open the items database: {exc}", path=self.path) from None
        self._lock = threading.Lock()

    def add(self, item_id: str, title: str, description: str | None, categories: list[str]) -> AddedItem:
        """Insert and commit; raises KeyError if the id is already stored."""
        with self._lock:
            try:
                cur = self._db.execute(
                    "INSERT INTO items (item_id, title, description, categories) VALUES (?, ?, ?, ?)",
                    (item_id, title, description, json.dumps(categories, ensure_ascii=False)),
                )
            except sqlite3.IntegrityError:
                raise KeyError(item_id) from None
            return AddedItem(int(cur.lastrowid), item_id, title, description, tuple(categories))

    def since(self, seq: int) -> list[AddedItem]:
        """Items stored after ``seq``, in the order they were added (another worker's adds included)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, item_id, title, description, categories FROM items WHERE seq > ? ORDER BY seq", (seq,)
            ).fetchall()
        return [AddedItem(r[0], r[1], r[2], r[3], tuple(json.loads(r[4]))) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


@dataclass
class Catalogue:
    """Items by column: the trained catalogue (columns 0..n-1) and then the added items."""

    ids: list[str]
    titles: list[str | None]
    num_trained: int
    lookup: dict[str, int] = field(default_factory=dict)
    added: dict[int, AddedItem] = field(default_factory=dict)  # column → added item
    size: int = 0
    last_seq: int = 0

    @classmethod
    def of(cls, ids: list[str], titles: list[str | None]) -> Catalogue:
        cat = cls(list(ids), list(titles), len(ids))
        cat.lookup = {item_id: col for col, item_id in enumerate(cat.ids)}
        cat.size = len(cat.ids)
        return cat

    def column(self, item_id: str, size: int) -> int | None:
        """Column of an item visible in a catalogue of ``size`` columns (None: unknown there)."""
        col = self.lookup.get(item_id)
        return col if col is not None and col < size else None

    def append(self, items: list[AddedItem]) -> None:
        """Add columns (lists first, ``size`` last, so a reader never sees a column without its id)."""
        for item in items:
            col = len(self.ids)
            self.ids.append(item.item_id)
            self.titles.append(item.title)
            self.added[col] = item
            self.lookup[item.item_id] = col
        if items:
            self.last_seq = max(self.last_seq, items[-1].seq)
        self.size = len(self.ids)
