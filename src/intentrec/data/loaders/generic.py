"""``generic``: a folder with ``interactions.csv|.parquet`` and (optionally) ``items.csv|.parquet``.

interactions: ``session_id, item_id`` and ``timestamp`` (seconds or ISO 8601) and/or ``position``
(order inside the session; wins over timestamp for ordering). items: ``item_id, title`` and any
further text columns, which are kept as extra item text.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from intentrec.data.loaders.base import (
    BadLines,
    RawInteractions,
    collapse_duplicate_items,
    empty_items,
    find_file,
    missing_input_error,
    nonempty_column,
    numeric_column,
    read_delimited,
    require_columns,
    to_events,
)
from intentrec.data.loaders.registry import Loader, register_loader
from intentrec.errors import DataError

INTERACTION_FILES = ["interactions.parquet", "interactions.csv", "interactions.csv.gz"]
ITEM_FILES = ["items.parquet", "items.csv", "items.csv.gz"]


def locate_generic(path: Path) -> tuple[Path, Path | None]:
    """(interactions file, items file or None) for a folder or an interactions file."""
    folder = path if path.is_dir() else path.parent
    interactions_path = path if path.is_file() else find_file(folder, INTERACTION_FILES)
    if interactions_path is None:
        raise missing_input_error(folder, "interactions.csv or interactions.parquet", source="generic")
    return interactions_path, find_file(folder, ITEM_FILES)


def load_generic(path: Path, bad: BadLines) -> RawInteractions:
    interactions_path, items_path = locate_generic(path)
    frame, unit = _read_table(interactions_path, bad)
    require_columns(frame, interactions_path, ["session_id", "item_id"])
    if "timestamp" not in frame.columns and "position" not in frame.columns:
        raise DataError(
            "needs a 'timestamp' or a 'position' column to order items inside a session "
            f"(found: {', '.join(c for c in frame.columns if c != '_line')})",
            path=interactions_path,
            line=1,
        )
    for column in ("session_id", "item_id"):
        frame = nonempty_column(frame, column, interactions_path, bad, unit=unit)
    time = order = None
    if "timestamp" in frame.columns:
        frame = _timestamp_column(frame, interactions_path, bad, unit)
        time = frame["timestamp"].to_numpy()
    if "position" in frame.columns:
        frame = numeric_column(frame, "position", interactions_path, bad, unit=unit)
        order = frame["position"].to_numpy()
    events = to_events(frame["session_id"], frame["item_id"], time, order)

    inputs = [interactions_path]
    items = empty_items()
    notes = []
    collapsed = 0
    if items_path is not None:
        inputs.append(items_path)
        items, collapsed = _read_items(items_path, bad)
    else:
        notes.append(f"no items.csv/items.parquet next to {interactions_path.name}: no titles")
    return RawInteractions(
        source="generic",
        variant="generic",
        key_kind="session",
        events=events,
        items=items,
        inputs=inputs,
        bad_lines_skipped=bad.skipped,
        notes=notes,
        duplicate_item_rows_collapsed=collapsed,
    )


def _read_table(path: Path, bad: BadLines) -> tuple[pd.DataFrame, str]:
    """String columns plus ``_line`` (physical line for CSV, 1-based row for Parquet)."""
    if path.name.endswith(".parquet"):
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"cannot read Parquet file: {exc}", path=path) from None
        frame = table.to_pandas()
        for column in frame.columns:
            if not pd.api.types.is_numeric_dtype(frame[column]):
                frame[column] = frame[column].astype(object)
        frame["_line"] = np.arange(1, len(frame) + 1, dtype=np.int64)
        return frame, "row"
    return read_delimited(path, sep=",", bad=bad), "line"


def _timestamp_column(frame: pd.DataFrame, path: Path, bad: BadLines, unit: str) -> pd.DataFrame:
    """Seconds since the epoch, from numbers or from ISO 8601 date-times (UTC unless stated)."""
    raw = frame["timestamp"]
    numbers = pd.to_numeric(raw, errors="coerce")
    if numbers.notna().all():
        frame["timestamp"] = numbers.to_numpy(dtype=np.float64)
        return frame
    parsed = pd.to_datetime(raw.astype(str), errors="coerce", utc=True, format="ISO8601")
    seconds = (parsed - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    seconds = seconds.where(parsed.notna(), numbers)
    invalid = seconds.isna().to_numpy()
    frame = bad.reject(
        frame,
        invalid,
        path,
        lambda i: f"column 'timestamp': expected seconds or an ISO 8601 date-time, got {raw.iloc[i]!r}",
        unit=unit,
    )
    frame["timestamp"] = seconds[~invalid].to_numpy(dtype=np.float64)
    return frame


def _read_items(path: Path, bad: BadLines) -> tuple[pd.DataFrame, int]:
    """One row per item; identical repeated rows collapsed (and counted), conflicting ones an error."""
    frame, unit = _read_table(path, bad)
    require_columns(frame, path, ["item_id"])
    frame = nonempty_column(frame, "item_id", path, bad, unit=unit)
    if "title" not in frame.columns:
        frame["title"] = None
    extra = [c for c in frame.columns if c not in ("item_id", "title", "_line")]
    reserved = {"item_index", "train_count"} & set(extra)
    if reserved:
        raise DataError(
            f"column name(s) {sorted(reserved)} are reserved by the prepared format; rename them",
            path=path,
            line=1,
        )
    items = frame[["item_id", "title", *extra]].copy()
    for column in ["title", *extra]:
        items[column] = items[column].astype(object).where(items[column].notna(), None)
    return collapse_duplicate_items(items, frame["_line"].to_numpy(), path, unit=unit)


@register_loader
class GenericLoader(Loader):
    """Your own files. The key is the file's ``session_id``, whatever it holds (sessions or users)."""

    name = "generic"
    key_kind = "session"
    downloads = ()  # nothing to download: bring your own interactions.csv

    def locate(self, path: Path) -> list[Path]:
        return [f for f in locate_generic(path) if f is not None]

    def load(self, path: Path, bad: BadLines) -> RawInteractions:
        return load_generic(path, bad)
