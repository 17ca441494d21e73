import numpy as np
import torch

from intentrec.data.batch import SessionBatch, pad_csr
from intentrec.data.dataset import ExampleSet


def _example_set():
    prefixes = [[3, 1], [2], [5, 4, 3, 2]]
    values = np.array([i for p in prefixes for i in p], dtype=np.int32)
    offsets = np.array([0, 2, 3, 7], dtype=np.int64)
    return ExampleSet("train", np.array([10, 11, 12]), values, offsets, np.array([4, 5, 1], np.int32))


def test_pad_csr_right_pads_and_converts_targets_to_columns():
    es = _example_set()
    batch = pad_csr(es.values, es.offsets, np.array([0, 1, 2]), es.example_ids, es.targets)
    assert batch.items.tolist() == [[3, 1, 0, 0], [2, 0, 0, 0], [5, 4, 3, 2]]
    assert batch.lengths.tolist() == [2, 1, 4]
    assert batch.targets.tolist() == [3, 4, 0]  # item index - 1
    assert batch.example_ids.tolist() == [10, 11, 12]
    assert batch.last_items().tolist() == [1, 2, 2]
    assert batch.mask.sum().item() == 7


def test_max_length_keeps_most_recent_items():
    es = _example_set()
    batch = pad_csr(es.values, es.offsets, np.array([2, 0]), es.example_ids, es.targets, max_length=2)
    assert batch.items.tolist() == [[3, 2], [3, 1]]
    assert batch.lengths.tolist() == [2, 2]


def test_batches_cover_every_example_once_and_shuffle_is_seeded():
    es = _example_set()
    ids = [i for b in es.batches(2, shuffle=True, seed=1) for i in b.example_ids.tolist()]
    again = [i for b in es.batches(2, shuffle=True, seed=1) for i in b.example_ids.tolist()]
    assert sorted(ids) == [10, 11, 12] and ids == again
    assert es.num_batches(2) == 2


def test_subset_keeps_prefixes_aligned():
    es = _example_set()
    sub = es.subset(np.array([2, 0]))
    assert sub.example_ids.tolist() == [12, 10]
    assert sub.prefix(0).tolist() == [5, 4, 3, 2] and sub.prefix(1).tolist() == [3, 1]
    assert sub.targets.tolist() == [1, 4]


def test_from_lists_roundtrip():
    b = SessionBatch.from_lists([[1, 2], [3]], targets=[2, 1])
    assert b.items.dtype == torch.long and b.targets.tolist() == [1, 0]
