"""DHCN: self-supervised hypergraph convolutional networks (Xia et al., AAAI 2021).

Two channels, following the paper and the authors' released code (xiaxin1998/DHCN):

**Hypergraph channel** (scores the items). Every train session is a hyperedge over its distinct
items; with incidence ``H`` ``[n, E]``, item degrees ``D`` and hyperedge sizes ``B`` a layer is
``X ← D⁻¹ H B⁻¹ Hᵀ X`` (no weights, no non-linearity, as in the code) and the item table is the mean
of layers ``0..L``. The session reads the convolved vectors ``x_t`` of its clicks with reversed
position embeddings ``p_t`` (0 = last click): ``z_t = tanh(W1 [p_t ; x_t])``,
``β_t = w2ᵀ σ(G1 z_t + G2 x̄)`` with ``x̄`` the click mean, ``θ_h = Σ_t β_t x_t`` (no softmax). Item
``v`` scores ``θ_hᵀ x_v`` against the *convolved* table.

**Line-graph channel** (training only, for the self-supervised term). Over the sessions of the
batch, ``Â`` is the Jaccard overlap of their item sets (1 on the diagonal: the code's overlap + I)
and ``D̂`` its degrees; starting from the mean item embedding of each session (read without gradient,
as the code does; ``line_gradient`` lets it through), ``L`` layers ``Θ ← D̂⁻¹ Â Θ``, averaged over
layers ``0..L``. The contrastive term is the code's
``Σ_b softplus(-θ_h·θ_l) + softplus(θ_l·θ̃_h)`` with ``θ̃_h`` the hypergraph session vectors with
rows *and* columns shuffled, summed over the batch and weighted by β (``ssl_weight``) against the mean CE.

Deviations, see docs/backbones.md: hyperedges are the train *sessions* (the paper; the code uses its
prefix-augmented train examples, ``hyperedges="examples"``); the code's ``log(1e-8 + σ)`` is the
exact ``softplus``; positions beyond ``max_positions`` share the last row (the code fails there).

``local`` = convolved vector of the last click, ``global`` = ``session`` = θ_h. ``prepare(dataset)``
must run first; it reads the train split only.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from intentrec.data.batch import SessionBatch
from intentrec.errors import IntentrecError
from intentrec.models.backbones.msgat import jaccard_overlap
from intentrec.models.backbones.srgnn import uniform_init_
from intentrec.models.base import Backbone, BackboneConfig, BackboneOutput
from intentrec.models.graph import reversed_positions, session_graph
from intentrec.models.layers import PackedTokens
from intentrec.models.registry import register_backbone

if TYPE_CHECKING:
    from intentrec.data.dataset import PreparedDataset

# The code's main.py: Adam lr 0.001, batch 100, no learning-rate decay. Its optimiser takes no
# weight decay (``--l2`` is parsed but never used), so neither do we.
DHCN_TRAIN: dict = {"lr": 0.001, "batch_size": 100, "l2": 0.0}


class _SparseProduct(torch.autograd.Function):
    """``matrix @ x`` for a constant sparse ``matrix``, with its transpose built once for the backward
    pass (autograd's own backward transposes the CSR matrix on every step, about 3x slower here)."""

    @staticmethod
    def forward(ctx, matrix: torch.Tensor, transposed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.transposed = transposed
        return torch.sparse.mm(matrix, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, None, torch.sparse.mm(ctx.transposed, grad)


@dataclass
class ItemHypergraph:
    """Incidence of ``num_edges`` hyperedges over ``num_items`` items, and the layer operator.

    ``pair_edge`` / ``pair_column`` list the distinct (hyperedge, item column) pairs. A layer
    ``D⁻¹ H B⁻¹ Hᵀ`` is applied as the sparse products in ``operators`` (CSR ``(matrix, transpose)``
    pairs, right to left): the two factors ``B⁻¹ Hᵀ`` ``[E, n]`` and ``D⁻¹ H`` ``[n, E]``, or their
    product ``[n, n]`` when that has fewer nonzeros than the factors together (many overlapping
    hyperedges, e.g. the code's prefix hyperedges: on Beauty 1.6M against 2.4M, and ~5x faster).
    """

    pair_edge: torch.Tensor  # long [P]
    pair_column: torch.Tensor  # long [P] item column (item index - 1)
    operators: list[tuple[torch.Tensor, torch.Tensor]]
    num_edges: int
    num_items: int

    def propagate(self, table: torch.Tensor) -> torch.Tensor:
        """``D⁻¹ H B⁻¹ Hᵀ table`` for an item table ``[n, d]``; items in no hyperedge get zeros."""
        for matrix, transposed in self.operators:
            table = _SparseProduct.apply(matrix, transposed, table)
        return table

    def to(self, device: torch.device) -> ItemHypergraph:
        return ItemHypergraph(
            self.pair_edge.to(device),
            self.pair_column.to(device),
            [(m.to(device), t.to(device)) for m, t in self.operators],
            self.num_edges,
            self.num_items,
        )


def _coo(rows: torch.Tensor, columns: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    return torch.sparse_coo_tensor(torch.stack([rows, columns]), values, shape, check_invariants=False).coalesce()


def _operator(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A coalesced COO matrix as CSR, with its CSR transpose."""
    return matrix.to_sparse_csr(), matrix.t().coalesce().to_sparse_csr()


def build_item_hypergraph(values: np.ndarray, offsets: np.ndarray, num_items: int) -> ItemHypergraph:
    """One hyperedge per CSR row (a session) over its distinct items (indices 1..num_items)."""
    values = torch.as_tensor(np.asarray(values, dtype=np.int64))
    lengths = torch.as_tensor(np.diff(np.asarray(offsets, dtype=np.int64)))
    num_edges = len(lengths)
    edge = torch.repeat_interleave(torch.arange(num_edges), lengths)
    keys = torch.unique(edge * num_items + (values - 1))  # distinct (edge, column), sorted by edge
    pair_edge, pair_column = keys // num_items, keys % num_items
    dtype = torch.get_default_dtype()
    sizes = torch.bincount(pair_edge, minlength=num_edges).to(dtype)
    degrees = torch.bincount(pair_column, minlength=num_items).to(dtype)
    to_edges = _coo(pair_edge, pair_column, 1.0 / sizes[pair_edge], (num_edges, num_items))  # B⁻¹ Hᵀ
    to_items = _coo(pair_column, pair_edge, 1.0 / degrees[pair_column], (num_items, num_edges))  # D⁻¹ H
    with warnings.catch_warnings():  # torch warns once that CSR support is "beta"; what is used here is not
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        layer = torch.sparse.mm(to_items, to_edges).coalesce()
        factors = [to_edges, to_items] if layer.values().numel() > 2 * len(keys) else [layer]
        operators = [_operator(m) for m in factors]
    return ItemHypergraph(pair_edge, pair_column, operators, num_edges, num_items)


def contrastive_loss(hyper: torch.Tensor, line: torch.Tensor) -> torch.Tensor:
    """The code's SSL term, summed over the batch: positives are the two channels' vectors of one
    session; the negative of session b pairs its line-graph vector with a hypergraph vector whose
    rows and columns are shuffled (the code's ``row_column_shuffle``, same draw order)."""
    rows = torch.randperm(hyper.shape[0], device=hyper.device)
    columns = torch.randperm(hyper.shape[1], device=hyper.device)
    corrupted = hyper[rows][:, columns]
    positive = (hyper * line).sum(dim=1)
    negative = (line * corrupted).sum(dim=1)
    return (F.softplus(-positive) + F.softplus(negative)).sum()


class DHCNConfig(BackboneConfig):
    layers: int = Field(3, ge=0, description="hypergraph and line-graph convolution layers (code: --layer 3)")
    ssl_weight: float = Field(
        0.01,
        ge=0.0,
        description="β of the self-supervised term, summed over the batch (code: 0.01; README: 0.02 for Tmall); "
        "0 trains with CE alone",
    )
    position_embeddings: bool = Field(
        True, description="reversed position embeddings in the readout (the code turns them off for Tmall)"
    )
    max_positions: int = Field(200, ge=1, description="rows of the reversed position table (code: 200)")
    hyperedges: Literal["sessions", "examples"] = Field(
        "sessions",
        description="hyperedges: whole train sessions (paper) or train examples, i.e. every prefix (code)",
    )
    line_gradient: bool = Field(
        False,
        description="let the SSL gradient reach the item table through the line-graph channel (the code "
        "copies those vectors through numpy, so it does not)",
    )


@register_backbone("dhcn")
class DHCN(Backbone):
    """``local`` = last click's convolved vector, ``global`` = ``session`` = θ_h (hypergraph channel)."""

    Config: ClassVar[type[BackboneConfig]] = DHCNConfig
    vector_names: ClassVar[tuple[str, ...]] = ("local", "global")
    default_train: ClassVar[dict] = dict(DHCN_TRAIN)

    def __init__(self, num_items: int, config: DHCNConfig):
        super().__init__(num_items, config)
        self.config: DHCNConfig
        d = config.embedding_dim
        # Registered (so initialised) in the order of the code's DHCN.__init__.
        self.id_table = nn.Parameter(torch.empty(num_items, d))
        if config.position_embeddings:
            self.position = nn.Embedding(config.max_positions, d)
            self.position_mix = nn.Linear(2 * d, d)  # W1 over [p_t ; x_t] (the code's w_1)
        self.readout_score = nn.Linear(d, 1, bias=False)  # w2 (w_2)
        self.gate_click = nn.Linear(d, d)  # G1 (glu1)
        self.gate_mean = nn.Linear(d, d, bias=False)  # G2 (glu2)
        self.hypergraph: ItemHypergraph | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        uniform_init_(self, self.dim)

    # ---------------------------------------------------------------- global structure
    def prepare(self, dataset: PreparedDataset) -> None:
        """The item hypergraph from the train split only (never validation or test sessions)."""
        if self.config.hyperedges == "sessions":
            values, offsets = dataset.sessions("train")
        else:
            examples = dataset.examples("train")
            values, offsets = examples.values, examples.offsets
        self.set_hypergraph(values, offsets)

    def set_hypergraph(self, values: np.ndarray, offsets: np.ndarray) -> None:
        """Use the CSR rows ``(values, offsets)`` (item indices) as the hyperedges."""
        self.hypergraph = build_item_hypergraph(values, offsets, self.num_items).to(self.id_table.device)

    def _apply(self, fn, *args, **kwargs):  # noqa: ANN001 - torch's hook; the hypergraph follows .to(device)
        result = super()._apply(fn, *args, **kwargs)
        if self.hypergraph is not None:
            self.hypergraph = self.hypergraph.to(self.id_table.device)
        return result

    def convolve(self, table: torch.Tensor) -> torch.Tensor:
        """Mean of the hypergraph layers ``0..L`` of an item table ``[n, d]``."""
        if self.hypergraph is None:
            raise IntentrecError(
                "DHCN needs its item hypergraph: call backbone.prepare(dataset) on the prepared dataset "
                "before encoding or scoring"
            )
        layers = [table]
        for _ in range(self.config.layers):
            layers.append(self.hypergraph.propagate(layers[-1]))
        return sum(layers[1:], layers[0]) / (self.config.layers + 1)

    def scoring_table(self, vectors: torch.Tensor) -> torch.Tensor:
        # Items are scored against their convolved vectors, so a method's fused table is convolved too.
        return self.convolve(vectors)

    # ---------------------------------------------------------------- channels
    def readout(self, batch: SessionBatch, items: torch.Tensor) -> torch.Tensor:
        """θ_h ``[B, d]`` from the convolved item table ``items`` ``[n, d]``."""
        mask = batch.items > 0
        packing = PackedTokens(mask)
        clicks = items.index_select(0, packing.pack(batch.items) - 1)  # [T, d]
        lengths = batch.lengths.clamp(min=1).unsqueeze(1).to(clicks.dtype)
        mean = packing.sum_per_row(clicks) / lengths
        if self.config.position_embeddings:
            positions = reversed_positions(batch.lengths, mask.shape[1], self.config.max_positions)
            position = self.position(packing.pack(positions))
            hidden = torch.tanh(self.position_mix(torch.cat([position, clicks], dim=1)))
        else:
            hidden = torch.tanh(clicks)
        gate = torch.sigmoid(self.gate_click(hidden) + self.gate_mean(mean).index_select(0, packing.rows))
        return packing.sum_per_row(self.readout_score(gate) * clicks)

    def line_channel(self, batch: SessionBatch) -> torch.Tensor:
        """Θ_l ``[B, d]``: mean item embedding of each session, convolved over the batch's line graph."""
        embedded = self.embed_items(batch.items)  # zeros on padding
        if not self.config.line_gradient:
            embedded = embedded.detach()
        lengths = batch.lengths.clamp(min=1).unsqueeze(1).to(embedded.dtype)
        overlap = jaccard_overlap(session_graph(batch)).to(embedded.dtype)  # Â = Jaccard + I
        normalised = overlap / overlap.sum(dim=1, keepdim=True)  # D̂⁻¹ Â
        layers = [embedded.sum(dim=1) / lengths]
        for _ in range(self.config.layers):
            layers.append(normalised @ layers[-1])
        return sum(layers[1:], layers[0]) / (self.config.layers + 1)

    def encode(self, batch: SessionBatch) -> BackboneOutput:
        items = self.item_table()  # convolved once per batch; scoring reuses it (extras)
        session = self.readout(batch, items)
        local = items.index_select(0, batch.last_items() - 1)
        extras = {"item_table": items}
        if self.training and self.config.ssl_weight > 0:
            extras["ssl_loss"] = contrastive_loss(session, self.line_channel(batch))
        return BackboneOutput(session=session, vectors={"local": local, "global": session}, extras=extras)

    # ---------------------------------------------------------------- scoring and loss
    def _table(self, output: BackboneOutput) -> torch.Tensor:
        table = output.extras.get("item_table")
        return self.item_table() if table is None else table

    def score(self, output: BackboneOutput) -> torch.Tensor:
        return self.score_with(output, self._table(output))

    def score_loss(self, output: BackboneOutput, targets: torch.Tensor) -> torch.Tensor:
        return self.score_loss_with(output, self._table(output), targets)

    def score_loss_with(self, output: BackboneOutput, table: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """CE plus β · the SSL term when ``encode`` ran in training mode (every method's loss goes here)."""
        loss = super().score_loss_with(output, table, targets)
        ssl = output.extras.get("ssl_loss")
        return loss if ssl is None else loss + self.config.ssl_weight * ssl
