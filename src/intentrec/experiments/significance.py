"""Per-example test ranks kept in a record, and paired significance tests between two rows.

A record keeps each test example's target rank, capped at ``max(ks) + 1`` (every metric at a
reported cut-off is the same with the cap), as zlib-compressed little-endian integers in base64,
next to the example ids they belong to. Two rows are compared on the (seed, example) pairs both
have — seeds pooled: the same seed of the method and of its backbone alone, every test example
they both scored is one paired observation.

* ``HR@k``: exact McNemar test (two-sided binomial test on the discordant pairs);
* ``MRR@k``: Wilcoxon signed-rank test on the per-example reciprocal ranks (zero differences dropped).
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from intentrec.errors import IntentrecError

RANKS_KEY = "test_ranks"
_FORMAT = 1


def _pack(values: np.ndarray, dtype: str) -> str:
    return base64.b64encode(zlib.compress(values.astype(dtype).tobytes(), 9)).decode("ascii")


def _unpack(text: str, dtype: str, count: int, what: str) -> np.ndarray:
    try:
        raw = zlib.decompress(base64.b64decode(text.encode("ascii"), validate=True))
    except (ValueError, zlib.error) as exc:
        raise IntentrecError(f"{what}: not valid compressed data ({exc})") from None
    values = np.frombuffer(raw, dtype=dtype)
    if values.size != count:
        raise IntentrecError(f"{what}: holds {values.size} values, the record says {count}")
    return values.astype(np.int64)


def encode_ranks(example_ids: np.ndarray, ranks: np.ndarray, ks: Sequence[int]) -> dict[str, Any]:
    """The record entry for one run's test ranks (1-based), capped at ``max(ks) + 1``."""
    example_ids = np.asarray(example_ids, dtype=np.int64)
    ranks = np.asarray(ranks, dtype=np.int64)
    if example_ids.shape != ranks.shape:
        raise ValueError("example ids and ranks must be aligned")
    cap = int(max(ks)) + 1
    order = np.argsort(example_ids, kind="stable")
    ids, capped = example_ids[order], np.minimum(ranks[order], cap)
    if ids.size and (np.diff(ids) <= 0).any():
        raise ValueError("example ids must be unique")
    deltas = np.diff(ids, prepend=0)  # sorted ids as gaps: mostly 1, so they compress to almost nothing
    return {
        "format": _FORMAT,
        "cap": cap,
        "count": int(ids.size),
        "example_ids": _pack(deltas, "<u4"),
        "ranks": _pack(capped, "<u2" if cap < 2**16 else "<u4"),
    }


@dataclass(frozen=True)
class TestRanks:
    example_ids: np.ndarray  # int64, sorted
    ranks: np.ndarray  # int64, capped at ``cap``
    cap: int


def decode_ranks(entry: dict[str, Any], where: str = "record") -> TestRanks:
    what = f"{where}: {RANKS_KEY}"
    if entry.get("format") != _FORMAT:
        raise IntentrecError(f"{what}: unknown format {entry.get('format')!r} (this version reads {_FORMAT})")
    cap, count = int(entry["cap"]), int(entry["count"])
    ids = np.cumsum(_unpack(entry["example_ids"], "<u4", count, what))
    ranks = _unpack(entry["ranks"], "<u2" if cap < 2**16 else "<u4", count, what)
    return TestRanks(ids, ranks, cap)


def paired_values(
    method: Sequence[dict[str, Any]], baseline: Sequence[dict[str, Any]], k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Per-pair hits and reciprocal ranks at ``k`` of the method and the baseline, seeds pooled.

    ``None`` when no seed has ranks on both sides. Pairs are the examples both runs of a seed scored.
    """
    base_by_seed = {r["seed"]: r for r in baseline if RANKS_KEY in r}
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    for rec in method:
        base = base_by_seed.get(rec["seed"])
        if RANKS_KEY not in rec or base is None:
            continue
        a, b = decode_ranks(rec[RANKS_KEY], rec["run_id"]), decode_ranks(base[RANKS_KEY], base["run_id"])
        if k >= min(a.cap, b.cap):
            return None
        _, ia, ib = np.intersect1d(a.example_ids, b.example_ids, assume_unique=True, return_indices=True)
        parts.append((a.ranks[ia], b.ranks[ib]))
    if not parts:
        return None
    ra = np.concatenate([p[0] for p in parts]).astype(np.float64)
    rb = np.concatenate([p[1] for p in parts]).astype(np.float64)
    hit_a, hit_b = ra <= k, rb <= k
    rr_a, rr_b = np.where(hit_a, 1.0 / ra, 0.0), np.where(hit_b, 1.0 / rb, 0.0)
    return hit_a, hit_b, rr_a, rr_b


@dataclass(frozen=True)
class PairedTest:
    pairs: int
    p_hr: float
    p_mrr: float


def paired_test(method: Sequence[dict[str, Any]], baseline: Sequence[dict[str, Any]], k: int) -> PairedTest | None:
    """McNemar (HR@k) and Wilcoxon signed-rank (MRR@k) p-values of a method row against its baseline."""
    from scipy.stats import binomtest, wilcoxon

    values = paired_values(method, baseline, k)
    if values is None:
        return None
    hit_a, hit_b, rr_a, rr_b = values
    only_a, only_b = int((hit_a & ~hit_b).sum()), int((hit_b & ~hit_a).sum())
    p_hr = 1.0 if only_a + only_b == 0 else float(binomtest(only_a, only_a + only_b, 0.5).pvalue)
    diff = rr_a - rr_b
    diff = diff[diff != 0]  # zero differences dropped before the test (Wilcoxon's own treatment)
    p_mrr = 1.0 if diff.size == 0 else float(wilcoxon(diff).pvalue)
    return PairedTest(pairs=int(hit_a.size), p_hr=p_hr, p_mrr=p_mrr)


def format_p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"
