"""Decoder LLMs as text encoders: pooled hidden states of a causal language model.

Three backends, registered in :data:`intentrec.semantic.encoders.ENCODERS`:

* ``llamacpp`` (spec ``llm:MODEL[:mean|last]``) — a GGUF model in llama.cpp's embedding mode
  (``Llama(embedding=True, pooling_type=MEAN|LAST)``). ``MODEL`` is a shipped model's short name
  (``smollm2``, ``qwen0.5b``, ``qwen1.5b``; see :mod:`intentrec.semantic.llm.models`) or a path to a
  ``.gguf`` file. Texts are packed several to a ``llama_decode`` call, each in its own sequence, so a
  text's vector does not depend on the others in its batch.
* ``openai-embeddings`` (spec ``openai:URL#MODEL``) — the ``/v1/embeddings`` route of an
  OpenAI-compatible server (vLLM, ``llama_cpp.server --embedding true``, …). The server decides the
  pooling; ``pooling`` here only records what it does (it goes into the identity).
* ``hf-lm`` (spec ``hf-lm:PATH[:mean|last]``) — a local Hugging Face causal-LM folder through
  ``transformers.AutoModel``: the last layer's hidden states, averaged over real tokens (``mean``) or
  taken at the last real token (``last``; right padding).

``mean`` averages over every token of the text (including a BOS token when the model's tokenizer adds
one); ``last`` is the state after the text's last token, the only one that has attended to the whole
text in a causal model. Vectors are float32; with ``normalize=True`` every row has unit L2 norm.

The identity of a local model includes the sha256 of its weights (a shipped GGUF's pinned sha256,
another file's cached sha256, every weights file of a folder) and the pooling, so vectors of two
models or two poolings never share a cache file.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from intentrec.config import Config
from intentrec.errors import ConfigError, IntentrecError
from intentrec.semantic.encoders import (
    ENCODERS,
    HFEncoder,
    TextEncoder,
    _quiet_offline_environment,
    masked_mean,
)

Pooling = Literal["mean", "last"]


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (an all-zero row stays zero), float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
class LlamaCppEmbedderConfig(Config):
    model: str  # a shipped model's name or a .gguf path
    pooling: Pooling = "mean"
    #: Longest text in tokens (longer ones are cut) and most tokens in one llama_decode call.
    max_length: int = Field(512, ge=8, le=32768)
    n_threads: int | None = Field(None, ge=1)  # None: half the usable cores, as the llamacpp LLM backend
    cpu_variant: str | None = None  # as the llamacpp LLM backend's (intentrec.semantic.llm.cpu_variants)
    verbose: bool = False


def _install_hint(name: str) -> str:
    return f'INTENTREC_LLM_MODELS="{name}" bash scripts/install-llm.sh'


@ENCODERS.register("llamacpp")
class LlamaCppEmbedder(TextEncoder):
    config_class = LlamaCppEmbedderConfig

    def __init__(self, config: LlamaCppEmbedderConfig):
        from intentrec.semantic.llm.models import SHIPPED, cached_sha256

        self.config = config
        self._llm = None
        self._dim: int | None = None
        if config.model in SHIPPED:
            self.shipped = True
            self.model_name = config.model
            self.model_sha256 = SHIPPED[config.model].sha256  # pinned: no hashing, no install needed
            self.path: Path | None = None
        elif config.model.lower().endswith(".gguf"):
            path = Path(config.model).expanduser()
            if not path.is_file():
                raise ConfigError(f"encoder llm:{config.model}: GGUF file not found")
            self.shipped = False
            self.path = path.resolve()
            self.model_name = self.path.name
            self.model_sha256 = cached_sha256(self.path)
        else:
            raise ConfigError(
                f"encoder llm:{config.model}: expected a shipped model ({', '.join(sorted(SHIPPED))}) "
                "or a path to a .gguf file"
            )

    def _load(self):
        if self._llm is not None:
            return self._llm
        from intentrec.semantic.llm.cpu_variants import ensure_cpu_backend
        from intentrec.semantic.llm.llamacpp import _import_llama_cpp, default_threads
        from intentrec.semantic.llm.models import ensure_shipped_model

        llama_cpp = _import_llama_cpp()
        ensure_cpu_backend(self.config.cpu_variant)
        if self.path is None:
            try:
                self.path = ensure_shipped_model(self.model_name)
            except IntentrecError as exc:
                raise IntentrecError(f"{exc} (or: {_install_hint(self.model_name)})") from None
        pooling = {"mean": llama_cpp.LLAMA_POOLING_TYPE_MEAN, "last": llama_cpp.LLAMA_POOLING_TYPE_LAST}
        threads = self.config.n_threads or default_threads()
        logging.getLogger("llama-cpp-python").setLevel(logging.DEBUG if self.config.verbose else logging.ERROR)
        n = self.config.max_length
        try:
            self._llm = llama_cpp.Llama(
                str(self.path),
                embedding=True,
                pooling_type=pooling[self.config.pooling],
                n_ctx=n,
                n_batch=n,
                n_ubatch=n,
                n_threads=threads,
                n_threads_batch=threads,
                flash_attn=False,
                verbose=self.config.verbose,
            )
        except (ValueError, RuntimeError) as exc:
            raise IntentrecError(f"llama.cpp could not load {self.path} in embedding mode: {exc}") from None
        self._dim = int(self._llm.n_embd())
        return self._llm

    @property
    def dim(self) -> int:  # type: ignore[override]
        self._load()
        assert self._dim is not None
        return self._dim

    def identity(self) -> dict[str, Any]:
        return {
            "backend": "llamacpp",
            "model": self.model_name,
            "model_sha256": self.model_sha256,
            "pooling": self.config.pooling,
            "max_length": self.config.max_length,
        }

    def encode(self, texts: list[str], *, normalize: bool = False, batch_size: int = 64) -> np.ndarray:
        llm = self._load()
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            # An empty text has no tokens (models without BOS) and so no state to pool: embed a space.
            chunk = [t or " " for t in texts[start : start + batch_size]]
            out[start : start + len(chunk)] = np.asarray(llm.embed(chunk, truncate=True), dtype=np.float32)
        return l2_normalize(out) if normalize else out

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None


# ---------------------------------------------------------------------------------------------------
class OpenAIEmbedderConfig(Config):
    base_url: str
    model: str | None = None  # the served model name (URL#MODEL)
    #: What the server's pooling is (it does not say); recorded in the identity, not sent.
    pooling: str = "server"
    model_sha256: str | None = None  # pin the served weights (default: a hash of the model name)
    api_key: str | None = None  # default: $OPENAI_API_KEY, else "EMPTY"
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(2, ge=0, le=20)  # the openai client's own retries (with backoff)


@ENCODERS.register("openai-embeddings")
class OpenAIEmbedder(TextEncoder):
    config_class = OpenAIEmbedderConfig

    def __init__(self, config: OpenAIEmbedderConfig):
        if not config.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"encoder openai:{config.base_url}: expected an http(s):// base URL (openai:URL#MODEL)")
        if not config.model:
            raise ConfigError(f"encoder openai:{config.base_url}: no model name (use openai:URL#MODEL)")
        self.config = config
        self.base_url = config.base_url.rstrip("/")
        self._client = None
        self._dim: int | None = None

    def _connect(self):
        if self._client is None:
            import os

            try:
                import openai
            except ImportError:
                raise IntentrecError(
                    "the openai encoder needs the 'openai' package: pip install 'intentrec[llm]'"
                ) from None
            self._client = openai.OpenAI(
                base_url=self.base_url,
                api_key=self.config.api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
                timeout=self.config.timeout_s,
                max_retries=self.config.max_retries,
            )
        return self._client

    def _request(self, texts: list[str]) -> np.ndarray:
        import openai

        client = self._connect()
        try:
            response = client.embeddings.create(model=self.config.model, input=texts, encoding_format="float")
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            raise IntentrecError(
                f"the embedding server at {self.base_url} does not answer ({exc.__class__.__name__}: {exc}); "
                "is it running?"
            ) from None
        except openai.APIStatusError as exc:
            raise IntentrecError(
                f"the embedding server at {self.base_url} refused the request: HTTP {exc.status_code} {exc.message}"
            ) from None
        data = sorted(response.data, key=lambda d: d.index)
        if len(data) != len(texts):
            raise IntentrecError(f"{self.base_url}: asked for {len(texts)} embeddings, got {len(data)}")
        rows = [d.embedding for d in data]
        if any(row and isinstance(row[0], list) for row in rows):
            raise IntentrecError(
                f"{self.base_url} returned one vector per token (the model is served without pooling): start "
                "llama_cpp.server with --kv_overrides ARCH.pooling_type=int:1 (mean) or int:3 (last), e.g. "
                "llama.pooling_type=int:1 for a Llama-architecture model"
            )
        vectors = np.asarray(rows, dtype=np.float32)
        if vectors.ndim != 2:
            raise IntentrecError(f"{self.base_url}: the embeddings do not all have the same length")
        return vectors

    @property
    def dim(self) -> int:  # type: ignore[override]
        if self._dim is None:
            self._dim = int(self._request(["dimension probe"]).shape[1])
        return self._dim

    def identity(self) -> dict[str, Any]:
        model = str(self.config.model)
        sha = self.config.model_sha256 or hashlib.sha256(f"openai-model:{model}".encode()).hexdigest()
        return {"backend": "openai-embeddings", "model": model, "model_sha256": sha, "pooling": self.config.pooling}

    def encode(self, texts: list[str], *, normalize: bool = False, batch_size: int = 64) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [self._request([t or " " for t in texts[s : s + batch_size]]) for s in range(0, len(texts), batch_size)]
        out = np.concatenate(parts)
        self._dim = int(out.shape[1])
        return l2_normalize(out) if normalize else out


# ---------------------------------------------------------------------------------------------------
class HFLMEmbedderConfig(Config):
    model: str  # folder path
    pooling: Pooling = "mean"
    max_length: int = Field(512, ge=8)
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


def last_token(hidden, attention_mask):
    """``hidden`` [B, T, d] at each row's last position where the (right-padded) mask is 1."""
    import torch

    last = attention_mask.sum(dim=1).clamp(min=1) - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


@ENCODERS.register("hf-lm")
class HFLMEmbedder(HFEncoder):
    """A causal LM's hidden states (mean over real tokens, or the last real token), right padding."""

    config_class = HFLMEmbedderConfig
    backend_name = "hf-lm"

    def _load(self) -> None:
        if self._model is not None:
            return
        _quiet_offline_environment()
        try:
            import torch
            from transformers import AutoModel, AutoTokenizer
        except ImportError:
            raise IntentrecError("the hf-lm encoder needs transformers: pip install 'intentrec[llm]'") from None
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True)
            model = AutoModel.from_pretrained(
                str(self.folder), local_files_only=True, dtype=getattr(torch, self.config.dtype)
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load a Hugging Face model from {self.folder}: {exc}") from None
        tokenizer.padding_side = "right"  # last-token pooling reads the last real position
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        self._tokenizer = tokenizer
        self._model = model.eval().to(self.config.device)

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "dtype": self.config.dtype}

    def _batch_texts(self, texts: list[str]) -> list[str]:
        return [t or " " for t in texts]  # an empty text would have no position to pool

    def _pool(self, hidden, attention_mask):
        hidden = hidden.float()
        return (
            masked_mean(hidden, attention_mask) if self.config.pooling == "mean" else last_token(hidden, attention_mask)
        )
