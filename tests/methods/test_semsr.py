"""SemSR over the backbones: the paper's equations on hand-sized inputs, the fused table computed once
per step, NISER's scaled cosine on the fused vectors, -I initialisation, the text controls, and end to
end with the real MiniLM encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from intentrec.data.batch import SessionBatch
from intentrec.errors import ConfigError, DataError
from intentrec.models.features import ItemFeatureTable
from intentrec.models.methods import build_method
from intentrec.models.methods.semsr import TEXT
from intentrec.models.registry import build_backbone
from tests.helpers.tiny_dataset import write_tiny_dataset
from tests.helpers.tinyrun import write_tiny_dataset as write_run_dataset

pytestmark = pytest.mark.usefixtures("single_thread")
D2 = 6


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("INTENTREC_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny"))


def text_table(n: int, d2: int = D2, seed: int = 0) -> ItemFeatureTable:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, d2)).astype(np.float32)
    return ItemFeatureTable(vectors / np.linalg.norm(vectors, axis=1, keepdims=True))


def make(dataset, backbone="srgnn", dim=8, **config):
    torch.manual_seed(0)
    bb = build_backbone(backbone, dataset.num_items, {"embedding_dim": dim})
    bb.prepare(dataset)
    method = build_method("semsr", bb, config)
    method.attach_items({TEXT: text_table(dataset.num_items)})
    return method


def test_text_session_follows_the_paper(tiny):
    m = make(tiny).eval()
    b = SessionBatch.from_lists([[3, 5, 7], [9]], example_ids=[0, 1])
    text = m.item_feature(TEXT)
    got = m._text_session(b)
    # session 0: j = 1..|s|-1 are items 3 and 5; the last is 7
    last, earlier = text[6], text[[2, 4]]
    logits = m.query(torch.sigmoid(m.w_last(last) + m.w_item(earlier))).squeeze(-1)
    pooled = (torch.softmax(logits, 0).unsqueeze(1) * earlier).sum(0)
    torch.testing.assert_close(got[0], m.w_text(torch.cat([pooled, last])))
    # a one-click session has no earlier items: s' = 0
    torch.testing.assert_close(got[1], m.w_text(torch.cat([torch.zeros(D2), text[8]])))


def test_scores_are_the_fused_session_against_the_fused_table(tiny):
    m = make(tiny).eval()
    b = SessionBatch.from_lists([[3, 5, 7], [9, 2]], example_ids=[0, 1])
    with torch.no_grad():
        s_m = m.backbone.encode(b).session
        session = m.w_session(torch.cat([s_m, m._text_session(b)], 1))
        w5 = torch.cat([m.w_items_id.weight, m.w_items_text.weight], 1)  # W5 acting on [I_m; I_l]
        table = torch.cat([m.backbone.id_table, m.item_feature(TEXT)], 1) @ w5.T + m.w_items_id.bias
        torch.testing.assert_close(m(b), session @ table.T)


def test_niser_scores_the_fused_vectors_as_scaled_cosines(tiny):
    m = make(tiny, backbone="niser").eval()
    b = SessionBatch.from_lists([[3, 5, 7], [9, 2]], example_ids=[0, 1])
    with torch.no_grad():
        session = m.encode(b).session
        table = m.w_items_id(m.backbone.item_vectors()) + m.w_items_text(m.item_feature(TEXT))
        expected = m.backbone.config.scale * F.normalize(session, dim=1) @ F.normalize(table, dim=1).T
        torch.testing.assert_close(m(b), expected)


def test_one_click_sessions_keep_gradients_finite(tiny):
    m = make(tiny).train()
    b = SessionBatch.from_lists([[4], [9], [3, 5]], targets=[1, 2, 3], example_ids=[0, 1, 2])
    m.loss(b).backward()
    for name, p in m.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name


def test_the_fused_table_is_computed_once_per_training_step(tiny):
    m = make(tiny).train()
    calls = []
    m.w_items_text.register_forward_hook(lambda module, inputs, output: calls.append(output.shape))
    b = SessionBatch.from_lists([[3, 5, 7], [9, 2], [4]], targets=[1, 2, 3], example_ids=[0, 1, 2])
    m.loss(b).backward()
    assert calls == [torch.Size([tiny.num_items, 8])]
    assert m.w_items_text.weight.grad is not None and m.backbone.id_table.grad is not None


def test_init_with_pca_keeps_the_table_spread_and_the_text_geometry(tiny):
    torch.manual_seed(0)
    bb = build_backbone("srgnn", tiny.num_items, {"embedding_dim": 4})
    spread = bb.id_table.std().item()
    m = build_method("semsr", bb, {"mode": "init"})
    table = text_table(tiny.num_items)
    m.attach_items({TEXT: table})
    values = bb.id_table.detach().double()
    assert values.std().item() == pytest.approx(spread, rel=1e-5)
    # the rows are the top-4 principal components of the text vectors, up to the scale
    centred = torch.from_numpy(table.values.astype(np.float64))
    centred = centred - centred.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    projected = centred @ v[:4].T
    scale = (values.norm() / projected.norm()).item()
    torch.testing.assert_close(values, projected * scale, rtol=1e-3, atol=1e-4)
    assert not hasattr(m, "w_items_text")  # -I has no fusion layers


def test_init_at_the_encoders_width(tiny):
    bb = build_backbone("gru4rec", tiny.num_items, {"embedding_dim": D2})
    m = build_method("semsr", bb, {"mode": "init", "init_map": "width"})
    table = text_table(tiny.num_items)
    m.attach_items({TEXT: table})
    torch.testing.assert_close(bb.item_table().detach(), torch.from_numpy(table.values), rtol=0, atol=0)
    narrow = build_method(
        "semsr", build_backbone("gru4rec", tiny.num_items, {"embedding_dim": 4}), {"mode": "init", "init_map": "width"}
    )
    with pytest.raises(ConfigError, match=f"set model.embedding_dim={D2}"):
        narrow.attach_items({TEXT: text_table(tiny.num_items)})


def test_text_dim_reduces_the_item_vectors_once(tiny, monkeypatch):
    from intentrec.models.methods import semsr as module

    class Catalogue:
        vectors = text_table(tiny.num_items, d2=12).values
        info = {"encoder_key": "fake", "untitled_items": 0}
        path = "fake"

    monkeypatch.setattr("intentrec.semantic.intents.embed_catalogue", lambda *a, **k: Catalogue())
    monkeypatch.setattr("intentrec.semantic.encoders.get_encoder", lambda spec: None)
    m = build_method("semsr", build_backbone("srgnn", tiny.num_items, {"embedding_dim": 8}), {"text_dim": 4})
    tables = m.load_item_features(tiny)
    assert tables[TEXT].values.shape == (tiny.num_items, 4) and tables[TEXT].info["dim"] == 4
    m.attach_items(tables)
    assert (m.w_items_id.in_features, m.w_items_text.in_features) == (8, 4)
    expected = module._principal_components(torch.from_numpy(Catalogue.vectors), 4)
    torch.testing.assert_close(torch.from_numpy(tables[TEXT].values.astype(np.float32)), expected, atol=1e-3, rtol=1e-3)


def test_item_vectors_for_another_catalogue_are_refused(tiny):
    m = make(tiny)
    with pytest.raises(DataError, match="rows for 30 items"):
        m.attach_items({TEXT: text_table(tiny.num_items + 3)})


def test_unknown_template_is_a_config_error(tiny):
    with pytest.raises(ConfigError, match="unknown template 'nope/1'"):
        build_method("semsr", build_backbone("srgnn", tiny.num_items, {}), {"template": "nope/1"})


def test_end_to_end_with_the_real_encoder_and_its_controls(tmp_path):
    pytest.importorskip("sentence_transformers")
    from intentrec.serving.recommend import recommend
    from intentrec.training import evaluate_run, load_run, train

    data = write_run_dataset(tmp_path / "data")
    runs = {}
    for name, config in {
        "fuse": {},
        "init": {"mode": "init"},
        "shuffled": {"control": "shuffled"},
        "random": {"control": "random"},
    }.items():
        runs[name] = train(data, "srgnn", {"embedding_dim": 16}, {"epochs": 2}, out=tmp_path / name,
                           method="semsr", method_config=config, progress=False)  # fmt: skip
    fuse = runs["fuse"]
    info = fuse.metrics["semantic"]
    assert info["mode"] == "fuse" and info["item_features"][TEXT]["dim"] == 384
    assert info["item_features"][TEXT]["control"] == "none"
    assert runs["shuffled"].metrics["semantic"]["item_features"][TEXT]["control"].startswith("shuffled")
    assert fuse.epochs_run == 2 and 0 <= fuse.test["HR@20"] <= 1
    # the item vectors are cached: a second run reuses the file
    from intentrec.semantic.encoders import get_encoder
    from intentrec.semantic.intents import embed_catalogue

    assert embed_catalogue(data, get_encoder("minilm")).reused_file
    trained = load_run(tmp_path / "fuse")
    assert evaluate_run(trained, "test")["metrics"]["HR@20"] == pytest.approx(fuse.test["HR@20"])
    assert len(recommend(trained.model, trained.dataset, trained.dataset.item_ids()[:2], 5).items) == 5
    assert load_run(tmp_path / "init").model.needs().serves_new_sessions
