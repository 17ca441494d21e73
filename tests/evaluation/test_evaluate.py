import numpy as np
import torch
from torch import nn

from intentrec.data.batch import SessionBatch
from intentrec.data.dataset import ExampleSet
from intentrec.evaluation import evaluate_model, rank_examples, ranking_metrics
from intentrec.models.base import Backbone, BackboneConfig, BackboneOutput


class LastItemModel(Backbone):
    def __init__(self, num_items: int):
        super().__init__(num_items, BackboneConfig(embedding_dim=4))
        self.embedding = nn.Embedding(num_items + 1, 4, padding_idx=0)

    def encode(self, batch: SessionBatch) -> BackboneOutput:
        last = self.embed_items(batch.last_items())
        return BackboneOutput(session=last, vectors={"local": last})

    def id_item_table(self) -> torch.Tensor:
        return self.embedding.weight[1:]

    def embed_id_items(self, indices: torch.Tensor) -> torch.Tensor:
        return self.embedding(indices)


def _examples(n: int, num_items: int, seed: int = 0) -> ExampleSet:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 5, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = rng.integers(1, num_items + 1, offsets[-1]).astype(np.int32)
    targets = rng.integers(1, num_items + 1, n).astype(np.int32)
    return ExampleSet("test", np.arange(100, 100 + n), values, offsets, targets)


def test_batched_ranks_equal_whole_matrix_metrics():
    torch.manual_seed(0)
    model = LastItemModel(15)
    examples = _examples(23, 15)
    (full,) = list(examples.batches(1000))
    with torch.no_grad():
        expected = ranking_metrics(model(full), full.targets, ks=(1, 5, 10))
    model.train()
    ranked = rank_examples(model, examples, batch_size=4)
    assert model.training  # mode restored
    assert ranked.example_ids.tolist() == list(range(100, 123))
    assert ranked.target_columns.tolist() == (examples.targets - 1).tolist()
    assert ranked.metrics((1, 5, 10)) == expected
    assert evaluate_model(model, examples, ks=(1, 5, 10), batch_size=7) == expected


class FirstItemModel(LastItemModel):
    def encode(self, batch: SessionBatch) -> BackboneOutput:
        first = self.embedding(batch.items[:, 0])
        return BackboneOutput(session=first, vectors={"local": first})


def test_max_length_is_applied_when_ranking():
    torch.manual_seed(0)
    first = FirstItemModel(15)
    last = LastItemModel(15)
    last.load_state_dict(first.state_dict())
    examples = _examples(30, 15, seed=3)
    # Keeping only the most recent click turns "first item" into "last item".
    truncated = rank_examples(first, examples, max_length=1).ranks
    assert truncated.tolist() == rank_examples(last, examples).ranks.tolist()
    assert truncated.tolist() != rank_examples(first, examples).ranks.tolist()
