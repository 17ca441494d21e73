"""``diginetica``: CIKM Cup 2016 ``train-item-views.csv`` (``;``-separated, with header
``session_id;user_id;item_id;timeframe;eventdate``). No titles.

The session key is ``session_id``; items inside a session are ordered by ``timeframe`` (as SR-GNN does);
the interaction time is the ``eventdate`` (UTC midnight), so a session ends on its last event date.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from intentrec.data.loaders.base import (
    BadLines,
    RawInteractions,
    empty_items,
    find_file,
    missing_input_error,
    nonempty_column,
    numeric_column,
    read_delimited,
    require_columns,
    to_events,
)
from intentrec.data.loaders.registry import Download, Loader, register_loader

FILES = [
    "train-item-views.csv",
    "train-item-views.csv.gz",
    "*train-item-views.csv",
    "*train-item-views.csv.gz",
]


def locate_diginetica(path: Path) -> Path:
    views = path if path.is_file() else find_file(path, FILES)
    if views is None:
        raise missing_input_error(path, "train-item-views.csv", source="diginetica")
    return views


def load_diginetica(path: Path, bad: BadLines) -> RawInteractions:
    views = locate_diginetica(path)
    frame = read_delimited(views, sep=";", bad=bad)
    require_columns(frame, views, ["session_id", "item_id", "timeframe", "eventdate"])
    for column in ("session_id", "item_id"):
        frame = nonempty_column(frame, column, views, bad)
    frame = numeric_column(frame, "timeframe", views, bad)
    dates = pd.to_datetime(frame["eventdate"], format="%Y-%m-%d", errors="coerce", utc=True)
    invalid = dates.isna().to_numpy()
    raw_dates = frame["eventdate"]
    frame = bad.reject(
        frame,
        invalid,
        views,
        lambda i: f"column 'eventdate': expected a YYYY-MM-DD date, got {raw_dates.iloc[i]!r}",
    )
    seconds = (dates[~invalid] - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(np.float64)
    events = to_events(frame["session_id"], frame["item_id"], seconds, frame["timeframe"].to_numpy())
    return RawInteractions(
        source="diginetica",
        variant="diginetica",
        key_kind="session",
        events=events,
        items=empty_items(),
        inputs=[views],
        bad_lines_skipped=bad.skipped,
        notes=["diginetica has no item titles"],
    )


@register_loader
class DigineticaLoader(Loader):
    """CIKM Cup 2016 (DIGINETICA) item views; the key is the session id."""

    name = "diginetica"
    key_kind = "session"
    downloads = (
        Download(
            "diginetica",
            page="https://competitions.codalab.org/competitions/11161",
            folder="diginetica",
            expect="train-item-views.csv",
            how="the competition page needs a login (a CodaLab account)",
        ),
    )

    def locate(self, path: Path) -> list[Path]:
        return [locate_diginetica(path)]

    def load(self, path: Path, bad: BadLines) -> RawInteractions:
        return load_diginetica(path, bad)
