import math

import numpy as np
import pytest
import torch

from intentrec.evaluation import metrics_from_ranks, ranking_metrics, target_ranks


def test_rank_counts_items_scoring_at_least_the_target():
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.9]])
    assert target_ranks(scores, torch.tensor([2])).tolist() == [3]  # 0.5 and 0.9 beat 0.3
    assert target_ranks(scores, torch.tensor([3])).tolist() == [1]


def test_hand_computed_values_for_one_example():
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.9]])
    m = ranking_metrics(scores, torch.tensor([2]), ks=(2, 3))  # rank 3
    assert m["HR@2"] == 0.0 and m["MRR@2"] == 0.0 and m["NDCG@2"] == 0.0
    assert m["HR@3"] == 1.0
    assert m["MRR@3"] == pytest.approx(1 / 3)
    assert m["NDCG@3"] == pytest.approx(0.5)  # 1/log2(4)


def test_ties_count_against_the_target():
    scores = torch.ones(1, 5)
    assert target_ranks(scores, torch.tensor([0])).tolist() == [5]
    scores = torch.tensor([[0.2, 0.7, 0.7, 0.1]])
    assert target_ranks(scores, torch.tensor([1])).tolist() == [2]
    assert ranking_metrics(scores, torch.tensor([1]), ks=(1,))["HR@1"] == 0.0


def test_k_boundary_rank_equal_to_k_is_a_hit():
    m = metrics_from_ranks(np.array([5, 6]), ks=(5,))
    assert m["HR@5"] == 0.5
    assert m["MRR@5"] == pytest.approx(0.2 / 2)
    assert m["NDCG@5"] == pytest.approx(1 / math.log2(6) / 2)


def test_ndcg_at_rank_two_is_one_over_log2_three():
    m = metrics_from_ranks(torch.tensor([2]), ks=(10,))
    assert m["NDCG@10"] == pytest.approx(1 / math.log2(3))
    assert m["MRR@10"] == pytest.approx(0.5)


def test_means_are_over_all_examples_including_misses():
    m = metrics_from_ranks(np.array([1, 2, 5]), ks=(2,))
    assert m["HR@2"] == pytest.approx(2 / 3)
    assert m["MRR@2"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert m["NDCG@2"] == pytest.approx((1 + 1 / math.log2(3)) / 3)


def test_all_misses_give_zero():
    m = metrics_from_ranks(np.array([50, 21, 100]), ks=(5, 10, 20))
    assert set(m.values()) == {0.0}
    assert list(m) == [f"{n}@{k}" for n in ("HR", "MRR", "NDCG") for k in (5, 10, 20)]


def test_nan_never_helps_the_target():
    scores = torch.tensor([[0.5, float("nan"), 0.1]])
    assert target_ranks(scores, torch.tensor([0])).tolist() == [2]  # the NaN competitor counts
    assert target_ranks(scores, torch.tensor([1])).tolist() == [3]  # a NaN target ranks last
    assert target_ranks(torch.full((1, 4), float("nan")), torch.tensor([2])).tolist() == [4]


def test_vectorised_ranks_match_a_per_row_loop():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (40, 12), generator=gen).float()  # many ties on purpose
    targets = torch.randint(0, 12, (40,), generator=gen)
    expected = [int((row >= row[t]).sum()) for row, t in zip(scores, targets, strict=True)]
    assert target_ranks(scores, targets).tolist() == expected


def test_invalid_inputs_are_rejected():
    with pytest.raises(ValueError):
        metrics_from_ranks(np.array([], dtype=np.int64))
    with pytest.raises(ValueError):
        metrics_from_ranks(np.array([0, 1]))
    with pytest.raises(ValueError):
        target_ranks(torch.ones(3), torch.tensor([0]))
