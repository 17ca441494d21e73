"""Metrics per target-popularity bucket.

Each target item falls into one bucket by its number of clicks in the *train* split:

``cold``
    never clicked in train (count 0);
``tail`` / ``mid`` / ``head``
    terciles of the non-cold items *by item*: with ``t1`` and ``t2`` the 1/3 and 2/3 quantiles
    (numpy "linear" interpolation) of the train counts of the non-cold items, an item is ``tail`` if
    its count is ``<= t1``, ``mid`` if ``<= t2`` and ``head`` otherwise (counts are integers, so the
    thresholds are reported rounded down). Ties at a threshold go to the lower bucket, so on
    long-tailed data the tail bucket can hold more than a third of the items.

Metrics of a bucket are averaged over the examples whose target is in that bucket; every bucket
reports its number of examples (``count``) and of items (``items``). Empty buckets report only counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from intentrec.evaluation.metrics import DEFAULT_KS, metrics_from_ranks

BUCKETS: tuple[str, ...] = ("cold", "tail", "mid", "head")


@dataclass(frozen=True)
class PopularityBuckets:
    bucket_of_column: np.ndarray  # int8 [num_items], index into BUCKETS
    tail_max: int  # floor(t1): inclusive upper bound of tail
    mid_max: int  # floor(t2): inclusive upper bound of mid

    def describe(self) -> dict[str, str]:
        return {
            "cold": "0 train clicks",
            "tail": f"1-{self.tail_max} train clicks",
            "mid": (
                f"{self.tail_max + 1}-{self.mid_max} train clicks"
                if self.mid_max > self.tail_max
                else "none (the tercile thresholds coincide)"
            ),
            "head": f">{self.mid_max} train clicks",
        }


def popularity_buckets(train_counts: np.ndarray) -> PopularityBuckets:
    counts = np.asarray(train_counts, dtype=np.int64)
    warm = counts[counts > 0]
    if warm.size:
        tail_max, mid_max = (int(np.floor(q)) for q in np.quantile(warm, [1 / 3, 2 / 3]))
    else:
        tail_max = mid_max = 0
    bucket = np.full(counts.shape, BUCKETS.index("head"), dtype=np.int8)
    bucket[counts <= mid_max] = BUCKETS.index("mid")
    bucket[counts <= tail_max] = BUCKETS.index("tail")
    bucket[counts == 0] = BUCKETS.index("cold")
    return PopularityBuckets(bucket, tail_max, mid_max)


def sliced_metrics(
    ranks: np.ndarray,
    target_columns: np.ndarray,
    train_counts: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, dict[str, float | int | str]]:
    """``{bucket: {"count": examples, "items": items, "rule": ..., "HR@5": ..., ...}}``."""
    buckets = popularity_buckets(train_counts)
    example_bucket = buckets.bucket_of_column[np.asarray(target_columns, dtype=np.int64)]
    item_totals = np.bincount(buckets.bucket_of_column, minlength=len(BUCKETS))
    rules = buckets.describe()
    ranks = np.asarray(ranks)
    out: dict[str, dict[str, float | int | str]] = {}
    for b, name in enumerate(BUCKETS):
        selected = ranks[example_bucket == b]
        row: dict[str, float | int | str] = {
            "count": int(selected.size),
            "items": int(item_totals[b]),
            "rule": rules[name],
        }
        if selected.size:
            row.update(metrics_from_ranks(selected, ks))
        out[name] = row
    return out
