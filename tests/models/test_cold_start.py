"""Cold-start items: the seeded hidden set, the training data without it, the text → item-space map
(ridge exact on a linear case, MLP, a model's own placement, save/load), scoring old and new items
together for every model that can, and the cold-start evaluation of a trained run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from intentrec.data.cold_items import ColdStartView, choose_cold_items, without_items
from intentrec.data.dataset import PreparedDataset
from intentrec.errors import ConfigError, DataError, IntentrecError
from intentrec.models.cold_start import ColdScoringConfig, ColdStartMap, cold_item_scores, fit_cold_start_map
from intentrec.models.methods import build_method
from intentrec.models.methods.semsr import TEXT
from intentrec.models.registry import build_backbone
from intentrec.training import load_run, train
from intentrec.training.cold_start import evaluate_cold_start
from tests.helpers import models as contract
from tests.helpers.hash_encoder import register_hash_encoder
from tests.helpers.tinyrun import FAST_TRAINER, TEST_BACKBONE, write_tiny_dataset

pytestmark = pytest.mark.usefixtures("single_thread")
ENCODER = "test-cold-hash"
WIDTH = 8


register_hash_encoder(ENCODER, WIDTH)


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("INTENTREC_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> PreparedDataset:
    return PreparedDataset(write_tiny_dataset(tmp_path_factory.mktemp("cold") / "data"))


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ----------------------------------------------------------------------------- the cold set and the data


def test_cold_set_is_determined_by_the_seed(tiny):
    a, b = choose_cold_items(tiny, 0.2, seed=3), choose_cold_items(tiny, 0.2, seed=3)
    assert a.indices.tolist() == b.indices.tolist() and len(a.indices) == 6
    assert a.indices.tolist() != choose_cold_items(tiny, 0.2, seed=4).indices.tolist()
    assert a.indices.min() >= 1 and a.indices.max() <= tiny.num_items and len(set(a.indices.tolist())) == 6


def test_cold_items_are_drawn_among_titled_items_only(tmp_path):
    from tests.helpers.semantic import write_dataset

    folder = write_dataset(tmp_path / "d", {"train": [[1, 2, 3]], "test": [[2, 7]]})
    dataset = PreparedDataset(folder)
    untitled = [i + 1 for i, t in enumerate(dataset.titles()) if t is None]
    for seed in range(20):
        assert not set(choose_cold_items(dataset, 0.5, seed).indices.tolist()) & set(untitled)
    with pytest.raises(DataError, match="only 7 of 8 items have"):
        choose_cold_items(dataset, 0.95)
    with pytest.raises(IntentrecError, match=r"in \(0, 1\)"):
        choose_cold_items(dataset, 1.0)


def test_without_items_removes_hidden_clicks_and_targets():
    from intentrec.data.dataset import ExampleSet

    # prefixes [1], [1 2], [2], [3 2 4] → targets 2, 3, 4, 1; item 2 hidden
    ex = ExampleSet("train", np.arange(4), np.array([1, 1, 2, 2, 3, 2, 4], np.int32), np.array([0, 1, 3, 4, 7]),
                    np.array([2, 3, 4, 1], np.int32))  # fmt: skip
    hidden = np.zeros(5, bool)
    hidden[2] = True
    kept = without_items(ex, hidden, drop_hidden_targets=True)
    assert kept.example_ids.tolist() == [1, 3]  # target 2 dropped; [2] → empty dropped
    assert [kept.prefix(i).tolist() for i in range(len(kept))] == [[1], [3, 4]]
    with_targets = without_items(ex, hidden, drop_hidden_targets=False)
    assert with_targets.example_ids.tolist() == [0, 1, 3] and with_targets.targets.tolist() == [2, 3, 1]


def test_no_cold_item_in_any_training_example(tiny, tmp_path):
    view = ColdStartView(tiny, choose_cold_items(tiny, 0.2, seed=1))
    cold = view.cold.mask()
    for split in ("train", "valid", "test"):
        ex = view.examples(split)
        assert not cold[ex.values].any() and not cold[ex.targets].any() and (ex.lengths > 0).all()
        full = view.examples_with_cold_targets(split)
        assert not cold[full.values].any() and len(full) >= len(ex)
    assert cold[view.examples_with_cold_targets("test").targets].any()
    values, offsets = view.sessions("train")
    assert not cold[values].any() and offsets[-1] == len(values)
    assert (view.train_counts()[view.cold.indices - 1] == 0).all()
    assert (view.train_counts()[~cold[1:]] == tiny.train_counts()[~cold[1:]]).all()

    # the trainer trains and selects on exactly those examples, and records the set
    result = train(tiny.path, TEST_BACKBONE, {"embedding_dim": 8}, {**FAST_TRAINER, "epochs": 1, "cold_start": 0.2,
                   "cold_start_seed": 1}, out=tmp_path / "run", progress=False)  # fmt: skip
    counts = result.metrics["num_examples"]
    assert counts == {s: len(view.examples(s)) for s in ("train", "valid", "test")}
    recorded = json.loads((tmp_path / "run" / "cold_items.json").read_text())
    assert recorded["item_indices"] == view.cold.indices.tolist() and recorded["seed"] == 1
    assert result.metrics["cold_start"]["cold_items"] == 6


# ----------------------------------------------------------------------------- the map


def test_ridge_is_exact_on_a_linear_case(tiny):
    rng = np.random.default_rng(0)
    text = unit(rng, tiny.num_items, WIDTH)
    a, b = rng.normal(size=(WIDTH, 6)).astype(np.float32), rng.normal(size=6).astype(np.float32)
    model = build_backbone("srgnn", tiny.num_items, {"embedding_dim": 6})
    model.init_item_table(torch.from_numpy(text @ a + b))
    view = ColdStartView(tiny, choose_cold_items(tiny, 0.2))
    cold = fit_cold_start_map(model, view, ENCODER, config={"kind": "ridge", "lambdas": [0.0, 1.0]}, text_vectors=text)
    assert cold.kind == "ridge" and cold.identity["ridge_lambda"] == 0.0 and not cold.normalize
    torch.testing.assert_close(cold.tensors["weight"], torch.from_numpy(a), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cold.tensors["bias"], torch.from_numpy(b), atol=1e-4, rtol=1e-4)
    columns = view.cold.indices - 1  # never fitted on, placed exactly all the same
    torch.testing.assert_close(cold.rows_from_vectors(text[columns]), model.scoring_table()[columns].detach(),
                               atol=1e-4, rtol=1e-4)  # fmt: skip


def test_ridge_lambda_is_chosen_on_held_out_items(tiny):
    rng = np.random.default_rng(1)
    text = unit(rng, tiny.num_items, WIDTH)
    model = build_backbone("srgnn", tiny.num_items, {"embedding_dim": 6})  # rows unrelated to the texts
    view = ColdStartView(tiny, choose_cold_items(tiny, 0.2))
    cold = fit_cold_start_map(model, view, ENCODER, config={"lambdas": [0.0, 1e6]}, text_vectors=text)
    errors = cold.identity["held_out_mse"]
    assert cold.identity["ridge_lambda"] == min((1e6, 0.0), key=lambda lam: errors[str(lam)])
    assert cold.identity["items_fitted"] == tiny.num_items - 6 and cold.identity["items_held_out"] == 2


def test_niser_rows_are_unit_length_and_score_with_the_catalogue(tiny):
    model = build_backbone("niser", tiny.num_items, {"embedding_dim": 6}).eval()
    view = ColdStartView(tiny, choose_cold_items(tiny, 0.2))
    cold = fit_cold_start_map(model, view, ENCODER)
    assert cold.normalize and cold.kind == "ridge"
    rows = cold.rows(["Rosewater Facial Toner", "Argan Oil Shampoo"])
    torch.testing.assert_close(rows.norm(dim=1), torch.ones(2))
    batch = contract.batch()
    with torch.no_grad():
        output = model.encode(batch)
        scores = model.score_with(output, torch.cat([model.scoring_table(), rows]))
        torch.testing.assert_close(scores[:, : tiny.num_items], model(batch))
    assert scores.shape == (len(contract.SESSIONS), tiny.num_items + 2)


def test_mlp_map_is_deterministic(tiny):
    model = build_backbone("srgnn", tiny.num_items, {"embedding_dim": 6})
    view = ColdStartView(tiny, choose_cold_items(tiny, 0.2))
    options = {"kind": "mlp", "hidden": 16, "max_steps": 30}
    one, two = (fit_cold_start_map(model, view, ENCODER, config=options) for _ in range(2))
    assert one.kind == "mlp" and one.identity["mlp_best_step"] >= 1
    for key in one.tensors:
        assert torch.equal(one.tensors[key], two.tensors[key])
    assert one.rows(["a text"]).shape == (1, 6)


def test_semsr_fuse_places_items_with_its_own_text_branch(tiny):
    torch.manual_seed(0)
    backbone = build_backbone("niser", tiny.num_items, {"embedding_dim": 6})
    model = build_method("semsr", backbone, {"mode": "fuse", "encoder": ENCODER})
    text = contract.synthetic_item_tables(model, tiny.num_items)[TEXT]
    model.attach_items({TEXT: text})
    cold = fit_cold_start_map(model, tiny)
    assert cold.kind == "model" and cold.encoder == ENCODER and cold.normalize
    with torch.no_grad():  # an item whose ID vector is zero is exactly what the branch places
        backbone.id_item_table()[2].zero_()
        expected = model.scoring_table()[2]
    torch.testing.assert_close(cold.rows_from_vectors(torch.from_numpy(text.values[2:3]))[0], expected)
    with pytest.raises(ConfigError, match="kind=ridge"):
        fit_cold_start_map(model, tiny, "minilm")
    assert fit_cold_start_map(model, tiny, ENCODER, config={"kind": "ridge"}).kind == "ridge"
    init = build_method("semsr", build_backbone("niser", tiny.num_items, {"embedding_dim": 6}), {"mode": "init"})
    assert init.text_placement() is None


@pytest.mark.parametrize("model_id", contract.MODEL_IDS)
def test_scoring_table_and_score_with_agree_with_score(model_id, tiny):
    model = contract.build(model_id, tiny).eval()
    why = model.new_items_problem()
    if why is not None:  # it says why; evaluation and serving then refuse it with that reason
        assert isinstance(why, str) and why
        return
    batch = contract.batch()
    with torch.no_grad():
        table = model.scoring_table()
        assert table.shape[0] == model.num_items
        output = model.encode(batch)
        torch.testing.assert_close(model.score_with(output, table), model(batch), atol=1e-5, rtol=1e-5)
        # rows appended (new items) are scored with the rest (a log-softmax score may shift them all)
        assert model.score_with(output, torch.cat([table, table[:2]])).shape == (
            len(contract.SESSIONS),
            model.num_items + 2,
        )


def test_save_load_round_trip(tiny, tmp_path):
    model = build_backbone("srgnn", tiny.num_items, {"embedding_dim": 6})
    view = ColdStartView(tiny, choose_cold_items(tiny, 0.2))
    for kind in ("ridge", "mlp"):
        cold = fit_cold_start_map(model, view, ENCODER, config={"kind": kind, "max_steps": 5}, fitted_on="runs/x")
        path = cold.save(tmp_path / f"{kind}.safetensors")
        loaded = ColdStartMap.load(path)
        texts = ["Matte Liquid Lipstick", "Volumizing Mascara"]
        # the stored state is bit-identical; rows computed from two copies may differ in the last bit
        # (the matmul kernel can depend on the memory alignment of its operands)
        assert loaded.tensors.keys() == cold.tensors.keys()
        assert all(torch.equal(loaded.tensors[k], cold.tensors[k]) for k in cold.tensors)
        torch.testing.assert_close(loaded.rows(texts), cold.rows(texts), atol=1e-6, rtol=1e-6)
        info = json.loads(path.with_suffix(".json").read_text())
        assert info["kind"] == kind and info["encoder"] == ENCODER and info["fitted_on"] == "runs/x"
        assert info["template"] == "title/1" and loaded.identity["encoder_key"] == cold.identity["encoder_key"]
    path.write_bytes(path.read_bytes()[:-4] + b"0000")
    with pytest.raises(DataError, match="tensors sha256 differs"):
        ColdStartMap.load(path)
    with pytest.raises(ConfigError, match="NAME.safetensors"):
        cold.save(tmp_path / "map.pt")


def test_errors_name_the_problem(tiny):
    model = build_backbone("srgnn", tiny.num_items, {"embedding_dim": 6})
    cold = fit_cold_start_map(model, ColdStartView(tiny, choose_cold_items(tiny, 0.2)), ENCODER)
    with pytest.raises(IntentrecError, match=r"item texts \[1\] are empty"):
        cold.rows(["a title", "  "])
    with pytest.raises(IntentrecError, match=r"expected text vectors \[m, 8\]"):
        cold.rows_from_vectors(torch.zeros(2, 5))
    msgat = build_backbone("msgat", tiny.num_items, {"embedding_dim": 10})
    with pytest.raises(IntentrecError, match="scores its own way"):
        fit_cold_start_map(msgat, tiny, ENCODER)
    with pytest.raises(ConfigError, match="unknown field|lambdas|extra"):
        fit_cold_start_map(model, tiny, ENCODER, config={"lambda": 1})


# ----------------------------------------------------------------------------- evaluation of a trained run


def test_cold_start_evaluation_end_to_end(tiny, tmp_path):
    run = tmp_path / "run"
    settings = {**FAST_TRAINER, "epochs": 2, "cold_start": 0.2, "ks": [5, 20], "select_metric": "MRR@20"}
    train(tiny.path, "srgnn", {"embedding_dim": 8}, settings, out=run, progress=False)
    trained = load_run(run)
    assert isinstance(trained.dataset, ColdStartView)
    report = evaluate_cold_start(trained, 0.2, encoder=ENCODER)
    info, metrics = report["cold_start"], report["metrics"]
    assert info["cold_items"] == 6 and info["cold_targets"] > 0 and report["map"]["kind"] == "ridge"
    for name in ("model", "id_rows", "popularity", "text_similarity"):
        assert set(metrics[name]) == {"all", "cold", "warm"} and 0 <= metrics[name]["cold"]["HR@20"] <= 1
    # cold items have no train clicks: popularity puts them below all 24 warm items
    assert metrics["popularity"]["cold"]["HR@20"] == 0.0
    assert report == evaluate_cold_start(load_run(run), 0.2, encoder=ENCODER)  # deterministic

    with pytest.raises(IntentrecError, match=r"trained with --cold-start 0.2 \(seed 0\), not 0.1.*--cold-start 0.1"):
        evaluate_cold_start(trained, 0.1)
    warm = tmp_path / "warm"
    train(tiny.path, "srgnn", {"embedding_dim": 8}, {**FAST_TRAINER, "epochs": 1}, out=warm, progress=False)
    with pytest.raises(IntentrecError, match="trained with every item.*--cold-start 0.2 --out RUN"):
        evaluate_cold_start(load_run(warm), 0.2)

    (run / "cold_items.json").write_text(json.dumps({"item_indices": [1, 2, 3]}))
    with pytest.raises(DataError, match="differ from the ones drawn now"):
        load_run(run)


# ----------------------------------------------------------------------------- map and scoring options


def test_standardized_ridge_is_exact_on_a_linear_case_and_rescale_sets_the_norm(tiny, tmp_path):
    rng = np.random.default_rng(2)
    text = unit(rng, tiny.num_items, WIDTH)
    a, b = rng.normal(size=(WIDTH, 6)).astype(np.float32), rng.normal(size=6).astype(np.float32)
    model = build_backbone("srgnn", tiny.num_items, {"embedding_dim": 6})
    model.init_item_table(torch.from_numpy(text @ a + b))
    view = ColdStartView(tiny, choose_cold_items(tiny, 0.2))
    columns = view.cold.indices - 1
    expected = model.scoring_table()[columns].detach()
    options = {"kind": "ridge", "lambdas": [0.0], "standardize": True}
    cold = fit_cold_start_map(model, view, ENCODER, config=options, text_vectors=text)
    assert cold.identity["standardize"]
    torch.testing.assert_close(cold.rows_from_vectors(text[columns]), expected, atol=1e-4, rtol=1e-4)

    options["rescale"] = "mean_norm"
    scaled = fit_cold_start_map(model, view, ENCODER, config=options, text_vectors=text)
    trained = model.scoring_table().detach()[np.flatnonzero(view.train_counts() > 0)]
    rows = scaled.rows_from_vectors(text[columns])
    torch.testing.assert_close(rows.norm(dim=1), trained.norm(dim=1).mean().expand(len(columns)))
    torch.testing.assert_close(F.normalize(rows, dim=1), F.normalize(expected, dim=1), atol=1e-4, rtol=1e-4)
    loaded = ColdStartMap.load(scaled.save(tmp_path / "scaled.safetensors"))
    assert all(torch.equal(loaded.tensors[k], scaled.tensors[k]) for k in scaled.tensors)
    torch.testing.assert_close(loaded.rows_from_vectors(text[columns]), rows, atol=1e-6, rtol=1e-6)


def test_cold_scores_are_calibrated_onto_the_warm_scores_per_session():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 40, generator=gen) * 4 + 10
    cold = torch.tensor([3, 7, 8, 20, 31])
    scores[:, cold] = torch.randn(3, 5, generator=gen) * 0.1 - 50  # another scale: all at the bottom
    warm = torch.ones(40, dtype=torch.bool)
    warm[cold] = False

    assert torch.equal(cold_item_scores(scores, cold, ColdScoringConfig(calibration="none", text_weight=0)), scores)
    for calibration in ("quantiles", "moments"):
        out = cold_item_scores(scores, cold, ColdScoringConfig(calibration=calibration, text_weight=0))
        assert torch.equal(out[:, warm], scores[:, warm])  # warm items keep their scores
        assert torch.equal(out[:, cold].argsort(1), scores[:, cold].argsort(1))  # and cold ones their order
    moments = cold_item_scores(scores, cold, ColdScoringConfig(calibration="moments", text_weight=0))
    torch.testing.assert_close(moments[:, cold].mean(1), scores[:, warm].mean(1), atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(moments[:, cold].std(1), scores[:, warm].std(1), atol=1e-3, rtol=1e-4)
    # quantiles: the cold item ranked r of 5 gets the warm score at position (r + 1/2) / 5 of 35
    quantiles = cold_item_scores(scores, cold, ColdScoringConfig(calibration="quantiles", text_weight=0))
    ordered = scores[:, warm].sort(1).values
    expected = ordered[:, [3, 10, 17, 24, 31]]
    torch.testing.assert_close(quantiles[:, cold].sort(1).values, expected)

    # text_weight 1: the cold items are ordered by their text scores alone
    text = torch.randn(3, 5, generator=gen)
    by_text = cold_item_scores(scores, cold, ColdScoringConfig(), text)  # the default: text only, moments
    assert torch.equal(by_text[:, cold].argsort(1), text.argsort(1))
    with pytest.raises(IntentrecError, match="needs the session–item text scores"):
        cold_item_scores(scores, cold, ColdScoringConfig(text_weight=0.5))
    with pytest.raises(ConfigError, match="needs a calibration"):
        ColdScoringConfig.build({"text_weight": 0.5, "calibration": "none"})
