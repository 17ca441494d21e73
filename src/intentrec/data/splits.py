"""Train / valid / test assignment of whole sessions (``--split``).

First the sessions are put in *split order*:

* ``order``: the order sessions are built in (keys by first appearance in the input, then time);
* ``time``: by session end time (latest interaction), ties in build order;
* ``random``: a permutation seeded with ``seed``.

The last ``n − int((1 − test_fraction)·n)`` sessions of that order are ``test`` (with ``test_days``
and ``time``: the sessions ending within ``test_days`` days of the latest end time). Validation is
carved from the end of the remaining train sessions the same way: the last
``int(valid_fraction · n_train)`` become ``valid``. A session is in exactly one split.

``leave-one-out`` (:func:`leave_one_out`) splits inside each session instead (LLMGR, SASRec): the
last item is the test target, the second-to-last the valid target, the items before are train.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from intentrec.config import Config
from intentrec.data.sessions import SECONDS_PER_DAY, Sessions
from intentrec.errors import ConfigError, DataError

SplitMethod = Literal["order", "time", "random", "leave-one-out"]


@dataclass(frozen=True)
class SplitSizes:
    train: int
    valid: int
    test: int

    def labels(self) -> np.ndarray:
        return np.repeat(np.array(["train", "valid", "test"], dtype=object), [self.train, self.valid, self.test])


def split_order(sessions: Sessions, method: SplitMethod, *, seed: int = 0) -> np.ndarray:
    """Positions of the sessions in split order."""
    n = len(sessions)
    if method in ("order", "leave-one-out"):
        return np.arange(n, dtype=np.int64)
    if method == "random":
        return np.random.default_rng(seed).permutation(n).astype(np.int64)
    if method == "time":
        ends = sessions.end_times()
        if np.isnan(ends).any():
            raise DataError("--split time needs interaction times, but this data has none; use --split order")
        return np.argsort(ends, kind="stable").astype(np.int64)
    raise ConfigError(f"unknown split method '{method}' (known: order, time, random, leave-one-out)")


def split_sizes(
    n: int,
    *,
    test_fraction: float,
    valid_fraction: float,
    end_times: np.ndarray | None = None,
    test_days: float | None = None,
) -> SplitSizes:
    """Sizes of train/valid/test for ``n`` sessions already in split order.

    ``end_times`` (in split order, ascending) is needed only with ``test_days``.
    """
    if test_days is not None:
        if end_times is None:
            raise ConfigError("test_days needs --split time")
        cutoff = np.max(end_times) - test_days * SECONDS_PER_DAY if n else 0.0
        n_test = int(np.count_nonzero(end_times > cutoff))
        n_train_all = n - n_test
    else:
        n_train_all = int((1.0 - test_fraction) * n)
        n_test = n - n_train_all
    n_valid = int(valid_fraction * n_train_all)
    return SplitSizes(n_train_all - n_valid, n_valid, n_test)


class LeaveOneOutConfig(Config):
    """Options of ``split='leave-one-out'`` (``--leave-one-out valid=false,short_sessions=train``)."""

    #: hold out the second-to-last item as the valid target; False: no valid split, only the last is held out
    valid: bool = True
    #: sessions too short to give every split (fewer than ``min_length`` items): ``drop`` them, or keep
    #: them whole in ``train`` (SASRec's data_partition)
    short_sessions: Literal["drop", "train"] = "drop"

    @property
    def min_length(self) -> int:
        """Items a session needs for a train prefix and each held-out target: 3 (2 without valid)."""
        return 3 if self.valid else 2


def leave_one_out(sessions: Sessions, config: LeaveOneOutConfig) -> tuple[Sessions, SplitSizes]:
    """Every session of ``sessions`` (in split order) cut into a train, a valid and a test session.

    For a session ``[i1 … iL]`` with L ≥ ``config.min_length``: train holds ``[i1 … i(L−2)]``, valid
    ``[i1 … i(L−1)]`` and test the whole session, so no train example reaches a held-out position, and
    the valid / test examples (their ``last`` examples) are ``[i1 … i(L−2)] → i(L−1)`` and
    ``[i1 … i(L−1)] → iL``. Without valid, train holds ``[i1 … i(L−1)]``. Shorter sessions are left out
    (``short_sessions='drop'``) or kept whole in train only (``'train'``). The result holds the train
    block, then valid, then test, each in the given order; sessions keep their ids.
    """
    lengths = sessions.lengths
    held_out = 2 if config.valid else 1
    full = lengths >= config.min_length
    rows_full = np.flatnonzero(full)
    rows_train = rows_full if config.short_sessions == "drop" else np.arange(len(sessions))
    blocks = [(rows_train, np.where(full, lengths - held_out, lengths)[rows_train])]
    if config.valid:
        blocks.append((rows_full, lengths[rows_full] - 1))
    blocks.append((rows_full, lengths[rows_full]))
    rows = np.concatenate([r for r, _ in blocks]).astype(np.int64)
    keep = np.concatenate([k for _, k in blocks]).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(keep)]).astype(np.int64)
    idx = np.repeat(sessions.offsets[:-1][rows] - offsets[:-1], keep) + np.arange(offsets[-1])
    cut = Sessions(sessions.values[idx], sessions.times[idx], offsets, sessions.session_ids[rows], sessions.item_vocab)
    return cut, SplitSizes(len(rows_train), len(rows_full) if config.valid else 0, len(rows_full))
