"""``intentrec embed`` / ``intents`` / ``cache stats`` on a tiny hand-written prepared dataset."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from intentrec.data import schema
from intentrec.semantic.encoders import get_encoder
from intentrec.semantic.intents import (
    catalogue_paths,
    compute_intents,
    embed_catalogue,
    load_intents,
)
from intentrec.semantic.localization import localize
from intentrec.semantic.store import (
    AnswerRecord,
    AnswerStore,
    answer_key,
    dataset_fingerprint,
)

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "red", "nail", "polish", "blue", "garden", "hose",
         "a", "lipstick", "mascara", "shampoo"]
TITLES = ["red nail polish", "blue nail polish", "garden hose", "red lipstick", None, "blue mascara", "shampoo"]
# Sessions of item indices (1..7); examples are every proper prefix.
SESSIONS = {"train": [[1, 2, 3], [4, 6, 7, 1]], "valid": [[2, 4]], "test": [[5, 1, 3]]}
LLM = {"backend": "llamacpp", "model": "fake.gguf", "model_sha256": "f" * 64}


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTENTREC_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("tiny-bert-intents")
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    transformers.BertTokenizer(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    config = transformers.BertConfig(
        vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32,
    )
    torch.manual_seed(1)
    transformers.BertModel(config).save_pretrained(folder)
    return folder


def write_dataset(folder: Path) -> Path:
    """A prepared dataset in the layout of intentrec.data.schema, written by hand."""
    folder.mkdir(parents=True)
    n = len(TITLES)
    pq.write_table(
        pa.table({
            "item_index": pa.array(range(1, n + 1), pa.int32()),
            "item_id": pa.array([f"P{i}" for i in range(1, n + 1)]),
            "title": pa.array(TITLES, pa.string()),
            "train_count": pa.array([1] * n, pa.int64()),
        }),
        folder / schema.ITEMS,
    )
    sessions, examples = [], []
    for split in schema.SPLITS:
        for clicks in SESSIONS[split]:
            sessions.append((len(sessions), f"s{len(sessions)}", split, clicks))
            for cut in range(1, len(clicks)):
                examples.append((len(examples), split, sessions[-1][0], clicks[:cut], clicks[cut]))
    cols = list(zip(*sessions))
    pq.write_table(
        pa.table({
            "session_index": pa.array(cols[0], pa.int64()), "session_id": pa.array(cols[1]),
            "split": pa.array(cols[2]), "items": pa.array(cols[3], pa.list_(pa.int32())),
        }),
        folder / schema.SESSIONS,
    )
    cols = list(zip(*examples))
    pq.write_table(
        pa.table({
            "example_id": pa.array(cols[0], pa.int64()), "split": pa.array(cols[1]),
            "session_index": pa.array(cols[2], pa.int64()), "prefix": pa.array(cols[3], pa.list_(pa.int32())),
            "target": pa.array(cols[4], pa.int32()),
        }),
        folder / schema.EXAMPLES,
    )
    manifest = {"format_version": schema.FORMAT_VERSION, "statistics": {"items": n, "examples": len(examples)}}
    (folder / schema.MANIFEST).write_text(json.dumps(manifest))
    return folder


# example ids: train 0,1 (session 0), 2,3,4 (session 1); valid 5; test 6,7
ALL_IDS = list(range(8))


def put_answers(store: AnswerStore, dataset: Path, template: str, answers: dict[int, str], version: str = "1") -> None:
    fp = dataset_fingerprint(dataset)
    records, pairs = [], []
    for eid, text in answers.items():
        prompt = f"prompt for example {eid}"
        key = answer_key(LLM["backend"], LLM["model_sha256"], {"temperature": 0.0}, version, prompt)
        records.append(AnswerRecord(key, LLM["backend"], LLM["model"], LLM["model_sha256"], template, version,
                                    '{"temperature": 0.0}', prompt, text))
        pairs.append((eid, key))
    store.put_many(records)
    store.link_examples(fp, template, LLM["model_sha256"], pairs)


# -- library level ------------------------------------------------------------------------------------
def test_embed_catalogue_writes_rows_in_item_order_and_reuses_the_file(tmp_path: Path, tiny_bert: Path) -> None:
    data = write_dataset(tmp_path / "ds")
    encoder = get_encoder(f"hf:{tiny_bert}")
    result = embed_catalogue(data, encoder)
    assert not result.reused_file and result.cache.encoded == 7
    npy, info_path = catalogue_paths(data, encoder.identity_key())
    assert result.path == npy and npy.parent == data / "semantic"
    assert npy.name == f"items.{encoder.identity_key()}.npy" and info_path.name == f"items.{encoder.identity_key()}.json"
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
        put_answers(store, data, "llm4sbr-long", {
            0: "1. red nail polish [ID: P1]",
            1: "Sure! The user might like garden hose.",
            2: "   ",  # empty
            3: "???",  # garbage
            6: "red lipstick",
        })
        put_answers(store, data, "llm4sbr-short", {4: "shampoo"})  # another template: not used
        result = compute_intents(data, template="llm4sbr-long", llm_identity=LLM, encoder=encoder, k=2,
                                 split="all", store=store)
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
        result = compute_intents(data, template="llm4sbr-long", llm_identity=LLM, encoder=encoder, k=0,
                                 split="test", store=store)
    assert result.example_ids.tolist() == [6, 7]
    np.testing.assert_allclose(result.vectors[0], encoder.encode(["blue hose"], normalize=True)[0], atol=1e-5)
    assert result.path.name.endswith(".k0.test.safetensors")


def test_multi_intent_answers_are_averaged_and_kept_per_intent(tmp_path: Path, tiny_bert: Path) -> None:
    data = write_dataset(tmp_path / "ds")
    encoder = get_encoder(f"hf:{tiny_bert}")
    with AnswerStore() as store:
        put_answers(store, data, "dmsrec", {0: "red lipstick; garden hose; Red Lipstick", 5: "shampoo"})
        result = compute_intents(data, template="dmsrec", llm_identity=LLM, encoder=encoder, k=1,
                                 split="all", store=store)
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
        result = compute_intents(data, template="llm4sbr-long", llm_identity=LLM,
                                 encoder=get_encoder(f"hf:{tiny_bert}"), k=1, split="train", store=store)
    assert result.coverage.stale == 1 and result.coverage.with_intent == 0
    assert result.coverage.unusable_example_ids == [0]


# -- command line -------------------------------------------------------------------------------------
def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    from intentrec.cli.main import main

    monkeypatch.setattr(sys, "argv", ["intentrec", *args])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_cache_stats_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    data = write_dataset(tmp_path / "ds")
    code, out, _ = run_cli(["cache", "stats", "--json"], monkeypatch, capsys)
    assert code == 0 and json.loads(out)["answers"] == 0
    with AnswerStore() as store:
        put_answers(store, data, "llm4sbr-long", {0: "a", 1: "b"})
        put_answers(store, data, "dmsrec", {0: "c"})
    code, out, _ = run_cli(["cache", "stats", "--json"], monkeypatch, capsys)
    stats = json.loads(out)
    assert code == 0
    assert stats["answers"] == 2 and stats["distinct_prompts"] == 2  # dmsrec reused the same prompt text → same key
    code, out, _ = run_cli(["cache", "stats"], monkeypatch, capsys)
    assert code == 0 and "2 answers" in out and "llm4sbr-long" in out


def test_cli_cache_stats_missing_store_is_a_clean_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    code, _, err = run_cli(["cache", "stats", "--store", str(tmp_path / "nope.sqlite")], monkeypatch, capsys)
    assert code == 2 and "nope.sqlite" in err and "Traceback" not in err


def test_cli_embed_and_intents(
    tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    data = write_dataset(tmp_path / "ds")
    code, out, err = run_cli(["embed", str(data), "--encoder", f"hf:{tiny_bert}", "--json"], monkeypatch, capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["items"] == 7 and summary["dim"] == 16 and summary["encoded_texts"] == 7
    assert Path(summary["path"]).is_file()
    code, out, _ = run_cli(["embed", str(data), "--encoder", f"hf:{tiny_bert}"], monkeypatch, capsys)
    assert code == 0 and "up to date" in out

    import intentrec.cli.semantic as cli_semantic

    monkeypatch.setattr(cli_semantic, "resolve_llm_identity", lambda spec: LLM)
    with AnswerStore() as store:
        put_answers(store, data, "llm4sbr-short", {6: "red nail polish", 7: "blue"})
    args = ["intents", str(data), "--prompt", "llm4sbr-short", "--llm", "fake.gguf", "--k", "2",
            "--encoder", f"hf:{tiny_bert}", "--split", "test"]
    code, out, err = run_cli([*args, "--json"], monkeypatch, capsys)
    assert code == 0, err
    report = json.loads(out)
    assert (report["examples"], report["with_intent"], report["missing"]) == (2, 2, 0)
    tensors, _ = load_intents(report["path"])
    assert tensors["example_ids"].tolist() == [6, 7] and tensors["vectors"].shape == (2, 16)
    code, out, _ = run_cli(args[:-2] + ["--split", "valid"], monkeypatch, capsys)
    assert code == 0 and "0/1" in out and "intentrec infer" in out


def test_cli_intents_errors_are_clean(
    tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    data = write_dataset(tmp_path / "ds")
    code, _, err = run_cli(["intents", str(data), "--prompt", "nope", "--llm", "x"], monkeypatch, capsys)
    assert code == 2 and "unknown prompt template 'nope'" in err
    code, _, err = run_cli(["embed", str(tmp_path / "missing"), "--encoder", f"hf:{tiny_bert}"], monkeypatch, capsys)
    assert code == 2 and "manifest.json" in err and "Traceback" not in err


def test_cli_intents_with_the_real_llm_identity_of_a_gguf_path(
    tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("intentrec.semantic.llm")
    import hashlib

    data = write_dataset(tmp_path / "ds")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF not really a model")
    sha = hashlib.sha256(gguf.read_bytes()).hexdigest()
    with AnswerStore() as store:
        put_answers(store, data, "llm4sbr-long", {6: "red lipstick"})
        store.link_examples(dataset_fingerprint(data), "llm4sbr-long", sha,
                            store.linked_keys(dataset_fingerprint(data), "llm4sbr-long", LLM["model_sha256"], [6]).items())
    code, out, err = run_cli(["intents", str(data), "--prompt", "llm4sbr-long", "--llm", str(gguf),
                              "--encoder", f"hf:{tiny_bert}", "--split", "test", "--json"], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(out)["with_intent"] == 1


@pytest.mark.slow
def test_cli_embed_with_minilm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("sentence_transformers")
    data = write_dataset(tmp_path / "ds")
    code, out, err = run_cli(["embed", str(data), "--json"], monkeypatch, capsys)
    assert code == 0, err
    summary = json.loads(out)
    vectors = np.load(summary["path"])
    assert vectors.shape == (7, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # "red nail polish" is closer to "blue nail polish" than to "garden hose".
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
