"""Turning sessions into (prefix → target) examples (``--augment``), vectorised.

* ``prefix``: ``[i1..ik] → i(k+1)`` for every k ≥ 1 (a session of length L gives L − 1 examples);
* ``last``: one example per session, all items but the last → the last.

Sessions shorter than 2 give no example. Examples come in session order, then by prefix length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

AugmentMode = Literal["prefix", "last"]


@dataclass
class Examples:
    """Examples as CSR prefixes: example ``e`` has prefix ``values[offsets[e]:offsets[e+1]]``."""

    values: np.ndarray  # int64, same codes as the input sessions
    offsets: np.ndarray  # int64 [E + 1]
    targets: np.ndarray  # int64 [E]
    session: np.ndarray  # int64 [E], position of the source session

    def __len__(self) -> int:
        return len(self.targets)


def make_examples(values: np.ndarray, offsets: np.ndarray, mode: AugmentMode) -> Examples:
    lengths = np.diff(offsets)
    n_sessions = len(lengths)
    if mode == "prefix":
        per_session = np.clip(lengths - 1, 0, None)
        session = np.repeat(np.arange(n_sessions, dtype=np.int64), per_session)
        first_example = (np.cumsum(per_session) - per_session).astype(np.int64)
        prefix_len = np.arange(len(session), dtype=np.int64) - np.repeat(first_example, per_session) + 1
    elif mode == "last":
        session = np.flatnonzero(lengths >= 2).astype(np.int64)
        prefix_len = lengths[session] - 1
    else:
        raise ValueError(f"unknown augmentation '{mode}' (known: prefix, last)")
    starts = offsets[:-1][session]
    targets = values[starts + prefix_len]
    prefix_offsets = np.concatenate([[0], np.cumsum(prefix_len)]).astype(np.int64)
    within = np.arange(prefix_offsets[-1], dtype=np.int64) - np.repeat(prefix_offsets[:-1], prefix_len)
    prefix_values = values[np.repeat(starts, prefix_len) + within]
    return Examples(prefix_values, prefix_offsets, targets, session)
