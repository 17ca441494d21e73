"""Named protocols (``--protocol``) that reproduce the papers' data preparation.

A preset only sets parameter values; explicit CLI flags / keyword arguments override them. Their
statistics on the shared data are documented in ``docs/data.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from intentrec.data.loaders import LOADERS, sources
from intentrec.errors import ConfigError, DataError
from intentrec.paths import data_root

#: LLMGR (Guo et al., "Integrating Large Language Models with Graphical Session-Based Recommendation",
#: arXiv 2402.16539): Amazon 5-core, one sequence per user, leave-one-out; the model reads item titles.
_LLMGR = {
    "session": "given",
    "min_item_support": 5,
    "min_session_length": 2,
    "filter_passes": "1",
    "rare_items": "drop-items",
    "split": "leave-one-out",
    "augment": "train=prefix,test=last",
}


@dataclass(frozen=True)
class Preset:
    name: str
    source: str
    summary: str
    params: dict[str, Any] = field(default_factory=dict)
    #: files PATH must hold, one entry per file: its accepted names, the upstream one first; checked before
    #: reading, so a missing item file (titles) is an error, not a "no titles" note
    requires: tuple[tuple[str, ...], ...] = ()
    #: the official download of those files (or of the data they are derived from): a loader's ``Download.key``
    download: str | None = None


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            "llm4sbr-beauty",
            "generic",
            "LLM4SBR Beauty: sessions as given (reviewer histories ordered by position), items < 5 "
            "and sessions < 2 dropped (one pass), first 90% of sessions in file order train, prefix "
            "examples everywhere, last 10% of train sessions valid.",
            {
                "session": "given",
                "min_item_support": 5,
                "min_session_length": 2,
                "filter_passes": "1",
                "rare_items": "drop-items",
                "split": "order",
                "test_fraction": 0.1,
                "valid_fraction": 0.1,
                "augment": "prefix",
            },
        ),
        Preset(
            "llm4sbr-ml1m",
            "movielens",
            "LLM4SBR ML-1M: sessions = (user, 10-minute clock bin); sessions holding an item with < 5 "
            "ratings dropped whole, then sessions < 2; 90/10 in build order (user, then time); one "
            "example per session (last item).",
            {
                "session": "clock-bin",
                "bin_seconds": 600,
                "min_item_support": 5,
                "min_session_length": 2,
                "filter_passes": "1",
                "rare_items": "drop-sessions",
                "split": "order",
                "test_fraction": 0.1,
                "valid_fraction": 0.1,
                "augment": "last",
            },
        ),
        Preset(
            "dmsrec-ml1m",
            "movielens",
            "LLM-DMsRec ML-1M: per user and UTC day, a new session when more than 300 s passed since "
            "the session's first rating; single-rating days dropped; items < 5 and sessions < 2 "
            "dropped; 90/10 by session end time; one example per session (last item).",
            {
                "session": "day-window",
                "window_seconds": 300,
                "min_item_support": 5,
                "min_session_length": 2,
                "filter_passes": "1",
                "rare_items": "drop-items",
                "split": "time",
                "test_fraction": 0.1,
                "valid_fraction": 0.1,
                "augment": "last",
            },
        ),
        Preset(
            "srgnn-diginetica",
            "diginetica",
            "SR-GNN Diginetica: sessions by session_id ordered by timeframe; sessions of length 1 "
            "dropped, then items < 5 clicks, then sessions < 2 (one pass); sessions ending in the "
            "last 7 days (by event date) are test; prefix examples.",
            {
                "session": "given",
                "min_item_support": 5,
                "min_session_length": 2,
                "filter_passes": "1",
                "rare_items": "drop-items",
                "drop_short_sessions_first": True,
                "split": "time",
                "test_days": 7,
                "valid_fraction": 0.1,
                "augment": "prefix",
            },
        ),
        Preset(
            "semsr-beauty",
            "generic",
            "SemSR Beauty: one session per reviewer (ordered by position); reviewers with more than 5 "
            "reviews kept, then items < 5 and sessions < 2 dropped (one pass); 80/10/10 random split "
            "of the reviewers (seed 0); prefix examples everywhere.",
            {
                "session": "given",
                "min_raw_session_length": 6,
                "min_item_support": 5,
                "min_session_length": 2,
                "filter_passes": "1",
                "rare_items": "drop-items",
                "split": "random",
                "seed": 0,
                "test_fraction": 0.1,
                "valid_fraction": 1 / 9,  # of the 90% left after test: 10% of all sessions
                "augment": "prefix",
            },
        ),
        Preset(
            "llmgr-beauty",
            "generic",
            "LLMGR Beauty: one sequence per reviewer (ordered by position, titles from items.csv); items < 5 "
            "and sessions < 2 dropped (one pass; nothing on the 5-core); leave-one-out per reviewer: last "
            "item test, second-to-last valid, prefixes before train; reviewers with < 3 items dropped.",
            _LLMGR,
            requires=(
                ("interactions.csv", "interactions.parquet", "interactions.csv.gz"),
                ("items.csv", "items.parquet", "items.csv.gz"),
            ),
            download="amazon-2014",
        ),
        Preset(
            "llmgr-music",
            "amazon",
            "LLMGR Music: Amazon 2014 Digital Music 5-core (reviews_Digital_Music_5.json + meta_Digital_Music.json "
            "for titles); one sequence per reviewer by review time; filters and leave-one-out as llmgr-beauty.",
            {**_LLMGR, "session": "user"},
            requires=(
                ("reviews_Digital_Music_5.json.gz", "reviews_Digital_Music_5.json"),
                ("meta_Digital_Music.json.gz", "meta_Digital_Music.json"),
            ),
            download="amazon-2014",
        ),
        Preset(
            "llmgr-pantry",
            "amazon",
            "LLMGR Pantry: Amazon 2018 Prime Pantry 5-core (Prime_Pantry_5.json + meta_Prime_Pantry.json for "
            "titles); one sequence per reviewer by review time; filters and leave-one-out as llmgr-beauty.",
            {**_LLMGR, "session": "user"},
            requires=(
                ("Prime_Pantry_5.json.gz", "Prime_Pantry_5.json"),
                ("meta_Prime_Pantry.json.gz", "meta_Prime_Pantry.json"),
            ),
            download="amazon-2018",
        ),
        Preset(
            "semsr-m2",
            "amazon-m2",
            "SemSR Amazon-M2 (UK): UK sessions only (one per row); items < 5 and sessions < 2 dropped "
            "(one pass); 80/10/10 random split of the sessions (seed 0); prefix examples everywhere.",
            {
                "locale": "UK",
                "session": "given",
                "min_item_support": 5,
                "min_session_length": 2,
                "filter_passes": "1",
                "rare_items": "drop-items",
                "split": "random",
                "seed": 0,
                "test_fraction": 0.1,
                "valid_fraction": 1 / 9,
                "augment": "prefix",
            },
        ),
    ]
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown protocol '{name}' (known: {', '.join(PRESETS)})") from None


def check_required_inputs(preset: Preset, path: Path) -> None:
    """A DataError naming the files of ``preset.requires`` missing at ``path`` (a folder or one of the
    files), and where they are officially published."""
    folder = path.parent if path.is_file() else path
    missing = [names for names in preset.requires if not any((folder / n).is_file() for n in names)]
    if not missing:
        return
    wanted = " and ".join(" or ".join(names) for names in preset.requires)
    lines = [
        f"protocol '{preset.name}' reads {wanted}; not found in {folder}: "
        + ", ".join(" or ".join(names) for names in missing)
    ]
    for name in sources():
        for entry in LOADERS.get(name).downloads:
            if entry.key != preset.download:
                continue
            if name == preset.source:
                target = folder if folder.exists() or folder.is_absolute() else data_root() / folder
                files = " and ".join(names[0] for names in preset.requires)
                lines.append(
                    f"  official download ({entry.key}): open {entry.page} ({entry.how}); put {files} into "
                    f"{target}/ and run: intentrec prepare {preset.source} {target} --protocol {preset.name} --out DIR"
                )
            else:
                lines.append(
                    f"  these files are derived from {entry.key} data ({entry.page}); see docs/data.md, "
                    f"protocol {preset.name}"
                )
    raise DataError("\n".join(lines))
