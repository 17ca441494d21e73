"""The backend registry alone chooses the backend of a ``--llm`` spec (no model is loaded here)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest

from intentrec.errors import ConfigError, IntentrecError
from intentrec.semantic.llm import BACKENDS, get_llm, parse_spec, resolve_llm_identity
from intentrec.semantic.llm.base import Generation, LLMBackend, LLMSpec, choose_backend, load_all


class ToyBackend(LLMBackend):
    """Claims ``toy:NAME`` and answers every prompt with NAME."""

    @classmethod
    def claims(cls, spec: str) -> bool:
        return spec.startswith("toy:")

    @classmethod
    def spec_forms(cls) -> list[str]:
        return ["toy:NAME"]

    @classmethod
    def parse_spec(cls, spec: str, opts: dict[str, Any]) -> LLMSpec:
        return LLMSpec(cls.registry_name, spec[4:])

    @classmethod
    def spec_identity(cls, spec: LLMSpec, opts: dict[str, Any]) -> dict[str, str]:
        return {"backend": cls.registry_name, "model": spec.target, "model_sha256": "0" * 64}

    @classmethod
    def from_spec(cls, spec: LLMSpec, opts: dict[str, Any], *, text: str) -> ToyBackend:
        return cls(spec.target, **opts)

    def __init__(self, answer: str, shout: bool = False):
        self.answer = answer.upper() if shout else answer

    def identity(self) -> dict[str, str]:
        return {"backend": self.registry_name, "model": self.answer, "model_sha256": "0" * 64}

    def generate(self, prompts, decoding, on_result=None):
        out = [Generation(self.answer, 1, 1, 0.0) for _ in prompts]
        for i, gen in enumerate(out):
            if on_result is not None:
                on_result(i, gen)
        return out


@pytest.fixture
def toy() -> Iterator[type[ToyBackend]]:
    load_all()
    BACKENDS.register("toy")(ToyBackend)
    try:
        yield ToyBackend
    finally:
        BACKENDS.unregister("toy")


def test_every_backend_is_listed_on_first_use():
    load_all()
    assert {"llamacpp", "openai", "transformers"} <= set(BACKENDS.names())


def test_a_registered_backend_is_chosen_for_the_specs_it_claims(toy):
    assert choose_backend("toy:hello") is toy
    assert parse_spec("toy:hello") == LLMSpec("toy", "hello")
    assert resolve_llm_identity("toy:hello") == {"backend": "toy", "model": "hello", "model_sha256": "0" * 64}
    llm = get_llm("toy:hello", shout=True)
    assert isinstance(llm, toy) and llm.answer == "HELLO"
    assert [g.text for g in llm.generate([[{"role": "user", "content": "hi"}]], None)] == ["HELLO"]
    # the built-in forms are still chosen by their own backends
    assert parse_spec("smollm2").backend == "llamacpp"
    assert parse_spec("http://h:1/v1#m").backend == "openai"
    with pytest.raises(ConfigError, match="toy:NAME"):  # the error lists the new form too
        parse_spec("nothing-claims-this")


def test_an_unregistered_backend_is_no_longer_chosen():
    load_all()
    BACKENDS.register("toy")(ToyBackend)
    BACKENDS.unregister("toy")
    assert "toy" not in BACKENDS
    with pytest.raises(ConfigError, match="'toy:hello' is not"):
        get_llm("toy:hello")
    with pytest.raises(ConfigError, match="unknown LLM backend 'toy'"):
        BACKENDS.unregister("toy")


def test_an_unknown_spec_names_the_known_forms():
    for spec in ("gpt-17", "hf", "ftp://host/v1", "model.bin"):
        with pytest.raises(ConfigError) as exc:
            get_llm(spec)
        msg = str(exc.value)
        assert repr(spec) in msg and "not a known model (" in msg
        for form in ("smollm2", "a .gguf file", "hf:PATH", "http(s):// URL", "llamacpp, openai, transformers"):
            assert form in msg
    with pytest.raises(ConfigError, match=r"empty --llm; give a known model .*hf:PATH"):
        resolve_llm_identity("  ")


def test_prefix_forms_outrank_the_gguf_suffix(tmp_path):
    folder = tmp_path / "tiny.gguf"
    folder.mkdir()
    assert parse_spec(f"hf:{folder}") == LLMSpec("transformers", str(folder.resolve()))
    assert parse_spec("http://h:1/v1#m.gguf") == LLMSpec("openai", "http://h:1/v1", model="m.gguf")


def test_a_missing_optional_package_is_named_when_its_backend_is_chosen(tmp_path, monkeypatch):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"not really a model")
    folder = tmp_path / "hf-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    monkeypatch.setenv("INTENTREC_HOME", str(tmp_path / "home"))
    for name in ("llama_cpp", "openai", "transformers"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    load_all()
    assert {"llamacpp", "openai", "transformers"} <= set(BACKENDS.names())
    cases = {
        str(gguf): "needs llama-cpp-python; install it with",
        "http://127.0.0.1:9/v1#m": "needs the 'openai' package: pip install",
        f"hf:{folder}": "needs 'transformers': pip install",
    }
    for spec, message in cases.items():
        assert resolve_llm_identity(spec)["model_sha256"]  # naming the model needs no package
        with pytest.raises(IntentrecError, match=message):
            get_llm(spec)
