"""LLMSeqSim: session = (recency-weighted) mean of its items' text vectors, items ranked by cosine."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from intentrec.data.batch import SessionBatch
from intentrec.errors import ConfigError
from intentrec.models.registry import build_backbone
from tests.helpers.tinyrun import write_tiny_dataset

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("INTENTREC_HOME", str(tmp_path / "home"))


def model(pooling: str, **config):
    m = build_backbone("llmseqsim", 6, {"embedding_dim": 3, "pooling": pooling, **config})
    m.load_table(F.normalize(torch.arange(18, dtype=torch.float32).view(6, 3).sin(), dim=1))
    return m.eval()


@pytest.mark.parametrize("pooling", ["mean", "recency", "last"])
def test_pooling_and_cosine_scores(pooling):
    m = model(pooling, recency_decay=0.5)
    b = SessionBatch.from_lists([[1, 4, 2], [6]])
    table = m.id_table
    weights = {"mean": [1.0, 1.0, 1.0], "recency": [0.25, 0.5, 1.0], "last": [0.0, 0.0, 1.0]}[pooling]
    w = torch.tensor(weights)
    first = (w.unsqueeze(1) * table[[0, 3, 1]]).sum(0) / w.sum()
    expected = torch.stack([F.normalize(first, dim=0), F.normalize(table[5], dim=0)]) @ F.normalize(table, dim=1).T
    torch.testing.assert_close(m(b), expected)
    assert m.needs().trains is False and m.capabilities()["train"]


def test_a_run_is_one_evaluation_pass_without_an_optimiser(tmp_path):
    pytest.importorskip("sentence_transformers")
    from intentrec.training import evaluate_run, load_run, train

    data = write_tiny_dataset(tmp_path / "data")
    result = train(data, "llmseqsim", {}, {"epochs": 5}, out=tmp_path / "run", progress=False)
    assert result.epochs_run == 1 and result.stopped_early and result.metrics["num_parameters"] == 0
    trained = load_run(tmp_path / "run")
    assert evaluate_run(trained, "test")["metrics"] == result.test
    # run again: the finished run is returned as it is
    assert train(data, "llmseqsim", {}, {"epochs": 5}, out=tmp_path / "run", progress=False).test == result.test


def test_the_width_must_be_the_encoders(tmp_path):
    pytest.importorskip("sentence_transformers")
    from intentrec.data.dataset import PreparedDataset

    data = PreparedDataset(write_tiny_dataset(tmp_path / "data"))
    with pytest.raises(ConfigError, match="set model.embedding_dim=384"):
        build_backbone("llmseqsim", data.num_items, {"embedding_dim": 100}).prepare(data)
