"""Settings of ``intentrec serve``: one typed config that rejects unknown keys."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from intentrec.config import Config

if TYPE_CHECKING:
    from intentrec.models.cold_start import ColdScoringConfig

IndexKind = Literal["auto", "exact", "faiss-hnsw", "faiss-ivf"]


class ServeConfig(Config):
    """What the server needs beyond the run folders (``intentrec serve --help`` lists the flags)."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535, description="0: any free port (printed at start-up)")
    device: str = "cpu"
    index: IndexKind = Field("auto", description="top-K search: exact torch.topk, or a FAISS inner-product index")
    faiss_breadth: int | None = Field(
        None,
        ge=1,
        description="FAISS search breadth: HNSW efSearch or IVF nprobe (None: 128 / 16); wider finds more of the "
        "exact top-K, slower (benchmarks/topk_faiss.py measures the trade-off)",
    )
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
    cold_calibration: Literal["moments", "quantiles", "none"] = Field(
        "moments",
        description="how added items' scores are put next to the trained items' (as intentrec evaluate --cold-start "
        "calibrates cold items): per session, onto the trained items' score mean and deviation (moments) or their "
        "quantiles; none: the placed rows' scores as the model computes them",
    )
    cold_text_weight: float | None = Field(
        None,
        ge=0,
        le=1,
        description="weight of the session–item text cosine in added items' calibrated scores, the rest being the "
        "model's score of the placed row (None: 1 with a calibration, 0 with none)",
    )
    items_refresh_s: float = Field(
        2.0, ge=0, description="how often to pick up items other workers added to the same items_db (0: never)"
    )
    threads: int | None = Field(None, ge=1, description="torch threads of the model worker (None: torch's default)")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    @model_validator(mode="after")
    def _cold_scoring_is_valid(self) -> ServeConfig:
        self.cold_scoring  # noqa: B018 - raises ValueError on a text weight without a calibration
        return self

    @property
    def cold_scoring(self) -> ColdScoringConfig:
        """The added items' scoring, as ``intentrec evaluate --cold-start`` takes it."""
        from intentrec.models.cold_start import ColdScoringConfig

        weight = self.cold_text_weight
        if weight is None:
            weight = 0.0 if self.cold_calibration == "none" else 1.0
        elif weight > 0 and self.cold_calibration == "none":
            raise ValueError(
                f"cold_text_weight {weight} blends z-scored scores, which are then calibrated: it needs "
                "cold_calibration moments or quantiles (none ranks the placed rows as they are)"
            )
        return ColdScoringConfig(calibration=self.cold_calibration, text_weight=weight)
