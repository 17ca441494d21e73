"""``amazon-m2``: Amazon-M2 (KDD Cup 2023 multilingual recommendation), the Task 1 training files.

* ``sessions_train.csv[.gz]``: ``prev_items,next_item,locale``. ``prev_items`` is numpy's text form of an
  array of product ids, ``['B09W9FND7K' 'B09JSPLN1M']``: quoted ids separated by whitespace, long lists
  wrapped onto several lines inside the quoted CSV field. Each row is one session: the ``prev_items``
  in order, then ``next_item``. There is no clock (``time`` is NaN; ``order`` is the position).
  The session id is the row's 0-based number among the data rows (what ``pandas.read_csv`` numbers it),
  counted over the whole file, whatever the locale.
* ``products_train.csv[.gz]`` (optional; without it items have no text, reported):
  ``id,locale,title,price,brand,color,size,model,material,author,desc``. Fields may hold commas, quotes
  and newlines (quoted). ``title`` is the title; every other column but ``id`` is kept as an extra text
  column (``locale`` included), as written.

Items. Upstream a product is an ``(id, locale)`` pair: one id can appear in several locales, with each
locale's own title and text. With ``locale`` (prepare's ``locale`` parameter; the ``semsr-m2`` protocol
sets ``UK``) only that locale's sessions and products are read and ``item_id`` is the upstream ``id``.
Without it every locale is read and ``item_id`` is ``<locale>:<id>`` (``UK:B09W9FND7K``), so the same id
in two locales is two items.

Bad input. Every record of both files is checked, whatever the locale: a wrong number of fields, a badly
quoted field, bytes that are not UTF-8, a ``prev_items`` that is not such a list, an empty
``next_item``, ``locale`` or ``id`` are bad lines (an error naming the file and the line the record starts
on, or skipped and counted). A product row that repeats an earlier row of the same ``(id, locale)``
exactly is collapsed and counted; two rows of one ``(id, locale)`` that differ are an error naming both
lines.
"""

from __future__ import annotations

import csv
import gc
import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from intentrec.data.loaders.base import (
    BadLines,
    RawInteractions,
    collapse_duplicate_items,
    empty_items,
    find_file,
    missing_input_error,
    nonempty_column,
    read_bytes,
    require_columns,
    to_events,
)
from intentrec.data.loaders.registry import Download, Loader, register_loader
from intentrec.errors import DataError

SESSION_FILES = ["sessions_train.csv", "sessions_train.csv.gz"]
PRODUCT_FILES = ["products_train.csv", "products_train.csv.gz"]
SESSION_COLUMNS = ["prev_items", "next_item", "locale"]
#: numpy's text form of a non-empty array of ids, ``['A' 'B']``: whitespace (newlines too) between quoted ids
_ID_LIST = r"^\[\s*(?:'[^'\s]+'\s*)+\]$"
#: lone surrogates that ``errors="surrogateescape"`` puts where undecodable bytes were
_UNDECODABLE = re.compile("[\udc80-\udcff]")
#: what ends a physical line, as the csv module counts them (``line_num``)
_BREAK = re.compile(r"\r\n|\r|\n")
#: columns the prepared items table reserves (a product column with such a name would clash)
_RESERVED = {"item_id", "item_index", "train_count"}

DOWNLOAD = Download(
    "amazon-m2",
    page="https://www.aicrowd.com/challenges/amazon-kdd-cup-23-multilingual-recommendation-challenge",
    folder="amazon-m2",
    expect="sessions_train.csv and products_train.csv",
    how="log in to AIcrowd and accept the challenge rules, then fetch the files from the challenge's resources page",
)


def locate_m2(path: Path) -> tuple[Path, Path | None]:
    """(sessions file, products file or None) for a folder or the sessions file."""
    folder = path if path.is_dir() else path.parent
    sessions = path if path.is_file() else find_file(folder, SESSION_FILES)
    if sessions is None:
        error = missing_input_error(folder, "sessions_train.csv (Amazon-M2, KDD Cup 2023)", source="amazon-m2")
        raise DataError(f"{error} (browser only: {DOWNLOAD.how}; put {DOWNLOAD.expect} into one folder)")
    return sessions, find_file(folder, PRODUCT_FILES)


def load_m2(path: Path, bad: BadLines, locale: str | None = None) -> RawInteractions:
    sessions_path, products_path = locate_m2(path)
    events = _read_sessions(sessions_path, bad, locale)
    inputs = [sessions_path]
    notes = []
    collapsed = 0
    if products_path is None:
        items = empty_items()
        notes.append(f"no products_train.csv next to {sessions_path.name}: items have no titles")
    else:
        inputs.append(products_path)
        items, collapsed = _read_products(products_path, bad, locale)
    if locale is not None:
        notes.append(f"locale {locale} only (item_id = the upstream id)")
    return RawInteractions(
        source="amazon-m2",
        variant="amazon-m2",
        key_kind="session",
        events=events,
        items=items,
        inputs=inputs,
        bad_lines_skipped=bad.skipped,
        notes=notes,
        duplicate_item_rows_collapsed=collapsed,
    )


def read_csv_records(path: Path, bad: BadLines) -> pd.DataFrame:
    """A CSV file whose quoted fields may span lines: string columns named by the header, plus ``_line``
    (the physical line each record starts on, header = line 1; blank lines counted, not records) and
    ``_row`` (the record's 0-based number among the data records, bad ones included).

    Records with a badly quoted field, the wrong number of fields or undecodable bytes are bad lines.
    """
    data = read_bytes(path)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="surrogateescape")
        return _records_one_by_one(text, path, bad, undecodable=True)
    with _no_gc():
        fast = _records_at_once(text)
    return fast if fast is not None else _records_one_by_one(text, path, bad, undecodable=False)


@contextmanager
def _no_gc() -> Iterator[None]:
    """Millions of small row lists, none of them cyclic: the cycle collector would only rescan them
    (it takes about two thirds of the parsing time)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _records_at_once(text: str) -> pd.DataFrame | None:
    """Clean files: every record parsed in one go, line numbers from the line breaks inside fields.
    None when anything is off (then :func:`_records_one_by_one` finds and names the record)."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        rows = list(reader)
    except csv.Error:
        return None
    if not rows or not rows[0]:
        return None
    header = [name.strip() for name in rows[0]]
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    if ((lengths[1:] != len(header)) & (lengths[1:] != 0)).any():
        return None
    records = np.flatnonzero(lengths > 0)[1:]  # positions of the data records in ``rows``
    kept = rows[1:] if len(records) == len(rows) - 1 else [rows[i] for i in records]
    columns = {
        name: pa.array(values, type=pa.string())
        for name, values in zip(header, zip(*kept, strict=True) if kept else [()] * len(header), strict=True)
    }
    lines = np.ones(len(rows), dtype=np.int64)  # physical lines of each row
    lines[0] += sum(len(_BREAK.findall(name)) for name in rows[0])
    only_newlines = "\r" not in text
    for values in columns.values():
        breaks = pc.count_substring(values, "\n") if only_newlines else pc.count_substring_regex(values, _BREAK.pattern)
        lines[records] += np.asarray(breaks.to_numpy(zero_copy_only=False))
    if int(lines.sum()) != reader.line_num:
        return None
    starts = np.concatenate([[1], 1 + np.cumsum(lines)[:-1]])
    frame = pd.DataFrame({name: pd.Series(values.to_pandas(), dtype="str") for name, values in columns.items()})
    frame["_line"] = starts[records]
    frame["_row"] = np.arange(len(records), dtype=np.int64)
    return frame


def _records_one_by_one(text: str, path: Path, bad: BadLines, *, undecodable: bool) -> pd.DataFrame:
    """Record by record, so that a bad one can be named by the line it starts on (or skipped)."""
    with _no_gc():
        return _parse_one_by_one(text, path, bad, undecodable=undecodable)


def _parse_one_by_one(text: str, path: Path, bad: BadLines, *, undecodable: bool) -> pd.DataFrame:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    records: list[list[str] | None] = []
    problems: list[str | None] = []
    starts: list[int] = []
    header: list[str] | None = None
    end = 0
    while True:
        start = end + 1
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            record, problem = None, f"badly quoted field ({exc})"
        else:
            problem = None
        end = reader.line_num
        if record == []:
            continue  # a blank line
        if header is None:
            if record is None or start != 1:
                raise DataError("the file is empty or has no header line", path=path, line=1)
            header = [name.strip() for name in record]
            continue
        if problem is None and len(record) != len(header):
            problem = f"expected {len(header)} fields ({', '.join(header)}), found {len(record)}"
        if problem is None and undecodable and any(_UNDECODABLE.search(field) for field in record):
            problem = "not valid utf-8 text (wrong encoding?)"
        records.append(record)
        problems.append(problem)
        starts.append(start)
    if header is None:
        raise DataError("the file is empty or has no header line", path=path, line=1)
    numbers = np.asarray(starts, dtype=np.int64)
    keep = bad.check(
        np.array([p is not None for p in problems], dtype=bool),
        numbers,
        path,
        lambda i: str(problems[i]),
    )
    kept = [r for r, k in zip(records, keep, strict=True) if k]
    frame = pd.DataFrame(kept, columns=header, dtype=object) if kept else pd.DataFrame(columns=header)
    frame = frame.astype("str")
    frame["_line"] = numbers[keep]
    frame["_row"] = np.flatnonzero(keep).astype(np.int64)
    return frame


def _read_sessions(path: Path, bad: BadLines, locale: str | None) -> pd.DataFrame:
    frame = read_csv_records(path, bad)
    require_columns(frame, path, SESSION_COLUMNS)
    for column in ("next_item", "locale"):
        frame = nonempty_column(frame, column, path, bad)
    prev = pa.array(frame["prev_items"], type=pa.string())
    valid = np.asarray(pc.match_substring_regex(prev, _ID_LIST).to_numpy(zero_copy_only=False), dtype=bool)
    raw_prev = frame["prev_items"]
    frame = bad.reject(
        frame,
        ~valid,
        path,
        lambda i: (
            "column 'prev_items': expected quoted ids in brackets, like ['B09W9FND7K' 'B09JSPLN1M'], "
            f"got {_shorten(raw_prev.iloc[i])}"
        ),
    )
    if locale is not None:
        chosen = (frame["locale"] == locale).to_numpy()
        if not chosen.any():
            found = ", ".join(sorted(frame["locale"].unique())) or "none"
            raise DataError(f"no session has locale '{locale}' (locales in the file: {found})", path=path)
        frame = frame.loc[chosen].reset_index(drop=True)
    prev = pa.array(frame["prev_items"], type=pa.string())
    bare = pc.utf8_trim_whitespace(pc.replace_substring_regex(prev, r"[\[\]']", " "))
    lists = pc.utf8_split_whitespace(bare)
    n_prev = np.asarray(pc.list_value_length(lists).to_numpy(zero_copy_only=False), dtype=np.int64)
    lengths = n_prev + 1
    ends = np.cumsum(lengths)
    items = np.empty(int(ends[-1]) if len(ends) else 0, dtype=object)
    is_next = np.zeros(len(items), dtype=bool)
    is_next[ends - 1] = True
    items[~is_next] = pc.list_flatten(lists).to_numpy(zero_copy_only=False)
    items[is_next] = frame["next_item"].to_numpy(dtype=object)
    if locale is None:
        items = np.repeat(frame["locale"].to_numpy(dtype=object), lengths) + ":" + items
    order = np.arange(len(items), dtype=np.int64) - np.repeat(ends - lengths, lengths)
    keys = np.repeat(frame["_row"].to_numpy().astype(str), lengths)
    return to_events(pd.Series(keys), pd.Series(items), None, order)


def _read_products(path: Path, bad: BadLines, locale: str | None) -> tuple[pd.DataFrame, int]:
    frame = read_csv_records(path, bad)
    require_columns(frame, path, ["id", "locale"])
    reserved = _RESERVED & set(frame.columns)
    if reserved:
        raise DataError(
            f"column name(s) {sorted(reserved)} are reserved by the prepared format; rename them",
            path=path,
            line=1,
        )
    for column in ("id", "locale"):
        frame = nonempty_column(frame, column, path, bad)
    if "title" not in frame.columns:
        frame["title"] = ""
    extra = [c for c in frame.columns if c not in ("id", "title", "_line", "_row")]
    items = pd.DataFrame({"item_id": frame["locale"] + ":" + frame["id"]})
    for column in ["title", *extra]:
        items[column] = frame[column].astype(object).where(frame[column] != "", None)
    # one row per (id, locale), over the whole file
    items, collapsed = collapse_duplicate_items(items, frame["_line"].to_numpy(), path)
    if locale is not None:
        items = items.loc[(items["locale"] == locale).to_numpy()].reset_index(drop=True)
        items["item_id"] = items["item_id"].str.slice(len(locale) + 1)
    return items, collapsed


def _shorten(value: str, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@register_loader
class AmazonM2Loader(Loader):
    """Amazon-M2 sessions (one per row) and products; the key is the session (its row)."""

    name = "amazon-m2"
    key_kind = "session"
    #: the locales of the upstream files; ``prepare``'s ``locale`` parameter keeps one of them
    locales: ClassVar[tuple[str, ...]] = ("DE", "JP", "UK", "ES", "FR", "IT")
    downloads = (DOWNLOAD,)

    def locate(self, path: Path) -> list[Path]:
        return [f for f in locate_m2(path) if f is not None]

    def load(self, path: Path, bad: BadLines, locale: str | None = None) -> RawInteractions:
        return load_m2(path, bad, locale)
