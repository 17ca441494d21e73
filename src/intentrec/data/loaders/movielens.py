"""``movielens``: ml-1m / ml-10m (``ratings.dat``, ``movies.dat``; ``::``, ISO-8859-1), ml-100k (``u.data``
tab-separated, ``u.item`` ``|``-separated, latin-1) and ml-latest(-small) / ml-20m (``ratings.csv``,
``movies.csv``, UTF-8). The variant is detected from the file names; ``.gz`` files are accepted.

Every rating is an interaction; the session key is the user (sessions are then cut by the session
strategy). Genres are kept as an extra item text column.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

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
    read_lines,
    require_columns,
    split_fields,
    to_events,
)
from intentrec.data.loaders.registry import Download, Loader, OfficialFile, register_loader

RATING_COLUMNS = ["user_id", "item_id", "rating", "timestamp"]

# (variant, rating file patterns, item file patterns), in order of preference.
_VARIANTS = [
    (
        "ml-1m",
        ["ratings.dat", "ratings.dat.gz", "ratings*.dat", "ratings*.dat.gz"],
        ["movies.dat", "movies.dat.gz"],
    ),
    ("ml-100k", ["u.data", "u.data.gz"], ["u.item", "u.item.gz"]),
    ("ml-latest", ["ratings.csv", "ratings.csv.gz"], ["movies.csv", "movies.csv.gz"]),
]


def detect_variant(path: Path) -> tuple[str, Path, Path | None]:
    """(variant, ratings file, movies file or None) for a folder or a ratings file."""
    folder = path if path.is_dir() else path.parent
    for variant, rating_patterns, item_patterns in _VARIANTS:
        if path.is_file():
            if not any(path.match(p) for p in rating_patterns):
                continue
            ratings = path
        else:
            ratings = find_file(folder, rating_patterns)
            if ratings is None:
                continue
        return variant, ratings, find_file(folder, item_patterns)
    raise missing_input_error(
        path,
        "MovieLens ratings (ratings.dat[.gz], u.data or ratings.csv)",
        source="movielens",
    )


def load_movielens(path: Path, bad: BadLines) -> RawInteractions:
    variant, ratings_path, movies_path = detect_variant(path)
    if variant == "ml-1m":
        frame = split_fields(read_lines(ratings_path, "iso-8859-1", bad), ratings_path, "::", RATING_COLUMNS, bad)
    elif variant == "ml-100k":
        frame = read_delimited(ratings_path, sep="\t", names=RATING_COLUMNS, bad=bad, encoding="iso-8859-1")
    else:
        frame = read_delimited(ratings_path, sep=",", bad=bad)
        require_columns(frame, ratings_path, ["userId", "movieId", "timestamp"])
        frame = frame.rename(columns={"userId": "user_id", "movieId": "item_id"})
    for column in ("user_id", "item_id"):
        frame = nonempty_column(frame, column, ratings_path, bad)
    frame = numeric_column(frame, "timestamp", ratings_path, bad)
    timestamps = frame["timestamp"].to_numpy()
    events = to_events(frame["user_id"], frame["item_id"], timestamps, timestamps)

    inputs = [ratings_path]
    notes = []
    items = empty_items(["genres"])
    collapsed = 0
    if movies_path is None:
        notes.append(f"no movie file next to {ratings_path.name}: items have no titles")
    else:
        inputs.append(movies_path)
        items, collapsed = _read_movies(variant, movies_path, bad)
    return RawInteractions(
        source="movielens",
        variant=variant,
        key_kind="user",
        events=events,
        items=items,
        inputs=inputs,
        bad_lines_skipped=bad.skipped,
        notes=notes,
        duplicate_item_rows_collapsed=collapsed,
    )


def _read_movies(variant: str, path: Path, bad: BadLines) -> tuple[pd.DataFrame, int]:
    if variant == "ml-1m":
        frame = split_fields(read_lines(path, "iso-8859-1", bad), path, "::", ["item_id", "title", "genres"], bad)
    elif variant == "ml-100k":
        lines = read_lines(path, "iso-8859-1", bad)
        # u.item: id|title|release date|video release date|IMDb URL|19 genre flags
        genre_flags = [f"g{i}" for i in range(19)]
        names = ["item_id", "title", "release", "video_release", "url", *genre_flags]
        frame = split_fields(lines, path, "|", names, bad)
        flags = frame[genre_flags].to_numpy() == "1"
        genres = np.array(_ML100K_GENRES, dtype=object)
        frame["genres"] = ["|".join(genres[row]) or None for row in flags]
    else:
        frame = read_delimited(path, sep=",", bad=bad)
        require_columns(frame, path, ["movieId", "title"])
        frame = frame.rename(columns={"movieId": "item_id"})
        if "genres" not in frame.columns:
            frame["genres"] = None
    frame = nonempty_column(frame, "item_id", path, bad)
    items = frame[["item_id", "title", "genres"]].copy()
    items["genres"] = items["genres"].where(items["genres"] != "(no genres listed)", None)
    return collapse_duplicate_items(items, frame["_line"].to_numpy(), path)


_ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
]  # fmt: skip


_GROUPLENS = "https://files.grouplens.org/datasets/movielens"


@register_loader
class MovieLensLoader(Loader):
    """GroupLens MovieLens ratings; the key is the user."""

    name = "movielens"
    key_kind = "user"
    # sha256 of the frozen ml-1m / ml-100k archives; ml-latest-small is re-issued by GroupLens under
    # the same name (our shared copy is the 2016 release), so no digest is pinned for it.
    downloads = (
        Download(
            "ml-1m",
            page="https://grouplens.org/datasets/movielens/1m/",
            folder="movielens/ml-1m",
            files=(
                OfficialFile(
                    f"{_GROUPLENS}/ml-1m.zip",
                    sha256="a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
                    size=5_917_549,
                ),
            ),
        ),
        Download(
            "ml-100k",
            page="https://grouplens.org/datasets/movielens/100k/",
            folder="movielens/ml-100k",
            files=(
                OfficialFile(
                    f"{_GROUPLENS}/ml-100k.zip",
                    sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
                    size=4_924_029,
                ),
            ),
        ),
        Download(
            "ml-latest-small",
            page="https://grouplens.org/datasets/movielens/latest/",
            folder="movielens/ml-latest-small",
            files=(OfficialFile(f"{_GROUPLENS}/ml-latest-small.zip"),),
        ),
    )

    def locate(self, path: Path) -> list[Path]:
        return [f for f in detect_variant(path)[1:] if f is not None]

    def load(self, path: Path, bad: BadLines) -> RawInteractions:
        return load_movielens(path, bad)
