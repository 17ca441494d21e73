"""The contract every registered method keeps over every registered backbone.

Text features are synthetic here (random unit vectors per example id); the real sources are tested
in the per-method files. Parametrised over both registries, so a new method or backbone runs these
checks as soon as it registers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from intentrec.errors import DataError
from intentrec.models.methods import METHODS, FeatureTable
from intentrec.models.registry import BACKBONES
from tests.helpers.models import batch, build, synthetic_tables
from tests.helpers.tiny_dataset import write_tiny_dataset

PAIRS = [(m, b) for m in METHODS.names() for b in BACKBONES.names()]


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny_dataset"))


def make(method_name: str, backbone_name: str, dataset, seed: int = 0):
    return build(f"{method_name}({backbone_name})", dataset, seed)


@pytest.mark.parametrize("method_name,backbone_name", PAIRS)
def test_shapes_scores_and_finite_loss(method_name, backbone_name, tiny_dataset):
    method = make(method_name, backbone_name, tiny_dataset)
    b = batch()
    for training in (True, False):
        method.train(training)
        out = method.encode(b)
        assert out.session.shape == (b.size, method.dim)
        scores = method(b)
        assert scores.shape == (b.size, tiny_dataset.num_items)
        assert torch.isfinite(scores).all()
    method.train()
    loss = method.loss(b)
    assert loss.ndim == 0 and torch.isfinite(loss)


@pytest.mark.parametrize("method_name,backbone_name", PAIRS)
def test_gradients_reach_the_method_and_the_vectors_it_reads(method_name, backbone_name, tiny_dataset):
    method = make(method_name, backbone_name, tiny_dataset)
    method.train()
    b = batch()
    # Backbone parameters that produce the vectors a method reads (local, global) must learn through it;
    # the backbone's own final combination may be bypassed by the method's fusion.
    out = method.backbone.encode(b)
    vectors = torch.stack([out.vectors["local"], out.vectors["global"]])
    if vectors.requires_grad:  # a backbone with nothing to train (fixed item vectors) feeds no parameter
        vectors.sum().backward()
    feeding = {n for n, p in method.backbone.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    method.zero_grad(set_to_none=True)
    method.loss(b).backward()
    grads = {n: p.grad for n, p in method.named_parameters()}
    trainable = {n for n, p in method.named_parameters() if p.requires_grad}  # frozen LM weights get none
    missing = [
        n for n in trainable if not n.startswith("backbone.") and (grads[n] is None or not torch.any(grads[n] != 0))
    ]
    assert not missing, f"no gradient reaches method parameters {missing}"
    starved = [n for n in feeding if grads["backbone." + n] is None or not torch.any(grads["backbone." + n] != 0)]
    assert not starved, f"backbone parameters behind local/global get no gradient: {starved}"


@pytest.mark.parametrize("method_name", METHODS.names())
def test_features_are_looked_up_by_example_id(method_name, tiny_dataset):
    method = make(method_name, "srgnn", tiny_dataset)
    if not method.feature_names():
        pytest.skip(f"{method_name} reads no per-example features")
    name = method.feature_names()[0]
    table = method.features[name]
    ids = torch.tensor([5, 0, 63])
    got = method.feature(name, ids)
    expected = torch.from_numpy(table.vectors[[5, 0, 63]].astype(np.float16).astype(np.float32))
    torch.testing.assert_close(got, expected)
    # an id the table does not hold reads as zeros (and coverage says so)
    assert torch.all(method.feature(name, torch.tensor([1000])) == 0)
    assert method.covered(np.array([5, 1000])).tolist() == [True, False]


@pytest.mark.parametrize("method_name", METHODS.names())
def test_missing_features_are_refused_unless_restricted(method_name, tiny_dataset):
    method = make(method_name, "srgnn", tiny_dataset)
    if not method.feature_names():
        pytest.skip(f"{method_name} reads no per-example features")
    examples = tiny_dataset.examples("train")
    ids = examples.example_ids
    present = np.ones(len(ids), bool)
    present[::3] = False
    method.attach(synthetic_tables(method, ids=ids, present=present))
    with pytest.raises(DataError, match="have no text features"):
        method.select_examples(examples)
    method.config.restrict_to_covered = True
    kept = method.select_examples(examples)
    assert kept.example_ids.tolist() == ids[present].tolist()


@pytest.mark.parametrize("method_name", METHODS.names())
def test_integer_feature_tables_keep_their_dtype(method_name, tiny_dataset):
    """Ids (candidates, token ids) must never pass through float16, which rounds 2049 to 2048."""
    method = make(method_name, "srgnn", tiny_dataset)
    ids = np.arange(4)
    values = np.array([[2049, 12101], [1, 0], [65519, 7], [3, 4]], dtype=np.int64)
    method.attach({"ids": FeatureTable(ids, values, np.array([True, True, True, False]))})
    got = method.feature("ids", torch.tensor([0, 2, 3]))
    assert got.dtype == torch.int64
    assert got.tolist() == [[2049, 12101], [65519, 7], [0, 0]]


@pytest.mark.parametrize("method_name", METHODS.names())
def test_same_seed_same_result(method_name, tiny_dataset):
    b = batch()
    a = make(method_name, "narm", tiny_dataset, seed=3).eval()
    c = make(method_name, "narm", tiny_dataset, seed=3).eval()
    with torch.no_grad():
        torch.testing.assert_close(a(b), c(b))


@pytest.mark.parametrize("method_name", METHODS.names())
def test_text_features_are_not_saved_in_checkpoints(method_name, tiny_dataset):
    method = make(method_name, "srgnn", tiny_dataset)
    assert not any(key.startswith("_feat_") or key.startswith("_rows_") for key in method.state_dict())
