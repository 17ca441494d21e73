"""GCE-GNN: global context enhanced graph neural network (Wang et al., SIGIR 2020).

Two item representations are learned and summed:

* **session level** -- attention over the session graph with four relation types (self, out, in,
  in-out): ``e_ij = LeakyReLU(a_{r_ij}ᵀ (h_i ⊙ h_j))``, softmax over i's neighbours (itself
  included), ``h^s_i = Σ_j α_ij h_j``;
* **global level** -- a global item graph over *all train sessions*: items within ε clicks of each
  other are neighbours, weighted by how often that happens; each item keeps its ``num_neighbors``
  heaviest neighbours. Neighbours are weighted by a session-aware attention
  ``π(v, u) = qᵀ LeakyReLU(W1 [s ⊙ h_u ; w_vu])`` with ``s`` the mean item embedding of the
  session, and ``h^g_v = ReLU(W2 [h_v ; Σ_u π(v,u) h_u])``, recursively for ``hops`` hops.

Per click, ``x_t = dropout(h^s) + dropout(h^g)`` of its item; the readout uses reversed position
embeddings (0 = last click): ``z_t = tanh(W3 [x_t ; p_t])``, ``β_t = q2ᵀ σ(W4 z_t + W5 mean(x))``,
``S = Σ_t β_t x_t`` (no softmax, as in the paper). Item ``v`` scores ``Sᵀ v``.

Deviations from the authors' code, all documented in docs/backbones-graph.md: (1) their code adds
the session-level state of node *i* to the global state of click *i* (mixing node and position
indices); we add both for the same item, as the paper describes. (2) Their neighbour table samples 12
of the top neighbours with replacement when an item has fewer; we keep the real neighbours and mask
the empty slots, so the model is deterministic. (3) Self-pairs (an item next to itself) are not
neighbours. (4) Clicks further back than ``max_positions`` share the last position embedding.

``local`` = x of the last click, ``global`` = ``session`` = S. ``prepare(dataset)`` must run first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from intentrec.data.batch import SessionBatch
from intentrec.errors import IntentrecError
from intentrec.models.backbones.srgnn import SRGNN_TRAIN, uniform_init_
from intentrec.models.base import Backbone, BackboneConfig, BackboneOutput
from intentrec.models.graph import (
    SessionGraph,
    reversed_positions,
    segment_softmax,
    session_graph,
)
from intentrec.models.layers import PackedTokens, masked_softmax
from intentrec.models.registry import register_backbone
from intentrec.search_space import FloatRange, IntRange, SearchSpace

if TYPE_CHECKING:
    from intentrec.data.dataset import PreparedDataset


def build_global_graph(
    values: np.ndarray, offsets: np.ndarray, num_items: int, epsilon: int, num_neighbors: int
) -> tuple[np.ndarray, np.ndarray]:
    """GCE-GNN's global item graph from sessions in CSR form (item indices 1..num_items).

    Items ``a`` and ``b`` are neighbours each time they occur within ``epsilon`` clicks of each other
    in one session (both directions; an item is never its own neighbour); the weight is the number of
    such occurrences. Returns ``(neighbors, weights)``, each ``[num_items + 1, num_neighbors]``: row
    ``v`` lists v's heaviest neighbours (ties: smaller item index first), 0 / 0.0 in empty slots.
    """
    values = np.asarray(values, dtype=np.int64)
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    session_end = np.repeat(offsets[1:], lengths)
    here = np.arange(len(values))
    sources, targets = [], []
    for distance in range(1, epsilon + 1):
        start = here[here + distance < session_end]
        sources += [values[start], values[start + distance]]
        targets += [values[start + distance], values[start]]
    neighbors = np.zeros((num_items + 1, num_neighbors), dtype=np.int64)
    weights = np.zeros((num_items + 1, num_neighbors), dtype=np.float32)
    if not sources:
        return neighbors, weights
    source, target = np.concatenate(sources), np.concatenate(targets)
    keep = source != target
    keys, counts = np.unique(source[keep] * (num_items + 1) + target[keep], return_counts=True)
    source, target = keys // (num_items + 1), keys % (num_items + 1)
    order = np.lexsort((target, -counts, source))  # by source, heaviest first, then item index
    source, target, counts = source[order], target[order], counts[order]
    group_start = np.searchsorted(source, source, side="left")
    rank = np.arange(len(source)) - group_start
    top = rank < num_neighbors
    neighbors[source[top], rank[top]] = target[top]
    weights[source[top], rank[top]] = counts[top]
    return neighbors, weights


class GlobalAggregator(nn.Module):
    """One hop of session-aware attention over global-graph neighbours."""

    def __init__(self, dim: int, dropout: float, negative_slope: float):
        super().__init__()
        self.attention_hidden = nn.Linear(dim + 1, dim, bias=False)  # W1 over [s ⊙ h_u ; w_vu]
        self.attention_score = nn.Linear(dim, 1, bias=False)  # q
        self.output = nn.Linear(2 * dim, dim, bias=False)  # W2 over [h_v ; h_N(v)]
        self.dropout = nn.Dropout(dropout)
        self.negative_slope = negative_slope

    def forward(
        self,
        own: torch.Tensor,  # [M, d]
        neighbors: torch.Tensor,  # [M, K, d]
        weights: torch.Tensor,  # [M, K]
        mask: torch.Tensor,  # [M, K] bool
        session: torch.Tensor,  # [M, d] mean item embedding of the owning session
    ) -> torch.Tensor:
        features = torch.cat([session.unsqueeze(1) * neighbors, weights.unsqueeze(2)], dim=2)
        hidden = F.leaky_relu(self.attention_hidden(features), self.negative_slope)
        pi = masked_softmax(self.attention_score(hidden).squeeze(2), mask)
        pooled = torch.einsum("mk,mkd->md", pi, neighbors)
        return torch.relu(self.output(self.dropout(torch.cat([own, pooled], dim=1))))


class GCEGNNConfig(BackboneConfig):
    epsilon: int = Field(2, ge=1, description="ε: max click distance of global-graph neighbours")
    num_neighbors: int = Field(12, ge=1, description="neighbours kept per item (heaviest first)")
    hops: int = Field(1, ge=1, description="global aggregation hops (authors: 1 or 2)")
    dropout_global: float = Field(0.5, ge=0.0, lt=1.0)
    dropout_local: float = Field(0.0, ge=0.0, lt=1.0)
    dropout_gcn: float = Field(0.0, ge=0.0, lt=1.0)
    negative_slope: float = Field(0.2, ge=0.0, description="LeakyReLU slope (authors' alpha)")
    max_positions: int = Field(200, ge=1, description="rows of the reversed position table")

    search_space: ClassVar[SearchSpace] = {
        "num_neighbors": IntRange(low=4, high=16, step=4),
        "hops": IntRange(low=1, high=2),
        "dropout_global": FloatRange(low=0.0, high=0.7),
        "dropout_local": FloatRange(low=0.0, high=0.5),
        "dropout_gcn": FloatRange(low=0.0, high=0.5),
    }


@register_backbone("gcegnn")
class GCEGNN(Backbone):
    """``local`` = last click's x, ``global`` = ``session`` = the position-aware readout S."""

    Config: ClassVar[type[BackboneConfig]] = GCEGNNConfig
    vector_names: ClassVar[tuple[str, ...]] = ("local", "global")
    # Authors' main.py: Adam lr 0.001, batch 100, l2 1e-5, decay 0.1 every 3 epochs.
    default_train: ClassVar[dict] = dict(SRGNN_TRAIN)

    def __init__(self, num_items: int, config: GCEGNNConfig):
        super().__init__(num_items, config)
        self.config: GCEGNNConfig
        d = config.embedding_dim
        self.id_table = nn.Parameter(torch.empty(num_items, d))
        self.position = nn.Embedding(config.max_positions, d)
        # a_self, a_out, a_in, a_in-out (rows in the order of the EDGE_* codes 1..4)
        self.relation_vectors = nn.Parameter(torch.empty(4, d))
        self.aggregators = nn.ModuleList(
            GlobalAggregator(d, config.dropout_gcn, config.negative_slope) for _ in range(config.hops)
        )
        self.dropout_local = nn.Dropout(config.dropout_local)
        self.dropout_global = nn.Dropout(config.dropout_global)
        self.position_mix = nn.Linear(2 * d, d, bias=False)  # W3 over [x_t ; p_t]
        self.readout_position = nn.Linear(d, d)  # W4
        self.readout_mean = nn.Linear(d, d, bias=False)  # W5
        self.readout_score = nn.Linear(d, 1, bias=False)  # q2
        self.register_buffer("neighbor_items", None, persistent=False)
        self.register_buffer("neighbor_weights", None, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        uniform_init_(self, self.dim)

    def prepare(self, dataset: PreparedDataset) -> None:
        values, offsets = dataset.sessions("train")
        neighbors, weights = build_global_graph(
            values, offsets, self.num_items, self.config.epsilon, self.config.num_neighbors
        )
        device = self.id_table.device
        self.neighbor_items = torch.from_numpy(neighbors).to(device)
        self.neighbor_weights = torch.from_numpy(weights).to(device)

    def session_level(self, graph: SessionGraph, embedded: torch.Tensor) -> torch.Tensor:
        node, neighbor, relation = graph.relation_pairs()
        products = embedded.index_select(0, node) * embedded.index_select(0, neighbor)
        logits = (products * self.relation_vectors.index_select(0, relation - 1)).sum(dim=1)
        logits = F.leaky_relu(logits, self.config.negative_slope)
        alpha = segment_softmax(logits, node, graph.total_nodes)
        weighted = alpha.unsqueeze(1) * embedded.index_select(0, neighbor)
        return embedded.new_zeros(embedded.shape).index_add_(0, node, weighted)

    def global_level(self, graph: SessionGraph, embedded: torch.Tensor, session_mean: torch.Tensor) -> torch.Tensor:
        k, d = self.config.num_neighbors, self.dim
        # Level ℓ holds the ℓ-hop neighbours of every node, flattened: [N * K^ℓ].
        items = [graph.node_items]
        weights = []
        for _ in range(self.config.hops):
            items.append(self.neighbor_items[items[-1]].reshape(-1))
            weights.append(self.neighbor_weights[items[-2]])  # [N * K^(ℓ-1), K]
        vectors = [embedded] + [self.embed_items(level) for level in items[1:]]
        owner = session_mean.index_select(0, graph.node_session)  # [N, d]
        for hop, aggregator in enumerate(self.aggregators):
            updated = []
            for level in range(self.config.hops - hop):
                count = vectors[level].shape[0]
                updated.append(
                    aggregator(
                        vectors[level],
                        vectors[level + 1].view(count, k, d),
                        weights[level],
                        items[level + 1].view(count, k) > 0,
                        owner.repeat_interleave(k**level, dim=0),
                    )
                )
            vectors = updated
        return vectors[0]

    def encode(self, batch: SessionBatch) -> BackboneOutput:
        if self.neighbor_items is None:
            raise IntentrecError(
                "GCE-GNN needs its global item graph: call backbone.prepare(dataset) on the "
                "prepared dataset before encoding"
            )
        graph = session_graph(batch)
        embedded = self.embed_items(graph.node_items)
        # Mean item embedding over the session's clicks (repeats count), as in the authors' code.
        session_mean = graph.sum_per_session(graph.node_counts.unsqueeze(1) * embedded)
        session_mean = session_mean / batch.lengths.clamp(min=1).unsqueeze(1).to(embedded.dtype)
        local_states = self.session_level(graph, embedded)
        global_states = self.global_level(graph, embedded, session_mean)
        nodes = self.dropout_local(local_states) + self.dropout_global(global_states)

        # The readout runs on the real clicks only, packed ([T, d]); a batch is as wide as its
        # longest session, so the padded [B, L, d] layout would be mostly padding.
        mask = graph.position_mask
        packing = PackedTokens(mask)
        rows = packing.rows  # session of each real click, in click order
        clicks = nodes.index_select(0, packing.pack(graph.flat_alias))  # [T, d]
        positions = reversed_positions(batch.lengths, mask.shape[1], self.config.max_positions)
        position = self.position(packing.pack(positions))
        mixed = torch.tanh(self.position_mix(torch.cat([clicks, position], dim=1)))
        lengths = batch.lengths.clamp(min=1).unsqueeze(1).to(clicks.dtype)
        click_mean = self.readout_mean(packing.sum_per_row(clicks) / lengths)
        gate = self.readout_position(mixed) + click_mean.index_select(0, rows)
        beta = self.readout_score(torch.sigmoid(gate))  # [T, 1]
        session = packing.sum_per_row(beta * clicks)
        local = nodes.index_select(0, graph.last_node)
        return BackboneOutput(session=session, vectors={"local": local, "global": session})
