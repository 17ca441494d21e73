"""Trainer settings. A backbone's ``default_train`` (its paper's values) sits under the user's."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from intentrec.config import Config
from intentrec.search_space import Choice, FloatRange, SearchSpace

_METRIC = re.compile(r"^(HR|MRR|NDCG)@(\d+)$")

#: Fields that may change when a run is resumed (they do not change what is computed).
RESUMABLE_FIELDS = frozenset({"epochs", "eval_batch_size", "num_threads", "device", "keep_freed_memory"})


class TrainerConfig(Config):
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(100, ge=1)
    epochs: int = Field(30, ge=1, description="maximum number of epochs")
    l2: float = Field(0.0, ge=0, description="Adam weight_decay")
    lr_decay_step: int | None = Field(
        None, ge=0, description="StepLR step size in epochs; 0 or None keeps the learning rate constant"
    )
    lr_decay_gamma: float = Field(0.1, gt=0, le=1)
    patience: int | None = Field(
        3, ge=1, description="stop after this many epochs without improvement; None never stops"
    )
    select_metric: str = "MRR@20"
    select_on: Literal["valid", "test"] = "valid"
    track_test: bool = Field(
        False,
        description="also evaluate TEST every epoch in valid mode, for analysis only (never for selection)",
    )
    ks: tuple[int, ...] = (5, 10, 20)
    seed: int = 0
    max_length: int | None = Field(None, ge=1, description="keep only the last N clicks")
    eval_batch_size: int = Field(500, ge=1)
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads; None keeps torch's")
    device: str = Field("cpu", description="'cpu', 'cuda', 'cuda:N' or 'auto'")
    keep_freed_memory: bool = Field(
        True,
        description="keep large freed tensors in the heap between steps (glibc mallopt; "
        "training.allocator); false leaves malloc alone",
    )
    cold_start: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="hide this seeded fraction of the items from training (intentrec.data.cold_items); "
        "intentrec evaluate RUN --cold-start F ranks them from text",
    )
    cold_start_seed: int = Field(0, description="seed of the cold item set (the same set for every model and seed)")
    eval_sample: int | None = Field(
        None,
        ge=1,
        description="validate and test on a seeded sample of N examples of each split: the rows of "
        "intentrec evaluate RUN --sample N --seed S (and llm-rank --sample), the same for every model",
    )
    eval_sample_seed: int = Field(0, description="seed of eval_sample (S)")

    # `intentrec tune`: the optimiser settings every model shares (a model's own fields sit on its config)
    search_space: ClassVar[SearchSpace] = {
        "lr": FloatRange(low=1e-4, high=1e-2, log=True),
        "l2": FloatRange(low=1e-7, high=1e-3, log=True),
        "batch_size": Choice(choices=(50, 100, 200)),
    }

    @field_validator("ks")
    @classmethod
    def _positive_ks(cls, ks: tuple[int, ...]) -> tuple[int, ...]:
        if not ks or any(k < 1 for k in ks):
            raise ValueError("ks must be positive cut-offs, e.g. [5, 10, 20]")
        return tuple(sorted(set(ks)))

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if not re.fullmatch(r"cpu|auto|cuda(:\d+)?|mps", device):
            raise ValueError("device must be 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'")
        return device

    @model_validator(mode="after")
    def _metric_is_computed(self) -> TrainerConfig:
        match = _METRIC.match(self.select_metric)
        if not match:
            raise ValueError(f"select_metric must look like 'MRR@20', got {self.select_metric!r}")
        if int(match.group(2)) not in self.ks:
            raise ValueError(f"select_metric {self.select_metric} uses a k that is not in ks {self.ks}")
        return self

    @property
    def paper_mode(self) -> bool:
        return self.select_on == "test"

    def resume_key(self) -> dict[str, Any]:
        """The settings that must match for a run to be resumed."""
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in RESUMABLE_FIELDS}
