"""Exact full-ranking evaluation (HR/MRR/NDCG@k over all items) and popularity slices."""

from intentrec.evaluation.evaluate import RankedExamples, evaluate_model, rank_examples
from intentrec.evaluation.metrics import (
    DEFAULT_KS,
    metric_keys,
    metrics_from_ranks,
    ranking_metrics,
    target_ranks,
)
from intentrec.evaluation.slices import BUCKETS, popularity_buckets, sliced_metrics

__all__ = [
    "BUCKETS",
    "DEFAULT_KS",
    "RankedExamples",
    "evaluate_model",
    "metric_keys",
    "metrics_from_ranks",
    "popularity_buckets",
    "rank_examples",
    "ranking_metrics",
    "sliced_metrics",
    "target_ranks",
]
