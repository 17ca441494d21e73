"""The experiment file: a typed YAML description of a grid of training runs.

::

    name: llm4sbr-beauty
    runs_dir: runs/experiments/llm4sbr-beauty       # run folders with checkpoints (never committed)
    records_dir: benchmarks/records/llm4sbr-beauty  # one small JSON per finished run (committed)
    results_dir: docs/results                       # <name>.md, <name>.csv, <name>.png
    datasets:
      beauty:
        path: runs/data/beauty                      # the prepared folder
        prepare: {source: generic, path: amazon/beauty-2014-5core, protocol: llm4sbr-beauty}
    seeds: [0, 1, 2]
    settings: {train.epochs: 12, method.source: titles}
    grids:
      - {backbones: [srgnn, gru4rec], methods: [none, llm4sbr]}
      - {backbones: [srgnn], methods: [llm4sbr], variants: {wo-au: {method.lambda_au: 0}}}
      - {backbones: [srgnn], methods: [semsr], rerank_with: {backbone: srgnn}}   # + rows 'default+'
      - {backbones: [gcsan, stamp], methods: [llmgr], id_run_from: {variant: default}}  # ID side: gcsan/default/sN

Paths (``runs_dir``, ``records_dir``, ``results_dir``, a dataset's ``path``) are relative to the
current directory, as with every other intentrec command: run experiments from the repository root.
A ``prepare.path`` is passed to :func:`intentrec.data.prepare.prepare_dataset` as written, so, as with
``intentrec prepare``, it may also be relative to the data root (``$INTENTREC_DATA`` or
``../shared/data``), e.g. ``amazon/beauty-2014-5core``.

Settings are ``section.field: value`` with section ``train`` (TrainerConfig), ``model`` (the
backbone's config) or ``method`` (the method's config; ignored by backbone-alone runs), or nested
``{train: {epochs: 12}}``. Later levels win: top-level ``settings`` → a grid block's ``settings`` →
the variant's settings. Seeds come from ``seeds`` (a block may override them), never from
``train.seed``. A ``method.id_run`` may name ``{seed}``, ``{dataset}`` and ``{backbone}``, replaced per
run (``runs/x/{dataset}/{backbone}/default/s{seed}``); a block's ``id_run_from`` says the same by row.
A method run whose ``id_run`` is another run of the grid is trained after it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from intentrec.config import Config, load_config_file
from intentrec.errors import ConfigError

#: Sections a setting may belong to.
SECTIONS = ("model", "train", "method")
#: ``methods: [none]`` — the backbone alone.
NO_METHOD = "none"
DEFAULT_VARIANT = "default"
#: Names that become parts of run ids and folder names.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

Settings = dict[str, dict[str, Any]]


def _check_name(value: str, what: str) -> str:
    if not _NAME.match(value):
        raise ValueError(
            f"{what} {value!r} must start with a letter or digit and use only letters, digits, "
            "'_', '.', '-' (it becomes part of run ids and folder names)"
        )
    return value


def normalize_settings(values: dict[str, Any] | None, where: str) -> Settings:
    """``{"train.epochs": 3, "model": {"dropout": 0.1}}`` → ``{"train": {"epochs": 3}, "model": {...}}``.

    Every key needs a section prefix; errors name the key and ``where`` it was found.
    """
    out: Settings = {}
    for key, value in (values or {}).items():
        key = str(key)
        section, dot, field = key.partition(".")
        if section not in SECTIONS:
            raise ConfigError(
                f"{where}: setting '{key}' needs a section prefix: " + ", ".join(f"'{s}.{key}'" for s in SECTIONS)
            )
        if dot:
            if not field:
                raise ConfigError(f"{where}: setting '{key}' has no field name after '{section}.'")
            out.setdefault(section, {})[field] = value
        elif isinstance(value, dict):
            out.setdefault(section, {}).update({str(k): v for k, v in value.items()})
        else:
            raise ConfigError(f"{where}: '{key}' must be a section of field: value pairs, got {value!r}")
    return out


def merge_settings(*levels: Settings) -> Settings:
    """Later levels win, field by field."""
    out: Settings = {}
    for level in levels:
        for section, fields in level.items():
            out.setdefault(section, {}).update(fields)
    return out


class PrepareSpec(Config):
    """How to prepare a dataset: the arguments of ``intentrec prepare SOURCE PATH``."""

    source: str = Field(description="generic, movielens, amazon, diginetica or yoochoose")
    path: str = Field(description="upstream files; may be relative to the data root")
    protocol: str | None = Field(None, description="a preset, e.g. llm4sbr-beauty")
    options: dict[str, Any] = Field(
        default_factory=dict, description="further prepare parameters, e.g. {max_sessions: 500}"
    )


class DatasetSpec(Config):
    """A prepared dataset folder, optionally prepared (or reused if up to date) before training."""

    path: str | None = Field(None, description="the prepared folder; default with 'prepare': <runs_dir>/data/<name>")
    prepare: PrepareSpec | None = None

    @model_validator(mode="after")
    def _path_or_prepare(self) -> DatasetSpec:
        if self.path is None and self.prepare is None:
            raise ValueError("a dataset needs 'path' (a prepared folder) and/or 'prepare'")
        return self


class RerankSpec(Config):
    """The row whose run of the same seed re-orders each run's top-K lists (``intentrec evaluate
    RUN --rerank-with RUN2``): an evaluation-only row ``<variant>+`` next to every variant."""

    backbone: str
    method: str = NO_METHOD
    variant: str = DEFAULT_VARIANT


class IdRunSpec(Config):
    """The row whose run of the same dataset and seed is each run's ID side: ``method.id_run`` is set
    to that run's folder, and the runner trains it first (a method row waits for it)."""

    backbone: str | None = Field(None, description="default: the run's own backbone")
    method: str = NO_METHOD
    variant: str = DEFAULT_VARIANT


class GridSpec(Config):
    """One block of the grid: the product datasets × backbones × methods × variants × seeds."""

    backbones: list[str] = Field(min_length=1)
    methods: list[str] = Field(default_factory=lambda: [NO_METHOD], min_length=1)
    variants: dict[str, dict[str, Any] | None] = Field(default_factory=lambda: {DEFAULT_VARIANT: {}}, min_length=1)
    datasets: list[str] | None = Field(None, description="default: every dataset")
    seeds: list[int] | None = Field(None, description="default: the top-level seeds")
    settings: dict[str, Any] = Field(default_factory=dict)
    rerank_with: RerankSpec | None = Field(
        None, description="also report every run re-ranked by this row's run of the same seed (rows '<variant>+')"
    )
    id_run_from: IdRunSpec | None = Field(
        None, description="method.id_run of every run: this row's run folder of the same dataset and seed"
    )

    @field_validator("backbones", "methods")
    @classmethod
    def _names(cls, values: list[str]) -> list[str]:
        for value in values:
            _check_name(value, "name")
        return values

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, values: dict[str, Any]) -> dict[str, Any]:
        for value in values:
            _check_name(value, "variant")
        return values


class AnchorSpec(Config):
    """A published number to print next to ours (test-selected, as the papers report)."""

    model_config = ConfigDict(populate_by_name=True)

    label: str
    hr20: float | None = Field(None, alias="HR@20", description="percent")
    mrr20: float | None = Field(None, alias="MRR@20", description="percent")
    note: str = ""


class ColdStartEvalSpec(Config):
    """How runs trained with ``train.cold_start`` are evaluated on their cold items once trained
    (``intentrec evaluate RUN --cold-start F``; the results go into the record, not into its settings)."""

    encoder: str | None = Field(
        None, description="text encoder of a fitted map (default: the model's own, else minilm)"
    )
    template: str | None = Field(None, description="item text template (default title/1)")
    map: dict[str, Any] = Field(default_factory=dict, description="ColdStartMapConfig fields, e.g. {kind: mlp}")
    scoring: dict[str, Any] = Field(default_factory=dict, description="ColdScoringConfig fields, e.g. {text_weight: 0}")

    @model_validator(mode="after")
    def _known_fields(self) -> ColdStartEvalSpec:
        from intentrec.models.cold_start import ColdScoringConfig, ColdStartMapConfig

        try:
            ColdStartMapConfig.build(self.map, where="cold_start_eval.map")
            ColdScoringConfig.build(self.scoring, where="cold_start_eval.scoring")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self


class RowRef(Config):
    """One row of the report on a given dataset and backbone: a method (``none``: the backbone alone)
    and a variant."""

    method: str = NO_METHOD
    variant: str = DEFAULT_VARIANT

    def label(self) -> str:
        return f"{'alone' if self.method == NO_METHOD else self.method}/{self.variant}"


class ComparisonSpec(Config):
    """Two rows compared on every dataset and backbone that has both: Δ = a − b with the paired tests of
    the main table (``intentrec.experiments.significance``), e.g. a source against its shuffled control."""

    a: RowRef
    b: RowRef
    label: str | None = Field(None, description="default: 'a − b' from the two rows")
    backbones: list[str] | None = Field(None, description="default: every backbone with both rows")

    @model_validator(mode="after")
    def _two_rows(self) -> ComparisonSpec:
        if self.a == self.b:
            raise ValueError(f"a and b are the same row ({self.a.label()})")
        return self

    def title(self) -> str:
        return self.label or f"{self.a.label()} − {self.b.label()}"


class ExperimentSpec(Config):
    name: str
    description: str = ""
    runs_dir: str
    records_dir: str
    results_dir: str = "docs/results"
    datasets: dict[str, DatasetSpec] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    settings: dict[str, Any] = Field(default_factory=dict)
    grids: list[GridSpec] = Field(min_length=1)
    anchors: list[AnchorSpec] = Field(default_factory=list)
    cold_start_eval: ColdStartEvalSpec = Field(default_factory=ColdStartEvalSpec)
    comparisons: list[ComparisonSpec] = Field(
        default_factory=list, description="pairs of rows to test against each other, beyond Δ to the backbone"
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_name(value, "name")

    @field_validator("datasets")
    @classmethod
    def _dataset_names(cls, values: dict[str, DatasetSpec]) -> dict[str, DatasetSpec]:
        for value in values:
            _check_name(value, "dataset")
        return values

    @model_validator(mode="after")
    def _known_datasets(self) -> ExperimentSpec:
        for i, grid in enumerate(self.grids):
            for name in grid.datasets or []:
                if name not in self.datasets:
                    raise ValueError(
                        f"grids[{i}].datasets names '{name}', which is not under 'datasets' "
                        f"(known: {', '.join(self.datasets)})"
                    )
        return self

    @model_validator(mode="after")
    def _known_comparison_rows(self) -> ExperimentSpec:
        planned = {(method, variant) for grid in self.grids for method in grid.methods for variant in grid.variants}
        backbones = {b for grid in self.grids for b in grid.backbones}
        for i, comparison in enumerate(self.comparisons):
            for side in ("a", "b"):
                ref: RowRef = getattr(comparison, side)
                if (ref.method, ref.variant) not in planned:
                    known = ", ".join(sorted(f"{m}/{v}" for m, v in planned))
                    raise ValueError(
                        f"comparisons[{i}].{side}: no grid block has method '{ref.method}' with variant "
                        f"'{ref.variant}' (the grid has: {known})"
                    )
            for name in comparison.backbones or []:
                if name not in backbones:
                    raise ValueError(f"comparisons[{i}].backbones names '{name}', which no grid block has")
        return self

    def dataset_dir(self, name: str) -> Path:
        spec = self.datasets[name]
        return Path(spec.path) if spec.path is not None else Path(self.runs_dir) / "data" / name


def load_spec(path: str | Path) -> ExperimentSpec:
    """Read and validate an experiment file; errors name the file and the offending key."""
    return build_spec(load_config_file(path), where=f"experiment file {path}")


def build_spec(values: dict[str, Any], where: str = "experiment") -> ExperimentSpec:
    try:
        return ExperimentSpec.model_validate(values)
    except ValidationError as exc:
        lines = [f"invalid {where}:"]
        for err in exc.errors():
            loc = err["loc"]
            field = ".".join(str(p) for p in loc) or "<root>"
            if err["type"] == "extra_forbidden":
                known = ", ".join(_known_keys(_model_at(ExperimentSpec, loc[:-1])))
                lines.append(f"  unknown key '{field}' (known keys here: {known})")
            else:
                message = err["msg"].removeprefix("Value error, ")
                got = repr(err.get("input"))
                got = got if len(got) <= 80 else got[:77] + "..."
                lines.append(f"  {field}: {message}" + ("" if field == "<root>" else f" (got {got})"))
        raise ConfigError("\n".join(lines)) from None


def _model_at(cls: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel]:
    """The config class that validates the value at ``loc`` (list indices and dict keys skipped)."""
    current: Any = cls
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel) and part in current.model_fields:
            current = current.model_fields[part].annotation
        current = _inner_model(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else cls


def _inner_model(annotation: Any) -> Any:
    """``list[X]``, ``dict[str, X]``, ``X | None`` → ``X`` when X is a config class."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        inner = _inner_model(arg)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner
    return annotation


def _known_keys(cls: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in cls.model_fields.items()]
