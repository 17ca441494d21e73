"""LLM backends: ``get_llm(spec)`` loads one, ``resolve_llm_identity(spec)`` names it without loading.

A spec is one of

* a shipped model's short name: ``smollm2``, ``qwen0.5b`` (default), ``qwen1.5b`` (llama.cpp);
* a path to a ``.gguf`` file (llama.cpp);
* ``hf:PATH``, a local Hugging Face causal-LM folder (transformers);
* an ``http(s)://`` base URL of an OpenAI-compatible server; the model name is given as the
  ``model`` option or after ``#`` (``http://127.0.0.1:8000/v1#qwen2.5-0.5b``).

Options (``**opts``) go to the backend's config (:class:`LlamaCppConfig`, :class:`HFConfig`,
:class:`OpenAIConfig`); unknown keys are rejected.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from intentrec.errors import ConfigError, IntentrecError
from intentrec.semantic.llm.base import BACKENDS, DecodingConfig, Generation, LLMBackend
from intentrec.semantic.llm.models import (
    DEFAULT_MODEL,
    SHIPPED,
    cached_sha256,
    ensure_shipped_model,
    folder_sha256,
)


@dataclass(frozen=True)
class LLMSpec:
    backend: str  # llamacpp | transformers | openai
    target: str  # shipped name, file/folder path, or base URL
    model: str | None = None  # served model name (openai)
    shipped: bool = False


def parse_spec(spec: str, opts: dict[str, Any] | None = None) -> LLMSpec:
    spec = (spec or "").strip()
    if not spec:
        raise ConfigError("empty --llm; give a model name (" + ", ".join(sorted(SHIPPED)) + "), a .gguf path, hf:PATH or a URL")
    if spec in SHIPPED:
        return LLMSpec("llamacpp", spec, shipped=True)
    if spec.startswith(("http://", "https://")):
        url, _, fragment = spec.partition("#")
        model = (opts or {}).get("model") or fragment or None
        return LLMSpec("openai", url.rstrip("/"), model=model)
    if spec.startswith("hf:"):
        path = Path(spec[3:]).expanduser()
        if not path.is_dir():
            raise IntentrecError(f"--llm {spec}: no Hugging Face model folder at {path}")
        return LLMSpec("transformers", str(path.resolve()))
    if spec.lower().endswith(".gguf"):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise IntentrecError(f"--llm {spec}: GGUF file not found")
        return LLMSpec("llamacpp", str(path.resolve()))
    raise ConfigError(
        f"--llm {spec!r} is not a known model ({', '.join(sorted(SHIPPED))}), a .gguf file, "
        "hf:PATH or an http(s):// URL"
    )


def _openai_identity(model: str | None, opts: dict[str, Any]) -> dict[str, str]:
    if not model:
        raise ConfigError(
            "an OpenAI-compatible --llm URL needs the served model name: URL#MODEL or the 'model' option"
        )
    # A server does not tell which weights it serves; the name stands in for them unless the user
    # pins the weights' sha256 (e.g. of the GGUF that llama_cpp.server loaded).
    sha = opts.get("model_sha256") or hashlib.sha256(f"openai-model:{model}".encode()).hexdigest()
    return {"backend": "openai", "model": str(model), "model_sha256": str(sha)}


def resolve_llm_identity(spec: str, **opts: Any) -> dict[str, str]:
    """``{"backend", "model", "model_sha256"}`` for a spec, without loading any weights.

    Shipped models use their pinned sha256 (no hashing, the packages need not be installed); local
    files are hashed once and cached by path, size and mtime.
    """
    parsed = parse_spec(spec, opts)
    if parsed.backend == "openai":
        return _openai_identity(parsed.model, opts)
    if parsed.shipped:
        return {"backend": "llamacpp", "model": parsed.target, "model_sha256": SHIPPED[parsed.target].sha256}
    if parsed.backend == "llamacpp":
        return {"backend": "llamacpp", "model": Path(parsed.target).name, "model_sha256": cached_sha256(parsed.target)}
    return {"backend": "transformers", "model": Path(parsed.target).name, "model_sha256": folder_sha256(parsed.target)}


def get_llm(spec: str = DEFAULT_MODEL, **opts: Any) -> LLMBackend:
    """Load the backend a spec names (see the module docstring)."""
    parsed = parse_spec(spec, opts)
    if parsed.backend == "llamacpp":
        from intentrec.semantic.llm.llamacpp import LlamaCppBackend, LlamaCppConfig

        config = LlamaCppConfig.build(opts, where=f"llamacpp options for {spec}")
        path = ensure_shipped_model(parsed.target) if parsed.shipped else Path(parsed.target)
        return LlamaCppBackend(path, resolve_llm_identity(spec), config)
    if parsed.backend == "transformers":
        from intentrec.semantic.llm.hf import HFConfig, TransformersBackend

        config = HFConfig.build(opts, where=f"transformers options for {spec}")
        return TransformersBackend(parsed.target, resolve_llm_identity(spec), config)
    from intentrec.semantic.llm.openai_backend import OpenAIBackend, OpenAIConfig

    values = dict(opts)
    if parsed.model:
        values["model"] = parsed.model
    config = OpenAIConfig.build(values, where=f"openai options for {spec}")
    return OpenAIBackend(parsed.target, _openai_identity(config.model, values), config)


__all__ = [
    "BACKENDS",
    "DEFAULT_MODEL",
    "DecodingConfig",
    "Generation",
    "LLMBackend",
    "LLMSpec",
    "get_llm",
    "parse_spec",
    "resolve_llm_identity",
]
