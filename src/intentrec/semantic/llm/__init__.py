"""LLM backends: ``get_llm(spec)`` loads one, ``resolve_llm_identity(spec)`` names it without loading.

A spec is one of

* a shipped model's short name: ``smollm2``, ``qwen0.5b`` (default), ``qwen1.5b`` (llama.cpp);
* a path to a ``.gguf`` file (llama.cpp);
* ``hf:PATH``, a local Hugging Face causal-LM folder (transformers);
* an ``http(s)://`` base URL of an OpenAI-compatible server; the model name is given as the
  ``model`` option or after ``#`` (``http://127.0.0.1:8000/v1#qwen2.5-0.5b``).

Options (``**opts``) go to the backend's config (:class:`LlamaCppConfig`, :class:`HFConfig`,
:class:`OpenAIConfig`); unknown keys are rejected.

The backend is chosen by the registry :data:`BACKENDS` alone: each registered backend class says
which specs it claims (see :mod:`intentrec.semantic.llm.base`), so a new backend is one registered
class, with no change here.
"""

from __future__ import annotations

from typing import Any

from intentrec.semantic.llm.base import (
    BACKENDS,
    DecodingConfig,
    Generation,
    LLMBackend,
    LLMSpec,
    choose_backend,
    load_all,
)
from intentrec.semantic.llm.models import DEFAULT_MODEL


def parse_spec(spec: str, opts: dict[str, Any] | None = None) -> LLMSpec:
    """Split a spec with the backend that claims it; unknown specs name the known forms."""
    spec = (spec or "").strip()
    return choose_backend(spec).parse_spec(spec, dict(opts or {}))


def resolve_llm_identity(spec: str, **opts: Any) -> dict[str, str]:
    """``{"backend", "model", "model_sha256"}`` for a spec, without loading any weights.

    Shipped models use their pinned sha256 (no hashing, the packages need not be installed); local
    files are hashed once and cached by path, size and mtime.
    """
    parsed = parse_spec(spec, opts)
    return BACKENDS.get(parsed.backend).spec_identity(parsed, opts)


def get_llm(spec: str = DEFAULT_MODEL, **opts: Any) -> LLMBackend:
    """Load the backend a spec names (see the module docstring)."""
    parsed = parse_spec(spec, opts)
    return BACKENDS.get(parsed.backend).from_spec(parsed, opts, text=spec)


__all__ = [
    "BACKENDS",
    "DEFAULT_MODEL",
    "DecodingConfig",
    "Generation",
    "LLMBackend",
    "LLMSpec",
    "choose_backend",
    "get_llm",
    "load_all",
    "parse_spec",
    "resolve_llm_identity",
]
