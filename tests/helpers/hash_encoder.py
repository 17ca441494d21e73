"""A deterministic stand-in text encoder for tests: equal texts get equal vectors (from the sha256)."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from intentrec.config import Config
from intentrec.semantic.encoders import ENCODERS, TextEncoder


def register_hash_encoder(name: str, dim: int) -> str:
    """Register, once, a hash encoder of width ``dim`` (at most 32) under ``name``; returns ``name``."""
    if name in ENCODERS:
        return name
    width = dim

    class HashEncoderConfig(Config):
        dim: int = width

    class HashEncoder(TextEncoder):
        config_class = HashEncoderConfig

        def __init__(self, config: HashEncoderConfig):
            self.dim = config.dim

        def encode(self, texts: list[str], *, normalize: bool = False, batch_size: int = 64) -> np.ndarray:
            raw = [np.frombuffer(hashlib.sha256(t.encode()).digest(), dtype=np.uint8)[: self.dim] for t in texts]
            out = np.asarray(raw, dtype=np.float32).reshape(len(texts), self.dim) - 127.5
            return out / np.linalg.norm(out, axis=1, keepdims=True) if normalize else out

        def identity(self) -> dict[str, Any]:
            return {"backend": name, "dim": self.dim}

    ENCODERS.register(name)(HashEncoder)
    return name
