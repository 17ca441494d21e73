"""Cutting interactions into sessions (``--session``), vectorised.

Strategies:

* ``given`` / ``user``: one session per session key — the given session id for sources that have one
  (generic, diginetica, yoochoose), the user for MovieLens and Amazon. Items are ordered by the source's
  order key (position, timeframe or time), ties by file order.
* ``gap``: within a key, ordered by time, a new session starts after more than ``gap_seconds`` of
  inactivity.
* ``clock-bin``: within a key, one session per fixed clock bin ``floor(t / bin_seconds)`` (LLM4SBR's ML-1M
  uses 600 s bins).
* ``day-window``: within a key and a calendar day (UTC), a new session starts when the time since the
  current session's *first* interaction exceeds ``window_seconds``; days with a single interaction are
  dropped (LLM-DMsRec's ML-1M).

Sessions come out in a deterministic order: keys in order of first appearance in the input, and the
sessions of one key chronologically. That order is the ``order`` split's order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from intentrec.data.loaders.base import RawInteractions
from intentrec.errors import DataError

SessionStrategy = Literal["given", "user", "gap", "clock-bin", "day-window"]
SECONDS_PER_DAY = 86_400


@dataclass
class Sessions:
    """Sessions as CSR arrays: session ``s`` holds ``values[offsets[s]:offsets[s+1]]``.

    ``values`` are codes into ``item_vocab`` (original item ids), ``times`` the interaction times
    (seconds, NaN when unknown), ``session_ids`` one text id per session.
    """

    values: np.ndarray  # int64 [V]
    times: np.ndarray  # float64 [V]
    offsets: np.ndarray  # int64 [S + 1]
    session_ids: np.ndarray  # object [S]
    item_vocab: np.ndarray  # object [num codes]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def num_interactions(self) -> int:
        return int(self.offsets[-1])

    def session_of_value(self) -> np.ndarray:
        return np.repeat(np.arange(len(self), dtype=np.int64), self.lengths)

    def end_times(self) -> np.ndarray:
        """Latest interaction time of each session (NaN for sessions without times)."""
        out = np.full(len(self), np.nan)
        nonempty = self.lengths > 0
        if nonempty.any():
            times = np.where(np.isnan(self.times), -np.inf, self.times)
            ends = np.maximum.reduceat(times, self.offsets[:-1][nonempty])
            out[nonempty] = np.where(np.isinf(ends), np.nan, ends)
        return out

    def keep_values(self, keep: np.ndarray) -> Sessions:
        """Drop the interactions where ``keep`` is False; sessions left empty disappear."""
        keep = np.asarray(keep, dtype=bool)
        lengths = np.bincount(self.session_of_value()[keep], minlength=len(self))
        nonempty = lengths > 0
        offsets = np.concatenate([[0], np.cumsum(lengths[nonempty])]).astype(np.int64)
        return Sessions(
            self.values[keep],
            self.times[keep],
            offsets,
            self.session_ids[nonempty],
            self.item_vocab,
        )

    def keep_sessions(self, keep: np.ndarray) -> Sessions:
        keep = np.asarray(keep, dtype=bool)
        return self.keep_values(keep[self.session_of_value()]) if not keep.all() else self

    def reorder(self, order: np.ndarray) -> Sessions:
        """Sessions in the given order (a permutation or a subset of session positions)."""
        order = np.asarray(order, dtype=np.int64)
        lengths = self.lengths[order]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        idx = np.repeat(self.offsets[:-1][order] - offsets[:-1], lengths) + np.arange(offsets[-1])
        return Sessions(self.values[idx], self.times[idx], offsets, self.session_ids[order], self.item_vocab)


def build_sessions(
    raw: RawInteractions,
    strategy: SessionStrategy,
    *,
    gap_seconds: float = 1800.0,
    bin_seconds: float = 600.0,
    window_seconds: float = 300.0,
) -> Sessions:
    events = raw.events
    key_codes, key_names = pd.factorize(events["key"], sort=False)
    item_codes, item_vocab = pd.factorize(events["item"], sort=False)
    time = events["time"].to_numpy(dtype=np.float64)
    order = events["order"].to_numpy(dtype=np.float64)
    rows = np.arange(len(events), dtype=np.int64)
    key_names = np.asarray(key_names, dtype=object)

    if strategy in ("given", "user"):
        perm = np.lexsort((rows, order, key_codes))
        key_sorted = key_codes[perm]
        starts = _changes(key_sorted)
        session_ids = key_names[key_sorted[starts]]
        return _assemble(item_codes, time, perm, starts, session_ids, item_vocab)

    if np.isnan(time).any():
        raise DataError(
            f"session strategy '{strategy}' needs interaction times, but this {raw.source} data "
            "has none; use --session given",
            path=raw.inputs[0] if raw.inputs else None,
        )
    perm = np.lexsort((rows, order, time, key_codes))
    key_sorted, t = key_codes[perm], time[perm]
    if strategy == "gap":
        starts = _changes(key_sorted) | (np.diff(t, prepend=-np.inf) > gap_seconds)
    elif strategy == "clock-bin":
        bins = np.floor(t / bin_seconds)
        starts = _changes(key_sorted) | _changes(bins)
    elif strategy == "day-window":
        day = np.floor(t / SECONDS_PER_DAY)
        group_start = _changes(key_sorted) | _changes(day)
        group = np.cumsum(group_start) - 1
        sizes = np.bincount(group)
        keep = sizes[group] > 1
        perm, key_sorted, t, group = perm[keep], key_sorted[keep], t[keep], group[keep]
        window = _window_rounds(group, t, window_seconds)
        starts = _changes(group) | _changes(window)
    else:
        raise DataError(f"unknown session strategy '{strategy}'")

    # Sessions cut from one key are named "<key>#<n>", n counting that key's sessions from 0.
    session_no = np.cumsum(starts) - 1
    first_of_key = _changes(key_sorted)
    key_first_session = session_no[first_of_key][np.cumsum(first_of_key) - 1]
    within_key = (session_no - key_first_session)[starts]
    names = pd.Series(key_names[key_sorted[starts]], dtype="str")
    session_ids = (names + "#" + pd.Series(within_key).astype(str)).to_numpy(dtype=object)
    return _assemble(item_codes, time, perm, starts, session_ids, item_vocab)


def _changes(values: np.ndarray) -> np.ndarray:
    """True where a sorted run of equal values begins."""
    out = np.ones(len(values), dtype=bool)
    if len(values) > 1:
        out[1:] = values[1:] != values[:-1]
    return out


def _window_rounds(group: np.ndarray, t: np.ndarray, window: float) -> np.ndarray:
    """Window number inside each group (rows sorted by group, then time).

    A window opens at the first interaction not yet assigned and takes every later one within
    ``window`` seconds of that opening time. Each round assigns one window in every group at once.
    """
    label = np.empty(len(t), dtype=np.int64)
    remaining = np.arange(len(t), dtype=np.int64)
    round_no = 0
    while remaining.size:
        g, tr = group[remaining], t[remaining]
        opens = _changes(g)
        opening_time = tr[opens][np.cumsum(opens) - 1]
        inside = tr - opening_time <= window
        label[remaining[inside]] = round_no
        remaining = remaining[~inside]
        round_no += 1
    return label


def _assemble(
    item_codes: np.ndarray,
    time: np.ndarray,
    perm: np.ndarray,
    starts: np.ndarray,
    session_ids: np.ndarray,
    item_vocab: pd.Index,
) -> Sessions:
    offsets = np.concatenate([np.flatnonzero(starts), [len(perm)]]).astype(np.int64)
    return Sessions(
        values=item_codes[perm].astype(np.int64),
        times=time[perm],
        offsets=offsets,
        session_ids=np.asarray(session_ids, dtype=object),
        item_vocab=np.asarray(item_vocab, dtype=object),
    )
