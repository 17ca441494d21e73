"""Train / valid / test assignment of whole sessions (``--split``).

First the sessions are put in *split order*:

* ``order``: the order sessions are built in (keys by first appearance in the input, then time);
* ``time``: by session end time (latest interaction), ties in build order;
* ``random``: a permutation seeded with ``seed``.

The last ``n − int((1 − test_fraction)·n)`` sessions of that order are ``test`` (with ``test_days``
and ``time``: the sessions ending within ``test_days`` days of the latest end time). Validation is
carved from the end of the remaining train sessions the same way: the last
``int(valid_fraction · n_train)`` become ``valid``. A session is in exactly one split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from intentrec.data.sessions import SECONDS_PER_DAY, Sessions
from intentrec.errors import ConfigError, DataError

SplitMethod = Literal["order", "time", "random"]


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
    if method == "order":
        return np.arange(n, dtype=np.int64)
    if method == "random":
        return np.random.default_rng(seed).permutation(n).astype(np.int64)
    if method == "time":
        ends = sessions.end_times()
        if np.isnan(ends).any():
            raise DataError("--split time needs interaction times, but this data has none; use --split order")
        return np.argsort(ends, kind="stable").astype(np.int64)
    raise ConfigError(f"unknown split method '{method}' (known: order, time, random)")


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
