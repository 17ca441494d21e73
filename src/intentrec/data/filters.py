"""Support and length filters on sessions.

Before any pass, sessions with fewer than ``min_raw_session_length`` items can be dropped once (SemSR keeps
only "users with more than 5 reviews": 6, on sources whose sessions are user histories); default 1, off.

One pass = (optionally) drop sessions shorter than L, then handle rare items (fewer than N occurrences,
counting every click), then drop sessions shorter than L. Rare items are handled by

* ``drop-items``: remove their clicks from the sessions (the usual SBR protocol), or
* ``drop-sessions``: remove every session that holds one (LLM4SBR's ML-1M script).

``passes="fixpoint"`` repeats the pass until nothing changes, so that afterwards every item really has
N occurrences and every session L items; ``passes=1`` is what most papers do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from intentrec.data.sessions import Sessions

RareItemPolicy = Literal["drop-items", "drop-sessions"]
FilterPasses = Literal["1", "fixpoint"]

_MAX_PASSES = 10_000


@dataclass
class FilterReport:
    passes_run: int
    sessions_before: int
    sessions_after: int
    interactions_before: int
    interactions_after: int


def filter_sessions(
    sessions: Sessions,
    *,
    min_item_support: int = 5,
    min_session_length: int = 2,
    passes: FilterPasses = "1",
    rare_items: RareItemPolicy = "drop-items",
    drop_short_sessions_first: bool = False,
    min_raw_session_length: int = 1,
) -> tuple[Sessions, FilterReport]:
    before = (len(sessions), sessions.num_interactions)
    if min_raw_session_length > 1:
        sessions = sessions.keep_sessions(sessions.lengths >= min_raw_session_length)
    limit = 1 if passes == "1" else _MAX_PASSES
    runs = 0
    while runs < limit:
        runs += 1
        shape = (len(sessions), sessions.num_interactions)
        sessions = _one_pass(sessions, min_item_support, min_session_length, rare_items, drop_short_sessions_first)
        if (len(sessions), sessions.num_interactions) == shape:
            break
    report = FilterReport(runs, before[0], len(sessions), before[1], sessions.num_interactions)
    return sessions, report


def _one_pass(
    sessions: Sessions,
    min_item_support: int,
    min_session_length: int,
    rare_items: RareItemPolicy,
    drop_short_sessions_first: bool,
) -> Sessions:
    if drop_short_sessions_first:
        sessions = sessions.keep_sessions(sessions.lengths >= min_session_length)
    support = np.bincount(sessions.values, minlength=len(sessions.item_vocab))
    rare = support[sessions.values] < min_item_support
    if rare.any():
        if rare_items == "drop-items":
            sessions = sessions.keep_values(~rare)
        else:
            holds_rare = np.bincount(sessions.session_of_value()[rare], minlength=len(sessions)) > 0
            sessions = sessions.keep_sessions(~holds_rare)
    return sessions.keep_sessions(sessions.lengths >= min_session_length)
