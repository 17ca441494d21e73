"""The re-rank stage: HR@K is the first model's by construction, the order inside each list is the
second model's, ties count against the target."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from intentrec.data.dataset import ExampleSet
from intentrec.evaluation.metrics import metrics_from_ranks, target_ranks
from intentrec.evaluation.rerank import reranked_metrics, reranked_ranks
from intentrec.models.base import SessionModel


class FixedScores(SessionModel):
    """Scores ``table[example_id]`` for every example: a hand-written ranking."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table)
        self.num_items = table.shape[1]

    def forward(self, batch):
        return self.table[batch.example_ids]


def _examples(targets: list[int], n_items: int) -> ExampleSet:
    n = len(targets)
    offsets = np.arange(n + 1, dtype=np.int64)
    values = np.ones(n, dtype=np.int32)
    return ExampleSet("test", np.arange(n), values, offsets, np.asarray(targets, dtype=np.int32))


def test_hit_rate_is_kept_and_the_order_moves():
    # item columns 0..5; targets (as item indices) 3 and 6 -> columns 2 and 5
    first = FixedScores(torch.tensor([[6.0, 5.0, 4.0, 3.0, 2.0, 1.0], [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]]))
    second = FixedScores(torch.tensor([[0.0, 0.0, 9.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 9.0]]))
    examples = _examples([3, 6], 6)
    ranks = reranked_ranks(first, second, examples, [2, 3, 6])
    # K=2: the target of example 0 (first rank 3) is not in the list; K=3: second puts it first
    assert ranks[2].tolist() == [3, 3] and ranks[3].tolist() == [1, 4] and ranks[6].tolist() == [1, 1]
    metrics = reranked_metrics(ranks)
    before = metrics_from_ranks(target_ranks(first.table, torch.tensor([2, 5])), [2, 3, 6])
    for k in (2, 3, 6):
        assert metrics[f"HR@{k}"] == before[f"HR@{k}"]
    assert metrics["MRR@3"] == pytest.approx(0.5) and before["MRR@3"] == pytest.approx(1 / 6)


def test_ties_in_the_second_model_count_against_the_target():
    first = FixedScores(torch.tensor([[3.0, 2.0, 1.0]]))
    constant = FixedScores(torch.zeros(1, 3))
    ranks = reranked_ranks(first, constant, _examples([1], 3), [3])
    assert ranks[3].tolist() == [3]  # a constant re-ranker puts the target last, never lucky
