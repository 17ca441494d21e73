"""The model contract: one ``SessionModel`` that backbones and methods implement.

Training, evaluation and serving know this class and nothing else. A model

* turns item indices into vectors in one place, ``embed_items(indices)`` (index 0 is padding and
  gives a zero vector), and exposes the full item table ``item_table()`` used for full-ranking
  scores — so a method can replace or fuse the item table of *every* backbone;
* **declares** what it needs before training (``needs()``: per-example and per-item feature tables,
  a candidate file, whether it trains, whether it can serve a new session and why not) instead of
  being probed for it;
* scores all items (``forward``), computes its training loss (``loss``), and may re-rank the top-K
  list of another model (``rerank``);
* chooses its optimiser, scheduler, parameter groups and gradient accumulation (``training_plan``);
* says which state a checkpoint holds (``checkpoint_state``): the trainable state only; frozen
  pretrained weights are referenced by identity and sha256 (``frozen_pretrained``), not copied.

``capabilities()`` maps each capability name to ``None`` (supported) or the reason it is not; the
shared contract tests read it to skip what a model does not support, saying why.

Backbones encode a padded batch of session prefixes into a session vector plus named intermediate
vectors. The LLM methods plug into exactly these named vectors, so every backbone documents which
ones it has:

``local``
    the representation of the last click (last hidden state for RNNs, last node state for GNNs);
``global``
    an attention readout over the whole session, where the model has one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from intentrec.config import Config
from intentrec.data.batch import SessionBatch
from intentrec.errors import IntentrecError
from intentrec.models.scoring import linear_cross_entropy

if TYPE_CHECKING:
    from intentrec.data.candidates import CandidateSpec
    from intentrec.data.dataset import ExampleSet, PreparedDataset
    from intentrec.training.config import TrainerConfig

#: What ``capabilities()`` reports on; a model maps each to None (supported) or the reason it is not.
CAPABILITIES = ("train", "serve", "rerank")


@dataclass(frozen=True)
class Needs:
    """What a model needs before it can train or score, declared by the model itself.

    ``example_features`` are tables keyed by example id, ``item_features`` tables keyed by item
    column (both built by ``prepare``). ``candidates`` names a candidate file that an explicit step
    (``intentrec candidates``, or the experiment runner) must have written before ``prepare``.
    """

    example_features: tuple[str, ...] = ()
    item_features: tuple[str, ...] = ()
    candidates: CandidateSpec | None = None
    trains: bool = True
    serves_new_sessions: bool = True
    why_not_serving: str = ""


@dataclass
class TrainingPlan:
    """The optimiser (over the model's parameter groups), its scheduler and the accumulation steps."""

    optimizer: torch.optim.Optimizer | None  # None: nothing to train
    scheduler: Any | None = None
    #: batches whose gradients are summed (each loss divided by this) before one optimiser step
    accumulate: int = 1
    #: when ``scheduler.step()`` is called: after every epoch, or after every optimiser step
    scheduler_interval: Literal["epoch", "step"] = "epoch"


@dataclass
class TrainingPhase:
    """Epochs a model trains before its main epochs, on examples and a loss of its own (e.g. an
    alignment stage). The trainer runs them first, with the same optimiser and plan; they are not
    validated, never selected as the best checkpoint, and resume like main epochs."""

    name: str
    epochs: int
    examples: ExampleSet
    loss: Callable[[SessionBatch], torch.Tensor]


@dataclass(frozen=True)
class TextPlacement:
    """How a model with a text branch places an item known only by its text: the affine map
    ``rows = text_vectors @ weight.T + bias`` from the unit-length vectors of ``encoder`` (item texts
    rendered by ``template``) to the model's item space (before ``scoring_table``'s normalisation,
    if any: a cold-start map applies that itself)."""

    encoder: str
    template: str
    weight: torch.Tensor  # [d', w]
    bias: torch.Tensor  # [d']


@dataclass
class BackboneOutput:
    session: torch.Tensor  # [B, d] final session vector used for scoring
    vectors: dict[str, torch.Tensor] = field(default_factory=dict)  # named [B, d] vectors
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # model-specific (e.g. TAGNN states)

    def replace_session(self, session: torch.Tensor) -> BackboneOutput:
        return BackboneOutput(session=session, vectors=self.vectors, extras=self.extras)


class SessionModel(nn.Module):
    """What the trainer, the evaluator and the server know about a model."""

    registry_name: ClassVar[str] = ""
    num_items: int

    # ---------------------------------------------------------------- declared needs
    def needs(self) -> Needs:
        return Needs()

    def capabilities(self) -> dict[str, str | None]:
        """Each of ``CAPABILITIES`` → None when supported, else why not."""
        needs = self.needs()
        return {
            "train": None if needs.trains else "this configuration has nothing to train (it ranks with fixed vectors)",
            "serve": None if needs.serves_new_sessions else needs.why_not_serving,
            "rerank": None,
        }

    def prepare(self, dataset: PreparedDataset) -> None:
        """Build data-dependent state from the dataset (never trains anything). Default: nothing."""

    def select_examples(self, examples: ExampleSet) -> ExampleSet:
        """The examples this model trains and is evaluated on (default: all of them)."""
        return examples

    def run_info(self) -> dict[str, Any] | None:
        """What a run used beyond its configs (e.g. a method's text source), for metrics.json."""
        return None

    def training_phases(self) -> tuple[TrainingPhase, ...]:
        """Phases trained before the main epochs, in order (default: none). Called after
        ``prepare`` and ``select_examples``."""
        return ()

    # ---------------------------------------------------------------- items
    @property
    def dim(self) -> int:
        raise NotImplementedError

    def embed_items(self, indices: torch.Tensor) -> torch.Tensor:
        """Vectors of item indices (1..n), any shape ``[...]`` → ``[..., d]``; index 0 → zeros."""
        raise NotImplementedError

    def item_table(self) -> torch.Tensor:
        """Item table ``[num_items, d]`` used for full-ranking scores; row ``c`` is item index ``c + 1``."""
        raise NotImplementedError

    # ---------------------------------------------------------------- scoring
    def encode(self, batch: SessionBatch) -> BackboneOutput:
        raise NotImplementedError

    def score(self, output: BackboneOutput) -> torch.Tensor:
        """Scores ``[B, num_items]`` over all items."""
        raise NotImplementedError

    def forward(self, batch: SessionBatch) -> torch.Tensor:
        return self.score(self.encode(batch))

    def loss(self, batch: SessionBatch) -> torch.Tensor:
        raise NotImplementedError

    # ---------------------------------------------------------------- items added or placed from text
    def new_items_problem(self) -> str | None:
        """Why this model cannot score against a table with added or replaced rows (None: it can,
        ``score_with(output, table)`` for any ``table`` shaped like ``scoring_table()`` rows)."""
        return "it does not expose the item table it scores against"

    def scoring_table(self) -> torch.Tensor:
        """The table ``[num_items, d']`` that ``score`` ranks against (where ``new_items_problem()`` is None)."""
        raise IntentrecError(f"'{self.registry_name}' has no scoring table: {self.new_items_problem()}")

    def score_with(self, output: BackboneOutput, table: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, n']`` of ``output`` against ``table`` ``[n', d']`` (e.g. ``scoring_table()`` plus
        rows for new items), the way ``score`` scores against ``scoring_table()``."""
        raise IntentrecError(
            f"'{self.registry_name}' cannot score against another item table: {self.new_items_problem()}"
        )

    def text_placement(self) -> TextPlacement | None:
        """This model's own map from an item's text vector to its item space, if it has one (SemSR-F's
        text branch); None (default): a map fitted on the trained items places it
        (:mod:`intentrec.models.cold_start`)."""
        return None

    def rerank(self, batch: SessionBatch, candidates: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, K]`` of the candidate columns ``[B, K]`` (another model's top-K list).

        Default: this model's full-ranking scores at those columns.
        """
        return self(batch).gather(1, candidates)

    def serve_scores(self, batch: SessionBatch) -> torch.Tensor:
        """Scores for sessions that are not dataset examples (a served request)."""
        why = self.capabilities()["serve"]
        if why is not None:
            raise IntentrecError(f"'{self.registry_name}' cannot serve a new session: {why}")
        return self(batch)

    def serve_output(self, batch: SessionBatch) -> BackboneOutput:
        """The session output ``encode`` gives for sessions that are not dataset examples, so a server
        can score them against rows of its own (items added after training, an ANN index).
        ``score(serve_output(b))`` equals ``serve_scores(b)``."""
        why = self.capabilities()["serve"]
        if why is not None:
            raise IntentrecError(f"'{self.registry_name}' cannot serve a new session: {why}")
        return self.encode(batch)

    # ---------------------------------------------------------------- training
    def param_groups(self, cfg: TrainerConfig) -> list[dict[str, Any]]:
        """Parameter groups for the optimiser: every parameter that requires a gradient, one group."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def training_plan(self, cfg: TrainerConfig, device: torch.device) -> TrainingPlan:
        """Adam (``cfg.lr``, weight decay ``cfg.l2``) and, with ``cfg.lr_decay_step``, StepLR."""
        # fused Adam: one kernel per step instead of several per parameter (measurably faster on CPU)
        optimizer = torch.optim.Adam(
            self.param_groups(cfg), lr=cfg.lr, weight_decay=cfg.l2, fused=device.type in ("cpu", "cuda")
        )
        scheduler = (
            torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_decay_step, gamma=cfg.lr_decay_gamma)
            if cfg.lr_decay_step
            else None
        )
        return TrainingPlan(optimizer, scheduler)

    # ---------------------------------------------------------------- checkpoints
    def frozen_pretrained(self) -> dict[str, dict[str, str]]:
        """State-dict prefix → identity (e.g. ``{"name": ..., "sha256": ...}``) of frozen pretrained
        weights. Checkpoints reference them by identity instead of copying them."""
        return {}

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint holds: the state dict without the frozen pretrained weights."""
        state = self.state_dict()
        prefixes = tuple(self.frozen_pretrained())
        if not prefixes:
            return state
        return {k: v for k, v in state.items() if not k.startswith(prefixes)}

    def load_checkpoint_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load what ``checkpoint_state`` saved; raises RuntimeError (first line: the problem) otherwise."""
        prefixes = tuple(self.frozen_pretrained())
        if not prefixes:
            self.load_state_dict(tensors)
            return
        result = self.load_state_dict(tensors, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith(prefixes)]
        if missing or result.unexpected_keys:
            raise RuntimeError(f"missing keys {missing[:5]}, unexpected keys {result.unexpected_keys[:5]}")


class BackboneConfig(Config):
    """Fields every backbone has; subclasses add their own with the papers' defaults."""

    embedding_dim: int = 100


class Backbone(SessionModel):
    """Base class of all session encoders. Subclasses set ``Config`` and ``vector_names``.

    The item ID table is the parameter ``id_table`` ``[num_items, d]`` (row ``c`` = item ``c + 1``),
    or, for backbones with a padding row, ``PaddedItemEmbedding``'s ``embedding`` module. Every
    lookup goes through ``embed_items``; a method may set an ``item_transform`` (a module mapping the
    ID table to the table actually used, e.g. a fusion with text vectors) and every backbone then
    embeds and scores with the transformed table.
    """

    Config: ClassVar[type[BackboneConfig]] = BackboneConfig
    vector_names: ClassVar[tuple[str, ...]] = ("local", "global")
    default_train: ClassVar[dict] = {}  # the paper's trainer settings: lr, batch_size, l2, ...
    #: state-dict keys of earlier versions → today's (old checkpoints still load)
    legacy_state_keys: ClassVar[dict[str, str]] = {"item_table": "id_table"}

    def __init__(self, num_items: int, config: BackboneConfig):
        super().__init__()
        self.num_items = num_items
        self.config = config
        self.item_transform: nn.Module | None = None

    @property
    def dim(self) -> int:
        return self.config.embedding_dim

    # ---------------------------------------------------------------- items
    def id_item_table(self) -> torch.Tensor:
        """The trainable ID table ``[num_items, d]``."""
        return self.id_table

    def embed_id_items(self, indices: torch.Tensor) -> torch.Tensor:
        """ID vectors of item indices; index 0 (padding, an empty slot) gets a zero vector."""
        rows = F.embedding((indices - 1).clamp(min=0), self.id_table)
        return rows * (indices > 0).unsqueeze(-1).to(rows.dtype)

    def item_vectors(self) -> torch.Tensor:
        """The items' input vectors ``[num_items, d]``: the ID table, through ``item_transform`` if set."""
        table = self.id_item_table()
        return table if self.item_transform is None else self.item_transform(table)

    def embed_items(self, indices: torch.Tensor) -> torch.Tensor:
        if self.item_transform is None:
            return self.embed_id_items(indices)
        return F.embedding(indices, F.pad(self.item_vectors(), (0, 0, 1, 0)))

    def scoring_table(self, vectors: torch.Tensor | None = None) -> torch.Tensor:
        """Item vectors ``[n, d']`` → the table scores are taken against (default: as they are; NISER
        normalises). A method that builds its own item table (a fusion) passes it through this.
        Without ``vectors``: this backbone's own table, ``item_table()``."""
        return self.item_table() if vectors is None else vectors

    def new_items_problem(self) -> str | None:
        if type(self).score is not Backbone.score:
            return "it scores its own way (it overrides score, not score_with)"
        vectors = inspect.signature(type(self).scoring_table).parameters.get("vectors")
        if vectors is None or vectors.default is inspect.Parameter.empty:
            return "its scoring_table(vectors) override has no default (it must be scoring_table(vectors=None))"
        return None

    def item_table(self) -> torch.Tensor:
        return self.scoring_table(self.item_vectors())

    def set_item_transform(self, transform: nn.Module | None) -> None:
        """Use ``transform(id_table)`` as the item table everywhere (its parameters train with the model)."""
        self.item_transform = transform

    @torch.no_grad()
    def init_item_table(self, values: torch.Tensor) -> None:
        """Overwrite the ID table with ``values`` ``[num_items, d]`` (it stays trainable)."""
        table = self.id_item_table()
        if tuple(values.shape) != tuple(table.shape):
            raise IntentrecError(
                f"init_item_table: got a {tuple(values.shape)} table for a {tuple(table.shape)} item table"
            )
        table.copy_(values)

    # ---------------------------------------------------------------- scoring
    def score_with(self, output: BackboneOutput, table: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, n]`` of ``output`` against an item ``table`` ``[n, d]`` the way this backbone
        scores (default: dot product; NISER: scaled cosine; TAGNN adds its target attention)."""
        # F.linear rather than ``session @ table.t()``: the same numbers, ~7% faster SR-GNN training
        # steps on CPU (measured), since the backward pass writes the table's gradient untransposed.
        return F.linear(output.session, table)

    def score(self, output: BackboneOutput) -> torch.Tensor:
        """Scores ``[B, num_items]`` over all items, against ``item_table()``."""
        return self.score_with(output, self.item_table())

    def loss(self, batch: SessionBatch) -> torch.Tensor:
        """Training loss: cross-entropy over all items (the setting of every paper we reproduce)."""
        if batch.targets is None:
            raise ValueError("loss() needs a batch with targets")
        return self.score_loss(self.encode(batch), batch.targets)

    def score_loss_with(self, output: BackboneOutput, table: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of ``score_with(output, table)`` against ``targets`` (column indices).

        Fused with the scoring when ``score_with`` is the default dot product; a subclass that
        overrides ``score_with`` gets the plain (unfused) loss unless it overrides this too.
        """
        if type(self).score_with is Backbone.score_with:
            return linear_cross_entropy(output.session, table, targets)
        return F.cross_entropy(self.score_with(output, table), targets)

    def score_loss(self, output: BackboneOutput, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of ``score(output)`` against ``targets``."""
        if type(self).score is not Backbone.score:  # a subclass that scores its own way
            return F.cross_entropy(self.score(output), targets)
        return self.score_loss_with(output, self.item_table(), targets)

    # ---------------------------------------------------------------- checkpoints
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001 - torch's hook
        for old, new in self.legacy_state_keys.items():
            if prefix + old in state_dict and prefix + new not in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class PaddedItemEmbedding:
    """Mixin for backbones whose ID table is ``self.embedding = nn.Embedding(n + 1, d, padding_idx=0)``."""

    embedding: nn.Embedding

    def id_item_table(self) -> torch.Tensor:
        return self.embedding.weight[1:]

    def embed_id_items(self, indices: torch.Tensor) -> torch.Tensor:
        return self.embedding(indices)
