"""``yoochoose``: RecSys Challenge 2015 ``yoochoose-clicks.dat`` (CSV without header:
``session_id,timestamp,item_id,category``; ISO 8601 UTC timestamps). No titles.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from intentrec.data.loaders.base import (
    BadLines,
    RawInteractions,
    empty_items,
    find_file,
    missing_input_error,
    nonempty_column,
    read_delimited,
    to_events,
)
from intentrec.data.loaders.registry import Download, Loader, register_loader

FILES = ["yoochoose-clicks.dat", "yoochoose-clicks.dat.gz", "*clicks*.dat", "*clicks*.dat.gz"]
COLUMNS = ["session_id", "timestamp", "item_id", "category"]


def locate_yoochoose(path: Path) -> Path:
    clicks = path if path.is_file() else find_file(path, FILES)
    if clicks is None:
        raise missing_input_error(path, "yoochoose-clicks.dat", source="yoochoose")
    return clicks


def load_yoochoose(path: Path, bad: BadLines) -> RawInteractions:
    clicks = locate_yoochoose(path)
    frame = read_delimited(clicks, sep=",", names=COLUMNS, bad=bad)
    for column in ("session_id", "item_id"):
        frame = nonempty_column(frame, column, clicks, bad)
    parsed = pd.to_datetime(frame["timestamp"], format="ISO8601", errors="coerce", utc=True)
    invalid = parsed.isna().to_numpy()
    raw = frame["timestamp"]
    frame = bad.reject(
        frame,
        invalid,
        clicks,
        lambda i: f"column 'timestamp': expected an ISO 8601 date-time, got {raw.iloc[i]!r}",
    )
    seconds = (parsed[~invalid] - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy()
    events = to_events(frame["session_id"], frame["item_id"], seconds, seconds)
    return RawInteractions(
        source="yoochoose",
        variant="yoochoose",
        key_kind="session",
        events=events,
        items=empty_items(),
        inputs=[clicks],
        bad_lines_skipped=bad.skipped,
        notes=["yoochoose has no item titles"],
    )


@register_loader
class YoochooseLoader(Loader):
    """RecSys Challenge 2015 (YOOCHOOSE) clicks; the key is the session id."""

    name = "yoochoose"
    key_kind = "session"
    downloads = (
        Download(
            "yoochoose",
            page="https://recsys.acm.org/recsys15/challenge/",
            folder="yoochoose",
            expect="yoochoose-clicks.dat",
            how="the challenge page links the data (a 7z archive, yoochoose-data.7z); unpack it",
        ),
    )

    def locate(self, path: Path) -> list[Path]:
        return [locate_yoochoose(path)]

    def load(self, path: Path, bad: BadLines) -> RawInteractions:
        return load_yoochoose(path, bad)
