"""The method contract: a plug-in that wraps any registered backbone without touching its code.

A method is a :class:`~intentrec.models.base.SessionModel` too. It reads the backbone's named session
vectors (``local``, ``global``) and item table, reads precomputed features — per example *by
example id*, per item *by item column* — adds its fusion and auxiliary losses, and scores all items.
The trainer, evaluation and serving treat it exactly like a backbone.

Vector mapping. Every shipped backbone returns ``local`` (last-click state) and ``global`` (attention
readout). A backbone that lacks one gets this documented mapping instead of an error:
``local`` → the embedding of the last clicked item; ``global`` → the backbone's final session vector.

Features live in non-persistent buffers: they are rebuilt by ``prepare`` from the dataset's
semantic files and never stored in checkpoints. Per-example float tables are kept in float16 (half
the memory; the vectors are unit-length text embeddings, so the precision loss is far below their
noise), one copy shared by the table and the buffer, and cast per batch; per-item float tables (one
row per item, small) stay float32; integer tables keep their dtype.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from intentrec.config import Config
from intentrec.data.batch import SessionBatch
from intentrec.errors import ConfigError, DataError, IntentrecError
from intentrec.models.base import Backbone, BackboneOutput, Needs, SessionModel
from intentrec.models.features import FeatureTable, ItemFeatureTable

if TYPE_CHECKING:
    from intentrec.data.candidates import CandidateSpec
    from intentrec.data.dataset import ExampleSet, PreparedDataset


class MethodConfig(Config):
    """Fields every method has; subclasses add their own with the papers' defaults."""

    restrict_to_covered: bool = Field(
        False, description="use only the examples that have every feature the method reads"
    )


class TextSourceConfig(MethodConfig):
    """Options of a method whose per-example texts come from item titles or from stored LLM answers."""

    source: Literal["titles", "llm"] = Field("titles", description="where the texts come from")
    llm: str | None = Field(None, description="source=llm: the LLM that answered (name, .gguf, hf:, URL#MODEL)")
    store: str | None = Field(None, description="source=llm: answer store (default $INTENTREC_HOME/answers.sqlite)")
    encoder: str = "minilm"

    @model_validator(mode="after")
    def _llm_named(self) -> TextSourceConfig:
        if self.source == "llm" and not self.llm:
            raise ValueError("source=llm needs llm=<model> (the LLM whose answers are in the store)")
        return self


def _buffer_values(values: np.ndarray) -> np.ndarray:
    """float16 for float tables, the table's own dtype for integer ones (ids must stay exact)."""
    if np.issubdtype(values.dtype, np.floating):
        return np.ascontiguousarray(values, dtype=np.float16)
    return np.ascontiguousarray(values)


def _as_read(values: torch.Tensor) -> torch.Tensor:
    return values.float() if values.is_floating_point() else values


class Method(SessionModel):
    """Base class of all methods. Subclasses set ``Config`` and implement ``fuse``/``extra_loss``."""

    Config: ClassVar[type[MethodConfig]] = MethodConfig
    #: Whether the method maps its text features to the model width with ``self.text_proj``.
    projects_text: ClassVar[bool] = True
    #: Trainer settings of the method's paper, over the backbone's ``default_train`` (user values win).
    default_train: ClassVar[dict] = {}

    def __init__(self, backbone: Backbone, config: MethodConfig):
        super().__init__()
        self.backbone = backbone
        self.config = config
        self.features: dict[str, FeatureTable] = {}
        self.item_features: dict[str, ItemFeatureTable] = {}
        self._override: dict[str, torch.Tensor] | None = None

    # ---------------------------------------------------------------- declared needs
    def needs(self) -> Needs:
        why = self.serving_problem()
        return Needs(
            example_features=self.feature_names(),
            item_features=self.item_feature_names(),
            candidates=self.candidate_spec(),
            trains=self.trains,
            serves_new_sessions=why is None,
            why_not_serving=why or "",
        )

    @property
    def trains(self) -> bool:
        """False for a configuration that only ranks with precomputed vectors (nothing to train)."""
        return True

    def feature_names(self) -> tuple[str, ...]:
        """Names of the per-example feature tables this method reads (what ``load_features`` returns)."""
        raise NotImplementedError

    def item_feature_names(self) -> tuple[str, ...]:
        """Names of the per-item feature tables this method reads (what ``load_item_features`` returns)."""
        return ()

    def candidate_spec(self) -> CandidateSpec | None:
        """The candidate file this method reads, if any (built by an explicit step, never here)."""
        return None

    def serving_problem(self) -> str | None:
        """Why a new session cannot be scored (None: ``session_features`` computes its features)."""
        return (
            "its features are stored per dataset example (e.g. LLM answers generated per example); "
            "only LLM4SBR with source=titles serves new sessions"
        )

    # ---------------------------------------------------------------- backbone passthrough
    @property
    def num_items(self) -> int:  # type: ignore[override]
        return self.backbone.num_items

    @property
    def dim(self) -> int:
        return self.backbone.dim

    @property
    def vector_names(self) -> tuple[str, ...]:
        return self.backbone.vector_names

    def embed_items(self, indices: torch.Tensor) -> torch.Tensor:
        return self.backbone.embed_items(indices)

    def item_table(self) -> torch.Tensor:
        return self.backbone.item_table()

    def new_items_problem(self) -> str | None:
        if type(self).score is not Method.score:
            return f"method '{self.registry_name}' scores its own way (it overrides score)"
        return self.backbone.new_items_problem()

    def scoring_table(self) -> torch.Tensor:
        return self.backbone.scoring_table()

    def score_with(self, output: BackboneOutput, table: torch.Tensor) -> torch.Tensor:
        why = self.new_items_problem()
        if why is not None:
            raise IntentrecError(f"'{self.registry_name}' cannot score against another item table: {why}")
        return self.backbone.score_with(output, table)

    # ---------------------------------------------------------------- features
    def load_features(self, dataset: PreparedDataset) -> dict[str, FeatureTable]:
        """Build or load the per-example features this method needs (subclasses)."""
        return {}

    def load_item_features(self, dataset: PreparedDataset) -> dict[str, ItemFeatureTable]:
        """Build or load the per-item features this method needs (subclasses)."""
        return {}

    def prepare(self, dataset: PreparedDataset) -> None:
        self.backbone.prepare(dataset)
        self.attach(self.load_features(dataset))
        self.attach_items(self.load_item_features(dataset))

    def _device(self) -> torch.device:
        tensors = itertools.chain(self.backbone.parameters(), self.backbone.buffers())
        return next(tensors, torch.empty(0)).device

    def attach(self, tables: dict[str, FeatureTable]) -> None:
        """Make ``tables`` available to ``feature(name, example_ids)`` as dense id-indexed buffers."""
        self.features = dict(tables)
        device = self._device()
        if self.projects_text and tables:
            self._ensure_text_projection(tables, device)
        for name, table in tables.items():
            max_id = int(table.example_ids.max(initial=-1))
            rows = np.full(max_id + 2, -1, dtype=np.int64)  # last slot: ids beyond the table
            rows[table.example_ids] = np.where(table.present, np.arange(len(table.example_ids)), -1)
            # One copy, shared by the table and the buffer (a float32 input is let go).
            table.vectors = _buffer_values(table.vectors)
            self.register_buffer(f"_feat_{name}", torch.from_numpy(table.vectors).to(device), persistent=False)
            self.register_buffer(f"_rows_{name}", torch.from_numpy(rows).to(device), persistent=False)

    def attach_items(self, tables: dict[str, ItemFeatureTable]) -> None:
        """Make ``tables`` available to ``item_feature(name, columns)`` (one row per item column)."""
        device = self._device()
        for name, table in tables.items():
            if table.num_items != self.num_items:
                raise DataError(
                    f"method '{self.registry_name}': item feature '{name}' has {table.num_items} rows "
                    f"for {self.num_items} items (built for another dataset?)"
                )
            # per-item tables are small (one row per item): floats stay float32, read without a cast
            table.values = np.ascontiguousarray(table.values, dtype=np.float32) if table.is_float else table.values
            values = torch.from_numpy(table.values)
            missing = torch.from_numpy(~table.present).view(-1, *([1] * (values.dim() - 1)))
            self.register_buffer(f"_item_{name}", values.masked_fill(missing, 0).to(device), persistent=False)
        self.item_features = dict(tables)

    def _ensure_text_projection(self, tables: dict[str, FeatureTable], device: torch.device) -> None:
        """Create ``self.text_proj`` (text width → d) once the width is known; check one width.

        Created here rather than in ``__init__`` because the width depends on the encoder that made
        the features. ``prepare`` runs before the optimizer is built and before weights are loaded,
        so the layer is trained and restored like any other.
        """
        dims = {t.dim for t in tables.values()}
        if len(dims) != 1:
            raise ConfigError(f"{self.registry_name}: the text features have different widths {sorted(dims)}")
        width = dims.pop()
        current = getattr(self, "text_proj", None)
        if current is None or current.in_features != width:
            self.text_proj = nn.Linear(width, self.backbone.dim).to(device)

    def _rows(self, name: str, example_ids: torch.Tensor) -> torch.Tensor:
        """Row of each example in the feature buffer, −1 where it has none."""
        if name not in self.features:
            raise DataError(f"method '{self.registry_name}' has no text feature '{name}'; call prepare(dataset) first")
        lookup: torch.Tensor = getattr(self, f"_rows_{name}")
        return lookup[example_ids.clamp(max=lookup.numel() - 1)]

    def feature(self, name: str, example_ids: torch.Tensor) -> torch.Tensor:
        """Features of ``example_ids`` (zeros where missing): ``[B, D]`` or ``[B, J, D]``; float
        tables as float32, integer tables in their own dtype."""
        if self._override is not None:
            return self._override[name]
        rows = self._rows(name, example_ids)
        values = _as_read(getattr(self, f"_feat_{name}")[rows.clamp(min=0)])
        missing = (rows < 0).view(-1, *([1] * (values.dim() - 1)))
        return values.masked_fill(missing, 0)

    def item_feature(self, name: str, columns: torch.Tensor | None = None) -> torch.Tensor:
        """Per-item features at item ``columns`` (all items when None): float32 or the integer dtype."""
        if name not in self.item_features:
            raise DataError(f"method '{self.registry_name}' has no item feature '{name}'; call prepare(dataset) first")
        values: torch.Tensor = getattr(self, f"_item_{name}")
        return _as_read(values if columns is None else values[columns])

    # ---------------------------------------------------------------- serving new sessions
    def session_features(self, batch: SessionBatch) -> dict[str, torch.Tensor] | None:
        """Features of sessions that are not dataset examples, computed now; None if the source
        cannot (e.g. LLM answers that were never generated for them). A method that reads no
        per-example features needs none."""
        return {} if not self.feature_names() else None

    @contextmanager
    def features_for(self, features: dict[str, torch.Tensor]) -> Iterator[None]:
        """Within the block, ``feature(name, …)`` returns ``features[name]`` (rows = the batch)."""
        previous, self._override = self._override, features
        try:
            yield
        finally:
            self._override = previous

    def serve_scores(self, batch: SessionBatch) -> torch.Tensor:
        with self._new_session_features(batch):
            return self(batch)

    def serve_output(self, batch: SessionBatch) -> BackboneOutput:
        with self._new_session_features(batch):
            return self.encode(batch)

    def _new_session_features(self, batch: SessionBatch):
        """The features context for sessions that are not dataset examples, or the reason there is none."""
        why = self.serving_problem()
        features = None if why is not None else self.session_features(batch)
        if features is None:
            raise IntentrecError(
                f"this run's method '{self.registry_name}' cannot compute text features for a new "
                f"session: {why or 'its source computed none'}"
            )
        return self.features_for(features)

    # ---------------------------------------------------------------- examples
    def covered(self, example_ids: np.ndarray) -> np.ndarray:
        """Bool per example: every feature this method reads is present for it."""
        out = np.ones(len(example_ids), dtype=bool)
        for table in self.features.values():
            out &= table.coverage(example_ids)
        return out

    def select_examples(self, examples: ExampleSet) -> ExampleSet:
        """The examples to train/evaluate on: all, or (``restrict_to_covered``) only those with features.

        Without ``restrict_to_covered``, missing features are an error: a run must never silently use
        zero vectors for examples the LLM stage did not reach.
        """
        covered = self.covered(examples.example_ids)
        if covered.all():
            return examples
        if not self.config.restrict_to_covered:
            missing = examples.example_ids[~covered]
            raise DataError(
                f"{len(missing)} of {len(covered)} {examples.split} examples have no text features "
                f"(e.g. example ids {missing[:5].tolist()}); generate them ('intentrec infer' + "
                "'intentrec intents'), or set method.restrict_to_covered=true to use only the "
                "covered subset"
            )
        return examples.subset(np.flatnonzero(covered))

    def run_info(self) -> dict[str, Any]:
        """What the run used: written into metrics.json so every result says its intent source."""
        return {"method": self.registry_name, "features": {k: t.info for k, t in self.features.items()}}

    # ---------------------------------------------------------------- vectors
    def vector(self, output: BackboneOutput, name: str, batch: SessionBatch) -> torch.Tensor:
        """A named backbone vector, or its documented stand-in when the backbone lacks it."""
        if name in output.vectors:
            return output.vectors[name]
        if name == "local":  # the row of the table that scores the items (NISER: normalised)
            return F.embedding(batch.last_items() - 1, self.backbone.item_table())
        if name == "global":
            return output.session
        raise DataError(f"backbone '{self.backbone.registry_name}' has no vector '{name}'")

    # ---------------------------------------------------------------- model interface
    def fuse(self, output: BackboneOutput, batch: SessionBatch) -> tuple[BackboneOutput, dict[str, torch.Tensor]]:
        """The method's session output and its auxiliary losses (unweighted, by name)."""
        raise NotImplementedError

    def extra_loss(self, aux: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Weighted sum of the auxiliary losses added to CE (None: CE only)."""
        return None

    def encode(self, batch: SessionBatch) -> BackboneOutput:
        return self.fuse(self.backbone.encode(batch), batch)[0]

    def score(self, output: BackboneOutput) -> torch.Tensor:
        return self.backbone.score(output)

    def loss(self, batch: SessionBatch) -> torch.Tensor:
        if batch.targets is None:
            raise ValueError("loss() needs a batch with targets")
        output, aux = self.fuse(self.backbone.encode(batch), batch)
        if type(self).score is Method.score:
            loss = self.backbone.score_loss(output, batch.targets)
        else:
            loss = F.cross_entropy(self.score(output), batch.targets)
        extra = self.extra_loss(aux)
        return loss if extra is None else loss + extra
