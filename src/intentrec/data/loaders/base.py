"""What every loader returns, and the shared, vectorised readers for line-oriented upstream files.

Line numbers are tracked exactly (1-based, physical lines of the decompressed file) so that a malformed
line can be named in the error, or skipped and counted under ``--on-bad-line skip``.
"""

from __future__ import annotations

import csv
import gzip
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from intentrec.errors import DataError
from intentrec.paths import data_root

BadLinePolicy = Literal["error", "skip"]

#: Lone surrogates that ``errors="surrogateescape"`` puts where undecodable bytes were.
_UNDECODABLE = re.compile("[\udc80-\udcff]")


@dataclass
class RawInteractions:
    """Interactions of one upstream dataset, before sessions are built.

    ``events`` has one row per interaction, in file order, with columns ``key`` (session id for sources
    that have sessions, else the user id), ``item`` (item id as text), ``time`` (seconds since the Unix
    epoch, float, NaN when the source has no clock) and ``order`` (sort key inside a key: position,
    timeframe or time). ``items`` has ``item_id``, ``title`` (raw text or None) and any extra text columns.
    """

    source: str
    variant: str
    key_kind: Literal["session", "user"]
    events: pd.DataFrame
    items: pd.DataFrame
    inputs: list[Path]
    bad_lines_skipped: int = 0
    notes: list[str] = field(default_factory=list)
    #: rows of the item file that repeated an earlier row of the same item exactly (collapsed)
    duplicate_item_rows_collapsed: int = 0

    @property
    def has_time(self) -> bool:
        return bool(self.events["time"].notna().any())


class BadLines:
    """Applies the ``--on-bad-line`` policy: raise a DataError naming file and line, or count and skip."""

    def __init__(self, policy: BadLinePolicy = "error"):
        if policy not in ("error", "skip"):
            raise DataError(f"--on-bad-line must be 'error' or 'skip', got {policy!r}")
        self.policy = policy
        self.skipped = 0

    def check(
        self,
        mask: np.ndarray,
        line_numbers: np.ndarray,
        path: Path,
        describe: Callable[[int], str],
        *,
        unit: str = "line",
    ) -> np.ndarray:
        """Rows to keep (``~mask``), counting the bad ones; under ``error`` raise for the first bad row.

        ``describe(position)`` says what is wrong with the row at that position.
        """
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            return ~mask
        first = int(np.flatnonzero(mask)[0])
        if self.policy == "error":
            line = int(line_numbers[first])
            hint = " (use --on-bad-line skip to skip such lines)"
            if unit == "line":
                raise DataError(describe(first) + hint, path=path, line=line)
            raise DataError(f"{unit} {line}: {describe(first)}{hint}", path=path)
        self.skipped += int(mask.sum())
        return ~mask

    def reject(
        self,
        frame: pd.DataFrame,
        mask: np.ndarray,
        path: Path,
        describe: Callable[[int], str],
        *,
        unit: str = "line",
    ) -> pd.DataFrame:
        """``frame`` (which has a ``_line`` column) without the bad rows in ``mask``."""
        keep = self.check(mask, frame["_line"].to_numpy(), path, describe, unit=unit)
        if keep.all():
            return frame
        return frame.loc[keep].reset_index(drop=True)


@dataclass
class Lines:
    """Non-blank lines of a text file (as an Arrow string array) and their 1-based line numbers."""

    text: pa.Array
    numbers: np.ndarray

    def __len__(self) -> int:
        return len(self.numbers)

    def take(self, keep: np.ndarray) -> Lines:
        if keep.all():
            return self
        return Lines(self.text.filter(pa.array(keep)), self.numbers[keep])


def read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when the name ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read file: {exc}", path=path) from None


def read_lines(path: Path, encoding: str, bad: BadLines) -> Lines:
    """The non-blank lines of a (possibly gzipped) text file.

    Undecodable bytes make that line bad (error or skip), never the whole file unreadable.
    """
    data = read_bytes(path)
    if data.startswith(b"\xef\xbb\xbf") and encoding.lower().replace("-", "") in (
        "utf8",
        "utf8sig",
    ):
        data = data[3:]
    undecodable: list[int] = []
    try:
        text = data.decode(encoding)
        lines = text.split("\n")
    except UnicodeDecodeError:
        lines = data.decode(encoding, errors="surrogateescape").split("\n")
        # Error path only: find the lines holding undecodable bytes.
        undecodable = [i for i, line in enumerate(lines) if _UNDECODABLE.search(line)]
    if lines and lines[-1] == "":
        lines.pop()
    numbers = np.arange(1, len(lines) + 1, dtype=np.int64)
    if undecodable:
        mask = np.zeros(len(lines), dtype=bool)
        mask[undecodable] = True
        bad.check(mask, numbers, path, lambda i: f"not valid {encoding} text (wrong encoding?)")
        for i in undecodable:
            lines[i] = ""
    arr = pc.utf8_rtrim(pa.array(lines, type=pa.string()), characters="\r")
    nonblank = np.asarray(pc.not_equal(pc.utf8_trim_whitespace(arr), "").to_numpy(zero_copy_only=False))
    return Lines(arr, numbers).take(nonblank)


def split_fields(lines: Lines, path: Path, sep: str, names: list[str], bad: BadLines) -> pd.DataFrame:
    """Split unquoted ``sep``-separated lines into string columns ``names`` (plus ``_line``)."""
    n_fields = len(names)
    counts = np.asarray(pc.count_substring(lines.text, sep).to_numpy(zero_copy_only=False))
    keep = bad.check(
        counts != n_fields - 1,
        lines.numbers,
        path,
        lambda i: f"expected {n_fields} fields separated by {sep!r} ({', '.join(names)}), found {int(counts[i]) + 1}",
    )
    lines = lines.take(keep)
    values = pc.split_pattern(lines.text, sep, max_splits=n_fields - 1).flatten()
    columns = {
        name: _to_str_series(values.take(pa.array(np.arange(j, len(values), n_fields, dtype=np.int64))))
        for j, name in enumerate(names)
    }
    frame = pd.DataFrame(columns)
    frame["_line"] = lines.numbers
    return frame


def _to_str_series(values: pa.Array) -> pd.Series:
    return pd.Series(values.to_pandas(), dtype="str")


def read_delimited(
    path: Path,
    *,
    sep: str,
    bad: BadLines,
    encoding: str = "utf-8",
    names: list[str] | None = None,
) -> pd.DataFrame:
    """Read a delimited text file into string columns plus ``_line``.

    With ``names=None`` the first line is the header. Files that contain a double quote are parsed with
    the ``csv`` module (quoted fields may hold the separator); all others by vectorised splitting.
    """
    lines = read_lines(path, encoding, bad)
    if names is None:
        if len(lines) == 0 or lines.numbers[0] != 1:
            raise DataError("the file is empty or has no header line", path=path, line=1)
        header_text = lines.text[0].as_py()
        lines = Lines(lines.text.slice(1), lines.numbers[1:])
        names = [n.strip().strip('"').strip() for n in _split_header(header_text, sep)]
    has_quotes = len(sep) == 1 and pc.any(pc.match_substring(lines.text, '"')).as_py()
    if has_quotes:
        return _split_quoted(lines, path, sep, names, bad)
    return split_fields(lines, path, sep, names, bad)


def _split_header(header: str, sep: str) -> list[str]:
    if len(sep) == 1:
        return next(csv.reader([header], delimiter=sep))
    return header.split(sep)


def _split_quoted(lines: Lines, path: Path, sep: str, names: list[str], bad: BadLines) -> pd.DataFrame:
    """CSV with quoting: the csv module, one record per physical line (titles never span lines)."""
    text_lines = lines.text.to_pylist()
    records: list[list[str] | None] = []
    for raw in text_lines:
        try:
            records.append(next(csv.reader([raw], delimiter=sep, strict=True)))
        except csv.Error:
            records.append(None)
    n_fields = len(names)
    found = np.array([0 if r is None else len(r) for r in records], dtype=np.int64)
    keep = bad.check(
        found != n_fields,
        lines.numbers,
        path,
        lambda i: f"expected {n_fields} fields ({', '.join(names)}), found {found[i]} (or a badly quoted field)",
    )
    kept = [r for r, k in zip(records, keep, strict=True) if k]
    out = pd.DataFrame(kept, columns=names, dtype=object) if kept else pd.DataFrame(columns=names)
    out = out.astype("str") if len(out) else out
    out["_line"] = lines.numbers[keep]
    return out


def require_columns(frame: pd.DataFrame, path: Path, required: list[str]) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        found = ", ".join(c for c in frame.columns if c != "_line") or "none"
        raise DataError(
            f"missing column(s) {', '.join(repr(m) for m in missing)} (found: {found})",
            path=path,
            line=1,
        )


def numeric_column(frame: pd.DataFrame, column: str, path: Path, bad: BadLines, *, unit: str = "line") -> pd.DataFrame:
    """Convert ``column`` to float64 in place; rows where it is not a number are bad."""
    raw = frame[column]
    try:
        frame[column] = pc.cast(pa.array(raw, type=pa.string()), pa.float64()).to_numpy(zero_copy_only=False)
        if not np.isnan(frame[column].to_numpy()).any():
            return frame
        frame[column] = raw
    except (pa.ArrowException, TypeError, ValueError):
        pass
    values = pd.to_numeric(raw.str.strip(), errors="coerce")
    invalid = values.isna().to_numpy()
    frame = bad.reject(
        frame,
        invalid,
        path,
        lambda i: f"column '{column}': expected a number, got {raw.iloc[i]!r}",
        unit=unit,
    )
    frame[column] = values[~invalid].to_numpy(dtype=np.float64)
    return frame


def nonempty_column(frame: pd.DataFrame, column: str, path: Path, bad: BadLines, *, unit: str = "line") -> pd.DataFrame:
    """Strip ``column`` (as text); rows where it is missing or empty are bad."""
    values = frame[column]
    if values.dtype != "str":
        values = values.astype(object).where(values.notna(), "").astype(str)
    values = values.fillna("").str.strip()
    frame = frame.copy()
    frame[column] = values
    return bad.reject(
        frame,
        (values == "").to_numpy(dtype=bool),
        path,
        lambda i: f"column '{column}' is empty",
        unit=unit,
    )


def find_file(folder: Path, patterns: list[str]) -> Path | None:
    """First file in ``folder`` matching one of ``patterns`` (in order of preference), or None."""
    for pattern in patterns:
        matches = sorted(p for p in folder.glob(pattern) if p.is_file())
        if matches:
            return matches[0]
    return None


def missing_input_error(path: Path, what: str, *, source: str) -> DataError:
    """A clear 'not found' error: where we looked and where ``source`` can be downloaded."""
    from intentrec.data.loaders.registry import LOADERS  # the registry imports this module

    downloads = LOADERS.get(source).downloads if source in LOADERS else ()
    urls = "; ".join(f"{d.key}: {d.url}" for d in downloads)
    return DataError(
        f"{what} not found. Looked in {path} (data root: $INTENTREC_DATA or ../shared/data, "
        f"currently {data_root()}). Download: {urls}",
        path=None,
    )


def collapse_duplicate_items(
    items: pd.DataFrame, line_numbers: np.ndarray, path: Path, *, unit: str = "line"
) -> tuple[pd.DataFrame, int]:
    """``items`` with one row per ``item_id``, and how many identical repeated rows were dropped.

    A row that repeats an earlier row of the same item in every column is collapsed (and counted);
    two rows of one item that differ in any column raise a DataError naming the file, the id and both
    lines (``line_numbers[i]`` is the line of row ``i`` as the file shows it, header = line 1).
    """
    items = items.reset_index(drop=True)
    line_numbers = np.asarray(line_numbers)
    if not items["item_id"].duplicated().any():
        return items, 0
    columns = list(items.columns)
    # None and NaN both mean "no value": compare them as equal
    comparable = items.astype(object).where(items.notna(), None)
    distinct = ~comparable.duplicated(columns, keep="first").to_numpy()
    repeated_id = comparable["item_id"].duplicated(keep="first").to_numpy()
    conflicting = np.flatnonzero(distinct & repeated_id)
    if len(conflicting):
        second = int(conflicting[0])
        item_id = comparable.at[second, "item_id"]
        first = int(np.flatnonzero((comparable["item_id"] == item_id).to_numpy())[0])
        differing = [c for c in columns if comparable.at[first, c] != comparable.at[second, c]]

        def values(row: int) -> str:
            return ", ".join(f"{c}={_shorten(comparable.at[row, c])}" for c in differing)

        raise DataError(
            f"item_id {item_id!r} is listed twice with different values: "
            f"{unit} {int(line_numbers[first])} ({values(first)}) and "
            f"{unit} {int(line_numbers[second])} ({values(second)}); "
            "keep one of them (rows repeated exactly are collapsed)",
            path=path,
        )
    kept = items.loc[distinct].reset_index(drop=True)
    return kept, int(len(items) - len(kept))


def _shorten(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def empty_items(extra: list[str] | None = None) -> pd.DataFrame:
    columns = ["item_id", "title", *(extra or [])]
    return pd.DataFrame({c: pd.Series([], dtype=object) for c in columns})


def to_events(
    key: pd.Series,
    item: pd.Series,
    time: np.ndarray | None,
    order: np.ndarray | None,
) -> pd.DataFrame:
    """The canonical ``events`` frame of :class:`RawInteractions`."""
    n = len(item)
    time_arr = np.full(n, np.nan) if time is None else np.asarray(time, dtype=np.float64)
    if order is not None:
        order_arr = np.asarray(order, dtype=np.float64)
    elif time is not None:
        order_arr = time_arr
    else:
        order_arr = np.zeros(n)
    return pd.DataFrame(
        {
            "key": pd.Series(np.asarray(key), dtype="str"),
            "item": pd.Series(np.asarray(item), dtype="str"),
            "time": time_arr,
            "order": order_arr,
        }
    )
