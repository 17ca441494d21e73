import numpy as np
import pytest

from intentrec.evaluation import BUCKETS, popularity_buckets, sliced_metrics


def test_buckets_are_terciles_of_warm_items():
    # warm counts sorted: 1 1 2 3 5 8 13 -> quantiles at positions 2 and 4: 2 and 5
    counts = np.array([0, 1, 1, 2, 3, 5, 8, 0, 13])
    b = popularity_buckets(counts)
    assert (b.tail_max, b.mid_max) == (2, 5)
    names = [BUCKETS[i] for i in b.bucket_of_column]
    assert names == ["cold", "tail", "tail", "tail", "mid", "mid", "head", "cold", "head"]


def test_fractional_quantiles_round_down_consistently():
    counts = np.array([1, 2, 3, 4])  # quantiles 2.0 and 3.0
    assert [BUCKETS[i] for i in popularity_buckets(counts).bucket_of_column] == ["tail", "tail", "mid", "head"]
    counts = np.array([1, 2, 4, 10, 11])  # quantiles 2.67 and 7.33 -> thresholds 2 and 7
    b = popularity_buckets(counts)
    assert (b.tail_max, b.mid_max) == (2, 7)
    assert [BUCKETS[i] for i in b.bucket_of_column] == ["tail", "tail", "mid", "head", "head"]


def test_all_cold_items():
    b = popularity_buckets(np.zeros(3, dtype=np.int64))
    assert [BUCKETS[i] for i in b.bucket_of_column] == ["cold"] * 3


def test_sliced_metrics_split_examples_by_target_bucket():
    counts = np.array([0, 1, 1, 2, 3, 5, 8, 0, 13])  # cold: 0,7  tail: 1,2,3  mid: 4,5  head: 6,8
    targets = np.array([0, 7, 1, 8, 6, 6])
    ranks = np.array([30, 1, 2, 1, 4, 20])
    out = sliced_metrics(ranks, targets, counts, ks=(5,))
    assert {k: v["count"] for k, v in out.items()} == {"cold": 2, "tail": 1, "mid": 0, "head": 3}
    assert {k: v["items"] for k, v in out.items()} == {"cold": 2, "tail": 3, "mid": 2, "head": 2}
    assert out["cold"]["HR@5"] == 0.5
    assert out["tail"]["MRR@5"] == 0.5
    assert out["head"]["HR@5"] == pytest.approx(2 / 3)
    assert out["head"]["MRR@5"] == pytest.approx((1 + 0.25 + 0) / 3)
    assert "HR@5" not in out["mid"]  # empty bucket: counts only
    assert out["head"]["rule"] == ">5 train clicks"
