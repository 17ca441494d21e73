"""Added items are scored as ``intentrec evaluate --cold-start`` scores cold items: calibrated against
the trained items per session (moments, quantiles, a text weight), the same numbers as
``cold_item_scores`` when the catalogue is added again, exact twins where the model scores by text,
``none`` as before, FAISS merged or refused, and the flags of a real server."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from intentrec.data.batch import SessionBatch
from intentrec.errors import ConfigError
from intentrec.models.cold_start import ColdScoringConfig, cold_item_scores
from intentrec.semantic.intents import embed_catalogue
from intentrec.serving.config import ServeConfig
from intentrec.serving.engine import Engine, Query
from intentrec.training import train
from tests.helpers.serving import HASH_ENCODER, HASH_MAP, STANDIN, Server, recommend, run_to_completion
from tests.helpers.tinyrun import FAST_TRAINER

pytestmark = pytest.mark.usefixtures("single_thread")
N = 30  # items of the tiny catalogue
#: no session of exactly two distinct items: its mean text vector has the same cosine to both, a tie
#: that evaluation's quantiles break by argsort order and serving by mid-rank
SESSIONS = [(3, 4, 4), (9,), (1, 2, 3, 5), (12, 11, 12), (30,), (7, 20, 21)]
SETTINGS = [("moments", 1.0), ("moments", 0.0), ("moments", 0.5), ("quantiles", 1.0), ("quantiles", 0.0),
            ("quantiles", 0.5)]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:  # the stand-in encoder's embedding cache
        mp.setenv("INTENTREC_HOME", str(tmp_path_factory.mktemp("home")))
        yield


@pytest.fixture(scope="module")
def llmseqsim_run(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("llmseqsim") / "run"
    data = tiny_run.parent / "data"  # the tiny run's dataset (tests/serving/conftest.py)
    train(data, "llmseqsim", {"embedding_dim": 16, "encoder": HASH_ENCODER}, {**FAST_TRAINER, "epochs": 1}, out=out,
          progress=False)  # fmt: skip
    return out


_dbs = itertools.count()


def engine(run, tmp_path, **options) -> Engine:
    cfg = {"items_db": tmp_path / f"items-{next(_dbs)}.sqlite", "cold_start": HASH_MAP, "threads": 1, **options}
    loaded = Engine.load([str(run)], ServeConfig(**cfg))
    assert loaded.cold_problem is None, loaded.cold_problem
    return loaded


def dense(engine: Engine, sessions=SESSIONS) -> np.ndarray:
    """Every column's served score ``[B, size]`` (from top-k lists of the whole catalogue)."""
    run = next(iter(engine.runs.values()))
    size = engine.catalogue.size
    out = np.full((len(sessions), size), np.nan)
    for b, ranked in enumerate(engine.score(run, [Query(s, (), size) for s in sessions])):
        for col, score in ranked:
            out[b, col] = score
    assert not np.isnan(out).any()
    return out


def calibrate(cal: str, weight: float | None) -> dict:
    return {"cold_calibration": cal, "cold_text_weight": weight}


# ----------------------------------------------------------------------------- the numbers


@pytest.mark.parametrize(("cal", "weight"), SETTINGS)
def test_scores_equal_evaluations_cold_item_scores_when_the_catalogue_is_added_again(tiny_run, tmp_path, cal, weight):
    """With every trained item's text added again, the added items are the cold population evaluation
    z-scores among: serving's calibration against the trained catalogue gives the same numbers."""
    served = engine(tiny_run, tmp_path, **calibrate(cal, weight))
    run = served.runs["srgnn"]
    titles = served.catalogue.titles[:N]
    for i, title in enumerate(titles):
        served.add_item(f"again-{i}", title, None, [])
    got = dense(served)

    model, cold_map = run.model, run.rows
    text = embed_catalogue(run.trained.dataset.path, cold_map.text_encoder(), normalize=True).vectors
    text = torch.from_numpy(np.asarray(text, np.float32))
    with torch.no_grad():
        batch = SessionBatch.from_lists([list(s) for s in SESSIONS])
        output = model.serve_output(batch)
        placed = model.score_with(output, cold_map.rows_from_vectors(text))
        scores = torch.cat([model.score(output), placed], 1)
        session = F.normalize(torch.stack([text[[i - 1 for i in s]].mean(0) for s in SESSIONS]), dim=1)
        want = cold_item_scores(
            scores, torch.arange(N, 2 * N), ColdScoringConfig(calibration=cal, text_weight=weight), session @ text.T
        )
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5)
    served.close()


@pytest.mark.parametrize(("cal", "weight"), [*SETTINGS, ("none", None)])
def test_a_twin_takes_its_originals_score_where_the_model_scores_by_text(llmseqsim_run, tmp_path, cal, weight):
    """LLMSeqSim scores by the session–item text cosine and places an item at its own text vector: an
    added item with a trained item's text must land exactly at that item's score, under every setting."""
    served = engine(llmseqsim_run, tmp_path, **calibrate(cal, weight))
    cold = served.runs["run"].cold
    assert cold is None or not cold.inner_products  # a cosine: the warm moments from the [B, n] scores
    served.add_item("twin-5", "Item number 5", None, [])
    served.add_item("other", "Rose water facial toner", None, [])
    got = dense(served)
    np.testing.assert_allclose(got[:, N], got[:, 4], rtol=1e-5, atol=1e-6)
    served.close()


@pytest.mark.parametrize("cal", ["moments", "quantiles"])
def test_a_twin_lands_at_its_originals_rank_with_exact_rows(tiny_run, tmp_path, cal):
    """The stand-in map places a trained title at that item's own row: calibrated on the placed rows'
    scores (text weight 0) the twin scores like the original, and no later addition moves it."""
    served = engine(tiny_run, tmp_path, cold_start=STANDIN, **calibrate(cal, 0.0))
    served.add_item("twin-5", "Item number 5", None, [])
    first = dense(served)
    np.testing.assert_allclose(first[:, N], first[:, 4], rtol=1e-5, atol=1e-6)
    for i in range(5):
        served.add_item(f"more-{i}", f"Item number {10 + i}", None, [])
    later = dense(served)
    np.testing.assert_allclose(later[:, : N + 1], first, rtol=1e-6, atol=1e-6)  # an item's score is its own
    served.close()


def test_calibration_none_ranks_the_placed_rows_as_before(tiny_run, tmp_path):
    served = engine(tiny_run, tmp_path, cold_calibration="none")
    run = served.runs["srgnn"]
    assert run.cold is None and served.cfg.cold_scoring.text_weight == 0
    for i, title in enumerate(["Item number 5", "Rose water facial toner", "Item number 17"]):
        served.add_item(f"new-{i}", title, None, [])
    with torch.no_grad():
        batch = SessionBatch.from_lists([list(s) for s in SESSIONS])
        rows = run.rows.rows(["Item number 5", "Rose water facial toner", "Item number 17"])
        table = torch.cat([run.model.scoring_table(), rows])
        want = run.model.score_with(run.model.serve_output(batch), table).numpy()
    np.testing.assert_allclose(dense(served), want, rtol=1e-6, atol=1e-6)
    served.close()


def test_the_default_is_evaluations_default(tiny_run, tmp_path):
    served = engine(tiny_run, tmp_path)
    assert served.cfg.cold_scoring == ColdScoringConfig() and served.runs["srgnn"].cold is not None
    assert served.runs["srgnn"].cold.inner_products  # a dot product: the warm moments in closed form
    served.add_item("twin-5", "Item number 5", None, [])
    scores = dense(served)
    assert np.isfinite(scores).all()
    served.close()


# ----------------------------------------------------------------------------- FAISS, maps, options


def test_faiss_merges_the_exactly_scored_added_items(tiny_run, tmp_path):
    pytest.importorskip("faiss")
    exact = engine(tiny_run, tmp_path, index="exact")
    hnsw = engine(tiny_run, tmp_path, index="faiss-hnsw")
    for served in (exact, hnsw):
        for i, title in enumerate(["Item number 5", "Rose water facial toner", "Item number 17", "Lip balm"]):
            served.add_item(f"new-{i}", title, None, [])
    assert hnsw.runs["srgnn"].index.size == N  # the index keeps the trained items; added ones are scored exactly
    queries = [Query(s, (2,) if b % 2 else (), 12) for b, s in enumerate(SESSIONS)]
    for got, want in zip(hnsw.score(hnsw.runs["srgnn"], queries), exact.score(exact.runs["srgnn"], queries)):
        assert [c for c, _ in got] == [c for c, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-4, atol=1e-5)
    exact.close()
    hnsw.close()


@pytest.mark.parametrize(("cal", "weight"), [("quantiles", None), ("moments", 0.5), ("moments", 0.0)])
def test_faiss_refuses_calibrations_it_cannot_give_at_start_up(tiny_run, tmp_path, cal, weight):
    pytest.importorskip("faiss")
    with pytest.raises(ConfigError, match="--index faiss-hnsw returns only the top-K"):
        engine(tiny_run, tmp_path, index="faiss-hnsw", **calibrate(cal, weight))
    # without added items there is nothing to calibrate
    Engine.load([str(tiny_run)], ServeConfig(index="faiss-hnsw", **calibrate(cal, weight))).close()


def test_a_map_without_a_text_encoder_is_served_with_text_weight_0_only(tiny_run, tmp_path):
    cfg = ServeConfig(items_db=tmp_path / "items.sqlite", cold_start=STANDIN)
    served = Engine.load([str(tiny_run)], cfg)
    assert "no text encoder" in served.cold_problem and "--cold-text-weight 0" in served.cold_problem
    served.close()


@pytest.mark.parametrize(
    "bad",
    [{"cold_calibration": "zscore"}, {"cold_text_weight": 1.5}, {"cold_text_weight": -0.1},
     {"cold_calibration": "none", "cold_text_weight": 0.5}],
)  # fmt: skip
def test_serve_config_rejects_bad_cold_scoring(bad):
    with pytest.raises(ConfigError, match="cold_"):
        ServeConfig.build(bad, where="serve options")


def test_the_cli_rejects_a_bad_text_weight(tiny_run):
    result = run_to_completion(tiny_run, "--cold-text-weight", "2")
    assert result.returncode == 2 and "cold_text_weight" in result.stderr


def test_a_real_server_ranks_added_items_calibrated(tiny_run, tmp_path):
    """The server process (default flags, then quantiles) gives the engine's calibrated scores."""
    items = [("twin-5", "Item number 5"), ("toner", "Rose water facial toner")]
    for flags, options in [((), {}), (("--cold-calibration", "quantiles"), {"cold_calibration": "quantiles"})]:
        served = engine(tiny_run, tmp_path, **options)
        for item_id, title in items:
            served.add_item(item_id, title, None, [])
        want = dense(served, [(3, 4)])[0]
        ids = served.catalogue.ids
        served.close()
        db = tmp_path / f"server-{len(flags)}.sqlite"
        with Server(tiny_run, "--items-db", db, "--cold-start", HASH_MAP, *flags) as server, server.client() as c:
            for item_id, title in items:
                assert c.post("/v1/items", json={"item_id": item_id, "title": title}).status_code == 201
            got = {i["item_id"]: i["score"] for i in recommend(c, ["it3", "it4"], k=N + 2)["items"]}
        assert got == pytest.approx({ids[col]: float(s) for col, s in enumerate(want)}, rel=1e-5, abs=1e-6)
