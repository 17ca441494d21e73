"""Named protocols (``--protocol``) that reproduce the papers' data preparation.

A preset only sets parameter values; explicit CLI flags / keyword arguments override them. Their
statistics on the shared data are documented in ``docs/data.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from intentrec.errors import ConfigError


@dataclass(frozen=True)
class Preset:
    name: str
    source: str
    summary: str
    params: dict[str, Any] = field(default_factory=dict)


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
