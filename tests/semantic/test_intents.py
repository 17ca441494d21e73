"""Catalogue embeddings and per-example intents (``embed_catalogue``, ``compute_intents``) on a tiny
hand-written prepared dataset. The ``embed`` / ``intents`` / ``cache`` commands are tested in
tests/cli/test_cli_semantic.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from intentrec.data import schema
from intentrec.semantic.encoders import get_encoder
from intentrec.semantic.intents import (
    catalogue_paths,
    compute_intents,
    embed_catalogue,
    load_intents,
)
from intentrec.semantic.localization import localize
from intentrec.semantic.store import AnswerStore
from tests.helpers.intents import ALL_IDS, LLM, TITLES, make_tiny_bert, put_answers, write_dataset


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTENTREC_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert-intents"))


def test_embed_catalogue_writes_rows_in_item_order_and_reuses_the_file(tmp_path: Path, tiny_bert: Path) -> None:
    data = write_dataset(tmp_path / "ds")
    encoder = get_encoder(f"hf:{tiny_bert}")
    result = embed_catalogue(data, encoder)
    assert not result.reused_file and result.cache.encoded == 7
    npy, info_path = catalogue_paths(data, encoder.identity_key())
    assert result.path == npy and npy.parent == data / "semantic"
    assert (
        npy.name == f"items.{encoder.identity_key()}.npy" and info_path.name == f"items.{encoder.identity_key()}.json"
    )
    stored = np.load(npy)
    expected = encoder.encode([t or "item P5" for t in TITLES], normalize=True)
    np.testing.assert_allclose(stored, expected, atol=1e-5)
    info = json.loads(info_path.read_text())
    assert info["untitled_items"] == 1 and info["normalize"] is True and info["dim"] == 16
    again = embed_catalogue(data, encoder)
    assert again.reused_file
    # Changing one title invalidates the file but only that text is re-encoded (embedding cache).
    table = pq.read_table(data / schema.ITEMS).to_pydict()
    table["title"][2] = "blue garden hose"
    pq.write_table(pa.table(table, schema=pq.read_schema(data / schema.ITEMS)), data / schema.ITEMS)
    third = embed_catalogue(data, encoder)
    assert not third.reused_file and third.cache.encoded == 1 and third.cache.reused == 6


def test_intents_localize_answers_and_report_coverage(tmp_path: Path, tiny_bert: Path) -> None:
    data = write_dataset(tmp_path / "ds")
    encoder = get_encoder(f"hf:{tiny_bert}")
    with AnswerStore() as store:
        put_answers(
            store,
            data,
            "llm4sbr-long",
            {
                0: "1. red nail polish [ID: P1]",
                1: "Sure! The user might like garden hose.",
                2: "   ",  # empty
                3: "???",  # garbage
                6: "red lipstick",
            },
        )
        put_answers(store, data, "llm4sbr-short", {4: "shampoo"})  # another template: not used
        result = compute_intents(
            data, template="llm4sbr-long", llm_identity=LLM, encoder=encoder, k=2, split="all", store=store
        )
    cov = result.coverage
    assert (cov.examples, cov.with_intent, cov.missing, cov.empty, cov.garbage, cov.stale) == (8, 3, 3, 1, 1, 0)
    assert cov.missing_example_ids == [4, 5, 7]
    assert cov.by_split["test"] == {"with_intent": 1, "missing": 1}
    assert result.example_ids.tolist() == ALL_IDS
    assert result.has_intent.tolist() == [True, True, False, False, False, False, True, False]

    catalogue = np.load(catalogue_paths(data, encoder.identity_key())[0])
    answers = encoder.encode(["red nail polish", "garden hose", "red lipstick"], normalize=True)
    expected = localize(answers, catalogue, 2)
    np.testing.assert_allclose(result.vectors[[0, 1, 6]], expected, atol=1e-5)
    assert not result.vectors[[2, 3, 4, 5, 7]].any()

    tensors, meta = load_intents(result.path)
    assert tensors["example_ids"].tolist() == ALL_IDS
    np.testing.assert_array_equal(tensors["vectors"], result.vectors)
    assert json.loads(meta["llm"]) == LLM and meta["template"] == "llm4sbr-long" and meta["k"] == "2"
    report = json.loads(result.report_path.read_text())
    assert report["coverage"]["with_intent"] == 3 and report["coverage"]["fraction"] == pytest.approx(3 / 8)


def test_k0_keeps_the_raw_answer_embedding(tmp_path: Path, tiny_bert: Path) -> None:
    data = write_dataset(tmp_path / "ds")
    encoder = get_encoder(f"hf:{tiny_bert}")
    with AnswerStore() as store:
        put_answers(store, data, "llm4sbr-long", {6: "blue hose"})
        result = compute_intents(
            data, template="llm4sbr-long", llm_identity=LLM, encoder=encoder, k=0, split="test", store=store
        )
    assert result.example_ids.tolist() == [6, 7]
    np.testing.assert_allclose(result.vectors[0], encoder.encode(["blue hose"], normalize=True)[0], atol=1e-5)
    assert result.path.name.endswith(".k0.test.safetensors")


def test_multi_intent_answers_are_averaged_and_kept_per_intent(tmp_path: Path, tiny_bert: Path) -> None:
    data = write_dataset(tmp_path / "ds")
    encoder = get_encoder(f"hf:{tiny_bert}")
    with AnswerStore() as store:
        put_answers(store, data, "dmsrec", {0: "red lipstick; garden hose; Red Lipstick", 5: "shampoo"})
        result = compute_intents(
            data, template="dmsrec", llm_identity=LLM, encoder=encoder, k=1, split="all", store=store
        )
    tensors, _ = load_intents(result.path)
    assert tensors["intent_counts"].tolist() == [2, 0, 0, 0, 0, 1, 0, 0]
    catalogue = np.load(catalogue_paths(data, encoder.identity_key())[0])
    per = localize(encoder.encode(["red lipstick", "garden hose", "shampoo"], normalize=True), catalogue, 1)
    np.testing.assert_allclose(tensors["intent_vectors"][0, :2], per[:2], atol=1e-5)
    np.testing.assert_allclose(tensors["intent_vectors"][5, 0], per[2], atol=1e-5)
    assert not tensors["intent_vectors"][5, 1].any()
    np.testing.assert_allclose(tensors["vectors"][0], per[:2].mean(axis=0), atol=1e-5)


def test_answers_from_another_template_version_are_stale(tmp_path: Path, tiny_bert: Path) -> None:
    data = write_dataset(tmp_path / "ds")
    with AnswerStore() as store:
        put_answers(store, data, "llm4sbr-long", {0: "red nail polish"}, version="0")
        result = compute_intents(
            data,
            template="llm4sbr-long",
            llm_identity=LLM,
            encoder=get_encoder(f"hf:{tiny_bert}"),
            k=1,
            split="train",
            store=store,
        )
    assert result.coverage.stale == 1 and result.coverage.with_intent == 0
    assert result.coverage.unusable_example_ids == [0]
