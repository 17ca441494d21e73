"""Preparing a dataset: upstream files → sessions → filters → splits → examples → one folder on disk.

Python API::

    from intentrec.data.prepare import prepare_dataset
    ds = prepare_dataset("generic", "../shared/data/amazon/beauty-2014-5core", "runs/beauty",
                         protocol="llm4sbr-beauty")
    ds.manifest["statistics"]["train_examples"]

Keyword arguments are the fields of :class:`PrepareConfig` and override the protocol's values. The
folder is written in the layout of :mod:`intentrec.data.schema`: built in a temporary folder next to
``out`` and renamed into place, so a crash never leaves a half-written dataset. Preparing the same
inputs (same sha256) with the same parameters again reuses the existing folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, field_validator, model_validator

from intentrec import __version__
from intentrec.config import Config
from intentrec.data import schema
from intentrec.data.augment import AugmentMode, make_examples
from intentrec.data.dataset import PreparedDataset
from intentrec.data.filters import FilterPasses, RareItemPolicy, filter_sessions
from intentrec.data.loaders import (
    RawInteractions,
    check_locale,
    load_source,
    locate_inputs,
    resolve_input_path,
    source_defaults,
)
from intentrec.data.loaders.base import BadLinePolicy
from intentrec.data.presets import check_required_inputs, get_preset
from intentrec.data.sessions import Sessions, SessionStrategy, build_sessions
from intentrec.data.splits import (
    LeaveOneOutConfig,
    SplitMethod,
    SplitSizes,
    leave_one_out,
    split_order,
    split_sizes,
)
from intentrec.data.text import clean_text
from intentrec.errors import ConfigError, DataError
from intentrec.io import sha256_file


class PrepareConfig(Config):
    """All parameters of ``intentrec prepare`` (CLI flags map one to one, dashes for underscores)."""

    session: SessionStrategy | None = None  # None: 'given' for session sources, 'user' otherwise
    gap_seconds: float = Field(1800.0, gt=0)
    bin_seconds: float = Field(600.0, gt=0)
    window_seconds: float = Field(300.0, gt=0)
    min_item_support: int = Field(5, ge=1)
    min_session_length: int = Field(2, ge=1)
    #: sessions with fewer items are dropped once, before the other filters (1: off)
    min_raw_session_length: int = Field(1, ge=1)
    filter_passes: FilterPasses = "1"
    rare_items: RareItemPolicy = "drop-items"
    drop_short_sessions_first: bool = False
    split: SplitMethod = "order"
    #: options of split='leave-one-out' (None with any other split)
    leave_one_out: LeaveOneOutConfig | None = None
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    valid_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_days: float | None = Field(None, gt=0)
    augment: dict[str, AugmentMode] = Field(default_factory=lambda: dict.fromkeys(schema.SPLITS, "prefix"))
    max_sessions: int | None = Field(None, ge=1)
    seed: int = 0
    on_bad_line: BadLinePolicy = "error"
    #: the one locale to read, for sources with several (amazon-m2); None: every locale
    locale: str | None = None

    @field_validator("filter_passes", mode="before")
    @classmethod
    def _passes_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value

    @model_validator(mode="before")
    @classmethod
    def _leave_one_out_defaults(cls, values: Any) -> Any:
        """leave-one-out holds out one target per session: ``last`` examples in valid and test."""
        if isinstance(values, dict) and values.get("split") == "leave-one-out":
            values = dict(values)
            if values.get("leave_one_out") is None:
                values["leave_one_out"] = {}
            if values.get("augment") is None:
                values["augment"] = "train=prefix,test=last"
        return values

    @field_validator("leave_one_out", mode="before")
    @classmethod
    def _leave_one_out_options(cls, value: Any) -> Any:
        """'valid=false,short_sessions=train' (the CLI's text) or a dict; unknown keys are errors."""
        if isinstance(value, str):
            pairs = [p.split("=", 1) for p in value.split(",") if p.strip()]
            if any(len(p) != 2 for p in pairs):
                raise ValueError(f"expected key=value pairs separated by commas, got {value!r}")
            value = {k.strip(): v.strip() for k, v in pairs}
        if isinstance(value, dict):
            return LeaveOneOutConfig.build(value, where="leave-one-out options")
        return value

    @field_validator("augment", mode="before")
    @classmethod
    def _augment_per_split(cls, value: Any) -> Any:
        """'prefix' (every split) or 'train=prefix,test=last' (valid follows test unless named)."""
        if isinstance(value, str):
            if "=" not in value:
                return dict.fromkeys(schema.SPLITS, value.strip())
            pairs = [p.split("=", 1) for p in value.split(",") if p.strip()]
            value = {k.strip(): v.strip() for k, v in pairs}
        if isinstance(value, dict):
            unknown = set(value) - set(schema.SPLITS)
            if unknown:
                raise ValueError(f"unknown split(s) {sorted(unknown)} (known: {', '.join(schema.SPLITS)})")
            missing = {"train", "test"} - set(value)
            if missing:
                raise ValueError(f"per-split augment must name train and test (missing {sorted(missing)})")
            return {
                "train": value["train"],
                "valid": value.get("valid", value["test"]),
                "test": value["test"],
            }
        return value

    @model_validator(mode="after")
    def _test_days_needs_time_split(self) -> PrepareConfig:
        if self.test_days is not None and self.split != "time":
            raise ValueError("test_days applies only with split='time'")
        if self.split != "leave-one-out":
            if self.leave_one_out is not None:
                raise ValueError("leave_one_out options apply only with split='leave-one-out'")
            return self
        if self.augment["valid"] != "last" or self.augment["test"] != "last":
            raise ValueError(
                "split='leave-one-out' holds out one target per session: valid and test take 'last' examples "
                "(augment 'train=prefix,test=last' or 'last')"
            )
        defaults = PrepareConfig.model_fields
        for name in ("test_fraction", "valid_fraction"):
            if getattr(self, name) != defaults[name].default:
                raise ValueError(
                    f"{name} does not apply to split='leave-one-out' (every session is in every split; "
                    "leave_one_out valid=false has no valid split)"
                )
        return self


#: Parameters added after datasets were first prepared, with the value that means "off". At that value
#: they are left out of the manifest, so datasets that do not use them keep their parameters (and so
#: their fingerprint and up-to-date check).
_OMITTED_AT_DEFAULT: dict[str, Any] = {"min_raw_session_length": 1, "locale": None, "leave_one_out": None}


def manifest_parameters(source: str, protocol: str | None, config: PrepareConfig) -> dict[str, Any]:
    """The ``parameters`` section of the manifest: every resolved parameter, less those at "off"."""
    values = config.model_dump()
    for key, off in _OMITTED_AT_DEFAULT.items():
        if values.get(key) == off:
            values.pop(key)
    return json.loads(json.dumps({"source": source, "protocol": protocol, **values}))


@dataclass
class PrepareOutcome:
    dataset: PreparedDataset
    reused: bool
    statistics: dict[str, Any]


def resolve_config(source: str, protocol: str | None, params: dict[str, Any]) -> PrepareConfig:
    """The source's defaults, overridden by the protocol's values, overridden by explicit ``params``
    (None values count as not given). A source's default session strategy is ``given`` when its
    files hold session ids, ``user`` otherwise (its loader's ``key_kind``)."""
    values: dict[str, Any] = dict(source_defaults(source))
    if protocol:
        preset = get_preset(protocol)
        if preset.source != source:
            raise ConfigError(f"protocol '{protocol}' is defined for SOURCE '{preset.source}', not '{source}'")
        values.update(preset.params)
        if "test_days" in preset.params and params.get("test_fraction") is not None:
            values.pop("test_days")  # an explicit --test-fraction replaces the preset's day cut
    values.update({k: v for k, v in params.items() if v is not None})
    config = PrepareConfig.build(values, where="prepare parameters")
    if config.locale is not None:
        check_locale(source, config.locale)
    if config.session is None:  # an unknown SOURCE (reported when its files are located)
        config.session = "user"
    return config


def prepare_dataset(
    source: str,
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    protocol: str | None = None,
    force: bool = False,
    **params: Any,
) -> PreparedDataset:
    """Prepare (or reuse) a dataset and open it. See the module docstring."""
    return run_prepare(source, path, out, protocol=protocol, force=force, **params).dataset


def run_prepare(
    source: str,
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    protocol: str | None = None,
    force: bool = False,
    log: Callable[[str], None] | None = None,
    **params: Any,
) -> PrepareOutcome:
    log = log or (lambda message: None)
    out = Path(out)
    config = resolve_config(source, protocol, params)
    parameters = manifest_parameters(source, protocol, config)
    if protocol:
        check_required_inputs(get_preset(protocol), resolve_input_path(path))
    inputs = [
        {"path": str(p.resolve()), "sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in locate_inputs(source, path)
    ]
    if not force and _is_up_to_date(out, parameters, inputs):
        dataset = PreparedDataset(out)
        return PrepareOutcome(dataset, True, dataset.manifest["statistics"])
    _check_replaceable(out)

    started = time.perf_counter()
    raw = load_source(source, path, config.on_bad_line, locale=config.locale)
    log(f"read {len(raw.events):,} interactions from {', '.join(p.name for p in raw.inputs)}")
    tables, statistics = build_tables(raw, config)
    statistics["seconds"] = round(time.perf_counter() - started, 2)
    manifest = {
        "format_version": schema.FORMAT_VERSION,
        "intentrec_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": source,
        "variant": raw.variant,
        "inputs": inputs,
        "protocol": protocol,
        "parameters": parameters,
        "statistics": statistics,
        "notes": raw.notes,
    }
    _write_folder(out, tables, manifest)
    return PrepareOutcome(PreparedDataset(out), False, statistics)


def build_tables(raw: RawInteractions, config: PrepareConfig) -> tuple[dict[str, pa.Table], dict[str, Any]]:
    """The three Parquet tables and the statistics, in memory."""
    sessions = build_sessions(
        raw,
        config.session or "given",
        gap_seconds=config.gap_seconds,
        bin_seconds=config.bin_seconds,
        window_seconds=config.window_seconds,
    )
    raw_sessions = len(sessions)
    sessions, report = filter_sessions(
        sessions,
        min_item_support=config.min_item_support,
        min_session_length=config.min_session_length,
        passes=config.filter_passes,
        rare_items=config.rare_items,
        drop_short_sessions_first=config.drop_short_sessions_first,
        min_raw_session_length=config.min_raw_session_length,
    )
    if len(sessions) == 0:
        raise DataError(
            f"nothing left after filtering: none of the {raw_sessions:,} sessions keeps "
            f"{config.min_session_length} items with ≥ {config.min_item_support} occurrences "
            "(lower --min-item-support / --min-session-length, or check --session)",
            path=raw.inputs[0],
        )
    positions = split_order(sessions, config.split, seed=config.seed)
    loo = config.leave_one_out
    if loo is not None:
        too_short = sessions.lengths[positions] < loo.min_length
        loo_short = int(np.count_nonzero(too_short))
        if loo.short_sessions == "drop":
            positions = positions[~too_short]
            if len(positions) == 0:
                raise DataError(
                    f"nothing left for leave-one-out: none of the {len(sessions):,} sessions has "
                    f"{loo.min_length} items",
                    path=raw.inputs[0],
                )
    if config.max_sessions is not None:
        positions = positions[: config.max_sessions]
    kept = sessions.reorder(positions)
    if loo is not None:
        ordered, sizes = leave_one_out(kept, loo)
    else:
        ordered = kept
        sizes = split_sizes(
            len(ordered),
            test_fraction=config.test_fraction,
            valid_fraction=config.valid_fraction,
            end_times=ordered.end_times() if config.test_days is not None else None,
            test_days=config.test_days,
        )
    item_index, item_ids = _index_items(sessions, np.sort(positions))
    values = item_index[ordered.values]  # item indices 1..n, sessions in split order
    split_labels = sizes.labels()

    train_end = int(ordered.offsets[sizes.train])
    train_count = np.bincount(values[:train_end], minlength=len(item_ids) + 1)[1:].astype(np.int64)
    examples, example_stats = _examples_table(values, ordered.offsets, sizes, config, train_count)
    items, title_stats = _items_table(raw.items, item_ids, train_count)
    session_table = pa.table(
        {
            "session_index": pa.array(np.arange(len(ordered), dtype=np.int64)),
            "session_id": pa.array(ordered.session_ids.astype(str), type=pa.string()),
            "split": pa.array(split_labels.astype(str), type=pa.string()),
            "items": _list_array(values, ordered.offsets),
        }
    )
    # With leave-one-out a session is stored once per split: these count the sessions it was cut from.
    statistics = {
        "sessions": len(kept),
        "items": len(item_ids),
        "interactions": int(kept.num_interactions),
        **title_stats,
        "train_sessions": sizes.train,
        "valid_sessions": sizes.valid,
        "test_sessions": sizes.test,
        **example_stats,
        "bad_lines_skipped": raw.bad_lines_skipped,
        # only when there were any: a new key would change every existing dataset's fingerprint
        **(
            {"duplicate_item_rows_collapsed": raw.duplicate_item_rows_collapsed}
            if raw.duplicate_item_rows_collapsed
            else {}
        ),
        "raw_interactions": len(raw.events),
        "raw_sessions": raw_sessions,
        "sessions_after_filter": len(sessions),
        "interactions_after_filter": int(sessions.num_interactions),
        "filter_passes_run": report.passes_run,
        **({"leave_one_out_short_sessions": loo_short} if loo is not None else {}),
        "mean_session_length": round(float(kept.lengths.mean()), 4),
    }
    return {
        schema.ITEMS: items,
        schema.SESSIONS: session_table,
        schema.EXAMPLES: examples,
    }, statistics


def _index_items(sessions: Sessions, kept_in_build_order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Item index (1..n) per item code, numbered by first appearance in build order; and the ids."""
    values = sessions.reorder(kept_in_build_order).values
    codes_in_order = pd.unique(values)
    index = np.zeros(len(sessions.item_vocab), dtype=np.int32)
    index[codes_in_order] = np.arange(1, len(codes_in_order) + 1, dtype=np.int32)
    return index, sessions.item_vocab[codes_in_order]


def _examples_table(
    values: np.ndarray,
    offsets: np.ndarray,
    sizes: SplitSizes,
    config: PrepareConfig,
    train_count: np.ndarray,
) -> tuple[pa.Table, dict[str, int]]:
    parts = []
    stats: dict[str, int] = {}
    first_session = 0
    for split, count in zip(schema.SPLITS, (sizes.train, sizes.valid, sizes.test), strict=True):
        sub_offsets = offsets[first_session : first_session + count + 1]
        ex = make_examples(
            values[sub_offsets[0] : sub_offsets[-1]],
            sub_offsets - sub_offsets[0],
            config.augment[split],
        )
        parts.append((split, ex, first_session))
        stats[f"{split}_examples"] = len(ex)
        first_session += count
    for split in ("valid", "test"):
        ex = next(e for s, e, _ in parts if s == split)
        stats[f"{split}_cold_targets"] = int(np.count_nonzero(train_count[ex.targets - 1] == 0))
    total = sum(len(ex) for _, ex, _ in parts)
    prefix_values = np.concatenate([ex.values for _, ex, _ in parts]).astype(np.int32)
    lengths = np.concatenate([np.diff(ex.offsets) for _, ex, _ in parts])
    prefix_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    table = pa.table(
        {
            "example_id": pa.array(np.arange(total, dtype=np.int64)),
            "split": pa.array(np.repeat([s for s, _, _ in parts], [len(ex) for _, ex, _ in parts]).astype(str)),
            "session_index": pa.array(np.concatenate([ex.session + first for _, ex, first in parts]).astype(np.int64)),
            "prefix": _list_array(prefix_values, prefix_offsets),
            "target": pa.array(np.concatenate([ex.targets for _, ex, _ in parts]).astype(np.int32)),
        }
    )
    return table, stats


def _items_table(
    raw_items: pd.DataFrame, item_ids: np.ndarray, train_count: np.ndarray
) -> tuple[pa.Table, dict[str, Any]]:
    ids = pd.Index(np.asarray(item_ids, dtype=object).astype(str))
    known = raw_items.assign(item_id=raw_items["item_id"].astype(str)).set_index("item_id")
    known = known.loc[~known.index.duplicated(keep="first")]
    titles = clean_text(known["title"].reindex(ids)) if "title" in known else pd.Series([None] * len(ids))
    columns: dict[str, pa.Array] = {
        "item_index": pa.array(np.arange(1, len(ids) + 1, dtype=np.int32)),
        "item_id": pa.array(ids.to_numpy(dtype=object), type=pa.string()),
        "title": pa.array(titles.to_numpy(dtype=object), type=pa.string()),
        "train_count": pa.array(train_count.astype(np.int64)),
    }
    for extra in [c for c in known.columns if c != "title"]:
        text = known[extra].astype(object).where(known[extra].notna(), None)
        text = text.map(lambda v: v if v is None or isinstance(v, str) else str(v))
        columns[extra] = pa.array(clean_text(text.reindex(ids)).to_numpy(dtype=object), type=pa.string())
    has_title = titles.notna().to_numpy()
    stats = {
        "items_with_title": int(has_title.sum()),
        "items_without_title": int((~has_title).sum()),
        "items_without_title_sample": [str(x) for x in ids[~has_title][:5]],
    }
    return pa.table(columns), stats


def _list_array(values: np.ndarray, offsets: np.ndarray) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values.astype(np.int32)))


def _is_up_to_date(out: Path, parameters: dict[str, Any], inputs: list[dict[str, Any]]) -> bool:
    manifest_path = out / schema.MANIFEST
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    fingerprint = [(i["sha256"], i["bytes"]) for i in inputs]
    try:
        old_fingerprint = [(i["sha256"], i["bytes"]) for i in manifest.get("inputs", [])]
    except (KeyError, TypeError):
        return False
    return (
        manifest.get("format_version") == schema.FORMAT_VERSION
        and manifest.get("parameters") == parameters
        and old_fingerprint == fingerprint
        and all((out / name).is_file() for name in (schema.ITEMS, schema.SESSIONS, schema.EXAMPLES))
    )


def _check_replaceable(out: Path) -> None:
    """Only an earlier prepared dataset (or an empty folder) may be replaced."""
    if out.exists() and not out.is_dir():
        raise DataError("--out exists and is not a folder", path=out)
    if out.is_dir() and any(out.iterdir()) and not (out / schema.MANIFEST).is_file():
        raise DataError(
            "--out is a non-empty folder that is not a prepared dataset; refusing to overwrite it",
            path=out,
        )


def _write_folder(out: Path, tables: dict[str, pa.Table], manifest: dict[str, Any]) -> None:
    """Write everything into a temporary sibling folder, then swap it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    old: Path | None = None
    try:
        os.chmod(tmp, 0o755)  # mkdtemp creates it private; a dataset folder is an ordinary folder
        for name, table in tables.items():
            pq.write_table(table, tmp / name)
        with open(tmp / schema.MANIFEST, "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / "dataset")
        os.replace(tmp, out)
    except BaseException:
        if old is not None and not out.exists():
            os.replace(old / "dataset", out)  # put the previous dataset back
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
