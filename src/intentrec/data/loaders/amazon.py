"""``amazon``: McAuley-lab review dumps.

* 2014: ``reviews_<Cat>[_5].json[.gz]`` (one JSON object per line) and ``meta_<Cat>.json[.gz]``, whose
  lines are *Python dict literals* (single quotes), parsed with ``ast.literal_eval`` — never ``eval``.
* 2018: ``<Cat>[_5].json[.gz]`` and ``meta_<Cat>.json[.gz]``, strict JSON both.

User = ``reviewerID``, item = ``asin``, time = ``unixReviewTime``; the session key is the user. Titles come
from the meta file's ``title``; without a meta file every item lacks a title (reported, not an error).
"""

from __future__ import annotations

import ast
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.json as pa_json

from intentrec.data.loaders.base import (
    BadLines,
    Lines,
    RawInteractions,
    collapse_duplicate_items,
    empty_items,
    missing_input_error,
    read_lines,
    to_events,
)
from intentrec.data.loaders.registry import Download, Loader, register_loader
from intentrec.errors import DataError

REVIEW_FIELDS = {"reviewerID": pa.string(), "asin": pa.string(), "unixReviewTime": pa.int64()}
META_EXTRA = ["brand", "categories"]


def find_reviews(path: Path) -> tuple[str, Path, Path | None]:
    """(variant, reviews file, meta file or None) for a folder or a reviews file."""
    if path.is_file():
        reviews = path
    else:
        candidates = sorted(
            p
            for p in path.glob("*.json*")
            if p.is_file() and p.name.endswith((".json", ".json.gz")) and not p.name.startswith("meta_")
        )
        if not candidates:
            raise missing_input_error(
                path,
                "Amazon reviews (reviews_<Cat>[_5].json[.gz] or <Cat>[_5].json[.gz])",
                source="amazon",
            )
        if len(candidates) > 1:
            names = ", ".join(p.name for p in candidates)
            raise DataError(f"several review files ({names}); pass the one to use as PATH", path=path)
        reviews = candidates[0]
    stem = reviews.name.removesuffix(".gz").removesuffix(".json")
    variant = "amazon-2014" if stem.startswith("reviews_") else "amazon-2018"
    category = stem.removeprefix("reviews_").removesuffix("_5")
    meta = None
    for name in (f"meta_{category}.json", f"meta_{category}.json.gz"):
        if (reviews.parent / name).is_file():
            meta = reviews.parent / name
    return variant, reviews, meta


def load_amazon(path: Path, bad: BadLines) -> RawInteractions:
    variant, reviews_path, meta_path = find_reviews(path)
    reviews = _read_reviews(reviews_path, bad)
    times = reviews["unixReviewTime"].to_numpy(dtype=np.float64)
    events = to_events(reviews["reviewerID"], reviews["asin"], times, times)
    inputs = [reviews_path]
    notes = []
    collapsed = 0
    if meta_path is None:
        items = empty_items(META_EXTRA)
        notes.append(f"no meta_*.json[.gz] next to {reviews_path.name}: items have no titles")
    else:
        inputs.append(meta_path)
        items, collapsed = _read_meta(meta_path, bad)
    return RawInteractions(
        source="amazon",
        variant=variant,
        key_kind="user",
        events=events,
        items=items,
        inputs=inputs,
        bad_lines_skipped=bad.skipped,
        notes=notes,
        duplicate_item_rows_collapsed=collapsed,
    )


def _read_reviews(path: Path, bad: BadLines) -> pd.DataFrame:
    lines = read_lines(path, "utf-8", bad)
    fast = _reviews_with_arrow(lines)
    if fast is not None:
        return fast
    # Slow path (only for files with a problem): parse line by line to name the bad line.
    records = [_json_record(text) for text in lines.text.to_pylist()]
    problems = [_review_problem(r) for r in records]
    keep = bad.check(
        np.array([p is not None for p in problems], dtype=bool),
        lines.numbers,
        path,
        lambda i: problems[i],
    )
    rows = [r for r, k in zip(records, keep, strict=True) if k]
    return pd.DataFrame(
        {
            "reviewerID": [str(r["reviewerID"]) for r in rows],
            "asin": [str(r["asin"]) for r in rows],
            "unixReviewTime": np.array([r["unixReviewTime"] for r in rows], dtype=np.float64),
        }
    )


def _reviews_with_arrow(lines: Lines) -> pd.DataFrame | None:
    """Vectorised parse of clean files; None when anything is off (then the slow path finds the line)."""
    if len(lines) == 0:
        return pd.DataFrame({name: [] for name in REVIEW_FIELDS})
    data = ("\n".join(lines.text.to_pylist()) + "\n").encode("utf-8")
    try:
        table = pa_json.read_json(
            io.BytesIO(data),
            parse_options=pa_json.ParseOptions(
                explicit_schema=pa.schema(REVIEW_FIELDS), unexpected_field_behavior="ignore"
            ),
        )
    except (pa.ArrowException, ValueError):
        return None
    if table.num_rows != len(lines) or any(table.column(n).null_count for n in REVIEW_FIELDS):
        return None
    frame = table.to_pandas()
    if (frame["reviewerID"].str.strip() == "").any() or (frame["asin"].str.strip() == "").any():
        return None
    return frame


def _json_record(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError as exc:
        return exc


def _review_problem(record: object) -> str | None:
    if isinstance(record, Exception):
        return f"not valid JSON: {record}"
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    for name in REVIEW_FIELDS:
        value = record.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            return f"field '{name}' is missing or empty"
    if not isinstance(record["unixReviewTime"], int | float):
        return f"field 'unixReviewTime': expected a number, got {record['unixReviewTime']!r}"
    return None


def _read_meta(path: Path, bad: BadLines) -> tuple[pd.DataFrame, int]:
    """Meta lines: strict JSON (2018) or Python dict literals (2014), one object per line.

    An ``asin`` listed on several lines must have the same title, brand and categories on each
    (collapsed and counted); otherwise it is an error naming both lines.
    """
    lines = read_lines(path, "utf-8", bad)
    records = [_meta_record(text) for text in lines.text.to_pylist()]
    problems = [
        r if isinstance(r, str) else (None if r.get("asin") else "field 'asin' is missing or empty") for r in records
    ]
    keep = bad.check(
        np.array([p is not None for p in problems], dtype=bool),
        lines.numbers,
        path,
        lambda i: problems[i],
    )
    rows = [r for r, k in zip(records, keep, strict=True) if k]
    items = pd.DataFrame(
        {
            "item_id": [str(r["asin"]).strip() for r in rows],
            "title": [_as_text(r.get("title")) for r in rows],
            "brand": [_as_text(r.get("brand")) for r in rows],
            "categories": [_as_text(r.get("categories", r.get("category"))) for r in rows],
        },
        dtype=object,
    )
    return collapse_duplicate_items(items, lines.numbers[keep], path)


def _meta_record(text: str) -> dict | str:
    """The parsed object, or a message saying why the line is bad."""
    try:
        record = json.loads(text)
    except ValueError:
        try:
            record = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError) as exc:
            return f"neither JSON nor a Python dict literal ({type(exc).__name__}: {exc})"
    if not isinstance(record, dict):
        return f"expected an object / dict, got {type(record).__name__}"
    return record


def _as_text(value: object) -> str | None:
    """Strings as they are; (nested) lists of strings joined with ' | '; anything else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        parts = [_as_text(v) for v in value]
        joined = " | ".join(p for p in parts if p)
        return joined or None
    return None


@register_loader
class AmazonLoader(Loader):
    """McAuley-lab Amazon reviews; the key is the reviewer."""

    name = "amazon"
    key_kind = "user"
    downloads = (
        Download(
            "amazon-2014",
            page="https://cseweb.ucsd.edu/~jmcauley/datasets/amazon/links.html",
            folder="amazon/<category>",
            expect="reviews_<Cat>_5.json.gz and meta_<Cat>.json.gz",
            how="the files are linked from a web page, one pair per category",
        ),
        Download(
            "amazon-2018",
            page="https://nijianmo.github.io/amazon/index.html",
            folder="amazon/<category>",
            expect="<Cat>_5.json.gz and meta_<Cat>.json.gz",
            how="the page may ask you to fill in a form before it shows the file links",
        ),
    )

    def locate(self, path: Path) -> list[Path]:
        return [f for f in find_reviews(path)[1:] if f is not None]

    def load(self, path: Path, bad: BadLines) -> RawInteractions:
        return load_amazon(path, bad)
