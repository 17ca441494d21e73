"""LLM4SBR: the fusion formula, its ablation switches, the titles source, and end-to-end runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from intentrec.data.batch import SessionBatch
from intentrec.errors import ConfigError, DataError, IntentrecError
from intentrec.models.methods import FeatureTable, build_method
from intentrec.models.methods.llm4sbr_features import window_means
from intentrec.models.methods.losses import directau
from intentrec.models.registry import build_backbone
from tests.helpers.tiny_dataset import write_tiny_dataset


def tables(names, n=64, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.arange(n)
    return {v: FeatureTable(ids, rng.normal(size=(n, dim)).astype(np.float32), np.ones(n, bool)) for v in names}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny"))


def method(dataset, **config):
    torch.manual_seed(0)
    backbone = build_backbone("srgnn", dataset.num_items, {"embedding_dim": 16})
    m = build_method("llm4sbr", backbone, config)
    m.attach(tables(m.feature_names()))
    return m


def batch():
    return SessionBatch.from_lists([[1, 2, 3], [4], [5, 6, 7, 5]], targets=[2, 3, 4], example_ids=[3, 9, 12])


def test_fusion_follows_the_paper(tiny):
    m = method(tiny).train()
    b = batch()
    out = m.backbone.encode(b)
    local, global_ = out.vectors["local"], out.vectors["global"]
    t_long = m.text_proj(m.feature("long", b.example_ids))
    t_short = m.text_proj(m.feature("short", b.example_ids))
    w_l = torch.sigmoid(global_ + t_long) @ m.w_long.weight.t()
    s = torch.sigmoid(local + t_short) @ m.w_short.weight.t()
    expected = m.combine(torch.cat([w_l * global_, s * local], dim=1))
    fused, aux = m.fuse(out, b)
    torch.testing.assert_close(fused.session, expected)
    torch.testing.assert_close(aux["au_long"], directau(global_, t_long))
    torch.testing.assert_close(aux["au_short"], directau(local, t_short))
    ce = torch.nn.functional.cross_entropy(m.backbone.score(fused), b.targets)
    torch.manual_seed(0)
    torch.testing.assert_close(m.loss(b), ce + 0.1 * (aux["au_long"] + aux["au_short"]))


def test_ablation_switches(tiny):
    b = batch()
    assert method(tiny, lambda_au=0).train().fuse(method(tiny).backbone.encode(b), b)[1] == {}
    wo_long = method(tiny, views=["short"]).train()
    assert wo_long.feature_names() == ("short",)
    assert set(wo_long.fuse(wo_long.backbone.encode(b), b)[1]) == {"au_short"}
    normal = method(tiny, normal=True).train()
    assert normal.feature_names() == ("normal",)
    assert set(normal.fuse(normal.backbone.encode(b), b)[1]) == {"au_normal"}
    # no auxiliary loss at evaluation time
    assert method(tiny).eval().fuse(method(tiny).backbone.encode(b), b)[1] == {}
    with pytest.raises(ConfigError, match="views is empty"):
        method(tiny, views=[])
    with pytest.raises(ConfigError, match="needs llm="):
        method(tiny, source="llm")
    with pytest.raises(ConfigError, match="unknown key 'lambda'"):
        method(tiny, **{"lambda": 0.1})


def test_llm_infer_ranks_by_text_similarity(tiny):
    m = method(tiny, infer_only=True)
    rng = np.random.default_rng(1)
    catalogue = rng.normal(size=(tiny.num_items, 8)).astype(np.float32)
    catalogue /= np.linalg.norm(catalogue, axis=1, keepdims=True)
    m.register_buffer("_catalogue", torch.from_numpy(catalogue.astype(np.float16)), persistent=False)
    b = batch()
    mean = (m.feature("long", b.example_ids) + m.feature("short", b.example_ids)) / 2
    expected = torch.nn.functional.normalize(mean, dim=-1) @ torch.from_numpy(catalogue.astype(np.float16)).float().t()
    torch.testing.assert_close(m(b), expected)
    assert m.trains is False


def test_window_means_match_a_plain_loop():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(10, 4)).astype(np.float32)
    seqs = [[1], [2, 3, 4, 5], [10, 10], [7, 8, 9, 1, 2]]
    values = np.array([i for s in seqs for i in s])
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])])
    for window in (None, 3):
        got = window_means(vectors, values, offsets, window)
        want = np.stack([vectors[np.array(s[-window:] if window else s) - 1].mean(0) for s in seqs])
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_llm_infer_ablation_trains_nothing(tiny, tmp_path):
    pytest.importorskip("sentence_transformers")
    from intentrec.training import train

    result = train(
        tiny.path,
        "srgnn",
        {"embedding_dim": 16},
        {"epochs": 5},
        out=tmp_path / "infer",
        method="llm4sbr",
        method_config={"infer_only": True, "k": 2},
        progress=False,
    )
    assert result.epochs_run == 1 and result.history[0]["loss"] == 0.0
    assert 0.0 <= result.test["HR@20"] <= 1.0


def test_llm_source_with_a_real_small_llm(tmp_path):
    from tests.helpers.llm import require_smollm2
    from tests.helpers.semantic import LLM_TITLES, llm_sessions, write_dataset

    require_smollm2()
    pytest.importorskip("sentence_transformers")
    from intentrec.semantic.infer import run_inference
    from intentrec.semantic.llm.base import DecodingConfig
    from intentrec.semantic.store import AnswerStore
    from intentrec.training import train

    sessions = {"train": llm_sessions(4, 4), "valid": llm_sessions(2, 3), "test": llm_sessions(2, 4)}
    data = write_dataset(tmp_path / "ds", sessions, LLM_TITLES)
    store_path = tmp_path / "answers.sqlite"
    with AnswerStore(store_path) as store:
        for template in ("llm4sbr-long", "llm4sbr-short", "llm4sbr-long-compact", "llm4sbr-short-compact"):
            for split, limit in (("train", 4), ("valid", 2), ("test", 2)):
                report = run_inference(
                    data,
                    template=template,
                    llm="smollm2",
                    split=split,
                    limit=limit,
                    store=store,
                    progress=False,
                    decoding=DecodingConfig(max_tokens=16),
                    llm_options={"n_parallel": 4},
                )
                assert report.covered == limit
    config = {"source": "llm", "llm": "smollm2", "store": str(store_path), "k": 2}
    with pytest.raises(DataError, match="have no text features"):
        train(
            data,
            "srgnn",
            {"embedding_dim": 16},
            {"epochs": 1},
            out=tmp_path / "refused",
            method="llm4sbr",
            method_config=config,
            progress=False,
        )
    result = train(
        data,
        "srgnn",
        {"embedding_dim": 16},
        {"epochs": 2},
        out=tmp_path / "run",
        method="llm4sbr",
        method_config={**config, "restrict_to_covered": True},
        progress=False,
    )
    semantic = result.metrics["semantic"]
    assert semantic["source"] == "llm"
    assert semantic["examples_used"] == {"train": 4, "valid": 2, "test": 2}
    assert semantic["features"]["long"]["llm"]["model_sha256"]
    assert semantic["features"]["short"]["template"] == "llm4sbr-short"
    compact = train(
        data,
        "srgnn",
        {"embedding_dim": 16},
        {"epochs": 1},
        out=tmp_path / "compact",
        method="llm4sbr",
        method_config={**config, "restrict_to_covered": True, "prompts": "compact"},
        progress=False,
    )
    features = compact.metrics["semantic"]["features"]
    assert {v: features[v]["template"] for v in ("long", "short")} == {
        "long": "llm4sbr-long-compact",
        "short": "llm4sbr-short-compact",
    }
    assert 0.0 <= result.test["HR@20"] <= 1.0
    # LLM answers exist only for dataset examples: serving a new session is refused with a reason
    from intentrec.serving.recommend import recommend
    from intentrec.training import load_run

    trained = load_run(tmp_path / "run")
    with pytest.raises(IntentrecError, match="cannot compute text features for a new session"):
        recommend(trained.model, trained.dataset, trained.dataset.item_ids()[:2], 3)


def test_unknown_method_is_one_clear_error(tiny, tmp_path):
    with pytest.raises(IntentrecError, match="unknown method 'nope'"):
        from intentrec.training import train

        train(tiny.path, "srgnn", {}, {"epochs": 1}, out=tmp_path / "x", method="nope")


def test_shuffled_text_control_permutes_within_each_split(tiny):
    from intentrec.models.methods.llm4sbr import shuffle_within_splits

    ids = np.concatenate([tiny.examples(s).example_ids for s in ("train", "valid", "test")])
    vectors = np.arange(len(ids), dtype=np.float32)[:, None] * np.ones((1, 4), np.float32)
    table = FeatureTable(ids, vectors, np.ones(len(ids), bool))
    shuffled = shuffle_within_splits(table, tiny)
    assert shuffled.example_ids.tolist() == ids.tolist()
    moved = shuffled.vectors[:, 0] != vectors[:, 0]
    assert moved.mean() > 0.5  # most examples got another example's vector
    for split in ("train", "valid", "test"):
        rows = table.positions(tiny.examples(split).example_ids)
        assert sorted(shuffled.vectors[rows, 0].tolist()) == sorted(vectors[rows, 0].tolist())


@pytest.mark.slow
def test_llm_source_on_a_real_beauty_subset(tmp_path):
    """Real data, real LLM: the first 12 Beauty sessions, smollm2 answers for a few examples per split."""
    from tests.helpers.data import require_data
    from tests.helpers.llm import require_smollm2

    source = require_data("amazon/beauty-2014-5core")
    require_smollm2()
    pytest.importorskip("sentence_transformers")
    from intentrec.data.prepare import prepare_dataset
    from intentrec.semantic.infer import run_inference
    from intentrec.semantic.llm.base import DecodingConfig
    from intentrec.semantic.store import AnswerStore
    from intentrec.training import train

    data = prepare_dataset("generic", source, tmp_path / "beauty-12", protocol="llm4sbr-beauty", max_sessions=12)
    limits = {"train": 3, "valid": 1, "test": 2}
    assert all(len(data.examples(s)) >= n for s, n in limits.items())
    store_path = tmp_path / "answers.sqlite"
    with AnswerStore(store_path) as store:
        for template in ("llm4sbr-long", "llm4sbr-short", "llm4sbr-long-compact", "llm4sbr-short-compact"):
            for split, limit in limits.items():
                report = run_inference(
                    data.path,
                    template=template,
                    llm="smollm2",
                    split=split,
                    limit=limit,
                    store=store,
                    progress=False,
                    decoding=DecodingConfig(max_tokens=16),
                    llm_options={"n_parallel": 4},
                )
                assert report.covered == limit
    result = train(
        data.path,
        "srgnn",
        {"embedding_dim": 16},
        {"epochs": 2},
        out=tmp_path / "run",
        method="llm4sbr",
        method_config={
            "source": "llm",
            "llm": "smollm2",
            "store": str(store_path),
            "k": 3,
            "restrict_to_covered": True,
        },
        progress=False,
    )
    assert result.metrics["semantic"]["examples_used"] == limits
    assert 0.0 <= result.test["HR@20"] <= 1.0


def test_a_new_session_gets_the_views_its_dataset_example_has(tiny):
    """Serving computes the titles views online; for a dataset example's prefix they equal the stored ones."""
    torch.manual_seed(0)
    backbone = build_backbone("srgnn", tiny.num_items, {"embedding_dim": 16})
    m = build_method("llm4sbr", backbone, {"source": "titles"})
    m.prepare(tiny)
    m.eval()
    examples = tiny.examples("test")
    b = next(examples.batches(len(examples)))
    online = m.session_features(b)
    assert set(online) == set(m.feature_names())
    for view, vectors in online.items():
        torch.testing.assert_close(vectors, m.feature(view, b.example_ids).float(), atol=2e-3, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(m.serve_scores(b), m(b), atol=1e-3, rtol=1e-3)
