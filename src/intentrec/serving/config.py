"""Settings of ``intentrec serve``: one typed config that rejects unknown keys."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from intentrec.config import Config

IndexKind = Literal["auto", "exact", "faiss-hnsw", "faiss-ivf"]


class ServeConfig(Config):
    """What the server needs beyond the run folders (``intentrec serve --help`` lists the flags)."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535, description="0: any free port (printed at start-up)")
    device: str = "cpu"
    index: IndexKind = Field("auto", description="top-K search: exact torch.topk, or a FAISS inner-product index")
    faiss_above: int = Field(
        1_000_000, ge=1, description="index=auto: use FAISS HNSW above this many items (where the model allows it)"
    )
    max_batch: int = Field(64, ge=1, le=4096, description="requests scored in one forward pass at most")
    batch_window_ms: float = Field(
        0.5, ge=0, le=1000, description="how long the batcher waits for more requests after the first"
    )
    max_session: int = Field(200, ge=1, description="longest session a request may give")
    max_k: int = Field(1000, ge=1, description="largest k a request may ask for (and at most the catalogue)")
    max_body_bytes: int = Field(65_536, ge=1024, description="larger request bodies are refused with 413")
    items_db: Path | None = Field(None, description="SQLite file of added items (None: adding items is disabled)")
    cold_start: str = Field(
        "fit",
        description="'fit' (fit the cold-start map at start-up), 'off', a saved map file (.safetensors), "
        "or python:MODULE:FACTORY (FACTORY(model, dataset) returns the map)",
    )
    encoder: str | None = Field(
        None, description="text encoder of a cold-start map fitted at start-up (None: the model's own, else minilm)"
    )
    items_refresh_s: float = Field(
        2.0, ge=0, description="how often to pick up items other workers added to the same items_db (0: never)"
    )
    threads: int | None = Field(None, ge=1, description="torch threads of the model worker (None: torch's default)")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
