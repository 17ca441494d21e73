"""SHARE: session-based recommendation with hypergraph attention networks (Wang et al., SDM 2021).

Following the paper and the authors' released code (wangjlgz/Hypergraph-Session-Recommendation):

* **Session hypergraph.** The nodes are the session's distinct items; every sliding window of
  ``w + 1`` consecutive clicks (``w = 0..window``, every start) is a hyperedge over the items in it.
  Windows are not merged when they hold the same items, as in the code.
* **Hypergraph attention layers** (the code's ``HyperGraphAttentionLayerSparse``), for node states
  ``x``: node → hyperedge ``e_j = Σ_{v ∈ j} softmax_v(uᵀ W_k x_v / √d) V x_v`` with one learned
  context vector ``u`` (``V`` = identity in the first layer, a matrix after it); hyperedge → node
  ``x'_v = Σ_{j ∋ v} softmax_j((W_k x_v)ᵀ (W_e e_j) / √d) e_j``; dropout on both attention weights.
  Each layer's output is ``dropout(x') + x⁰``: the residual is always the item embedding.
* **Readout.** One pre-norm Transformer layer (one head, no position encoding, as in the code) over
  the clicks' dynamic item states; the query is the last click (only that output is used, so only
  it is computed): keys and values read the states *without* the layer norm (the code normalises
  the query only). ``s = LN(h_last)``; item ``v`` scores ``sᵀ v`` against the ID table.

``local`` = dynamic state of the last click, ``global`` = ``session`` = s. Every parameter (layer
norms included) is initialised ~ U(-1/√d, 1/√d), as the code does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from intentrec.data.batch import SessionBatch
from intentrec.models.backbones.srgnn import uniform_init_
from intentrec.models.base import Backbone, BackboneConfig, BackboneOutput
from intentrec.models.graph import SessionGraph, segment_softmax, session_graph
from intentrec.models.layers import PackedTokens
from intentrec.models.registry import register_backbone

# The code's main.py: Adam lr 0.001, no weight decay (--l2 0.0), decay 0.1 every 3 epochs, batch 100.
SHARE_TRAIN: dict = {"lr": 0.001, "batch_size": 100, "l2": 0.0, "lr_decay_step": 3, "lr_decay_gamma": 0.1}


@dataclass
class SessionHypergraph:
    """Sliding-window hyperedges over the packed nodes of a batch: distinct (edge, node) pairs."""

    pair_edge: torch.Tensor  # long [P]
    pair_node: torch.Tensor  # long [P] packed node (see SessionGraph)
    num_edges: int
    num_nodes: int


def build_session_hypergraph(graph: SessionGraph, window: int) -> SessionHypergraph:
    """Hyperedges of every window of ``w + 1`` consecutive clicks, ``w = 0..window`` (one loop step
    per window size; the sessions are handled together)."""
    alias, mask = graph.flat_alias, graph.position_mask
    width = mask.shape[1]
    edges, nodes = [], []
    first_edge = 0
    for w in range(min(window, width - 1) + 1):
        starts = mask[:, w:]  # a window starting at j exists iff click j + w does
        count = int(starts.sum())
        ids = torch.arange(first_edge, first_edge + count, device=alias.device)
        for offset in range(w + 1):
            edges.append(ids)
            nodes.append(alias[:, offset : offset + width - w][starts])
        first_edge += count
    total = max(graph.total_nodes, 1)
    keys = torch.unique(torch.cat(edges) * total + torch.cat(nodes))  # a repeated item joins once
    return SessionHypergraph(keys // total, keys % total, first_edge, graph.total_nodes)


class HypergraphAttention(nn.Module):
    """One hypergraph attention layer: nodes → hyperedges → nodes."""

    def __init__(self, dim: int, dropout: float, transfer: bool):
        super().__init__()
        self.value = nn.Linear(dim, dim, bias=False) if transfer else None  # the code's weight
        self.key = nn.Linear(dim, dim, bias=False)  # weight2
        self.edge_key = nn.Linear(dim, dim, bias=False)  # weight3
        self.context = nn.Parameter(torch.empty(dim))  # word_context
        self.dropout = nn.Dropout(dropout)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, hypergraph: SessionHypergraph, states: torch.Tensor) -> torch.Tensor:
        edge, node = hypergraph.pair_edge, hypergraph.pair_node
        keys = self.key(states)
        values = states if self.value is None else self.value(states)
        node_logits = (keys @ self.context) * self.scale  # [N]: the query u is shared by all edges
        alpha = self.dropout(segment_softmax(node_logits.index_select(0, node), edge, hypergraph.num_edges))
        edges = states.new_zeros(hypergraph.num_edges, states.shape[1]).index_add_(
            0, edge, alpha.unsqueeze(1) * values.index_select(0, node)
        )
        edge_keys = self.edge_key(edges)
        logits = (keys.index_select(0, node) * edge_keys.index_select(0, edge)).sum(dim=1) * self.scale
        beta = self.dropout(segment_softmax(logits, node, hypergraph.num_nodes))
        return states.new_zeros(states.shape).index_add_(0, node, beta.unsqueeze(1) * edges.index_select(0, edge))


class SHAREConfig(BackboneConfig):
    steps: int = Field(2, ge=1, description="hypergraph attention layers (code: --step 2)")
    window: int = Field(
        1, ge=0, description="largest window offset w: hyperedges span w + 1 = 1..window + 1 clicks (code: --window 1)"
    )
    dropout: float = Field(0.3, ge=0.0, lt=1.0, description="attention, residual and readout dropout (code: 0.3)")


@register_backbone("share")
class SHARE(Backbone):
    """``local`` = last click's dynamic item state, ``global`` = ``session`` = LN(readout)."""

    Config: ClassVar[type[BackboneConfig]] = SHAREConfig
    vector_names: ClassVar[tuple[str, ...]] = ("local", "global")
    default_train: ClassVar[dict] = dict(SHARE_TRAIN)

    def __init__(self, num_items: int, config: SHAREConfig):
        super().__init__(num_items, config)
        self.config: SHAREConfig
        d = config.embedding_dim
        self.id_table = nn.Parameter(torch.empty(num_items, d))
        self.layers = nn.ModuleList(
            HypergraphAttention(d, config.dropout, transfer=step > 0) for step in range(config.steps)
        )
        # readout: the code's EncoderLayer(d, d, n_head=1, d_k=d, d_v=d) and its final layer norm
        self.query_norm = nn.LayerNorm(d, eps=1e-6)
        self.query = nn.Linear(d, d, bias=False)
        self.key = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(d, d, bias=False)
        self.attention_out = nn.Linear(d, d, bias=False)
        self.feed_forward_norm = nn.LayerNorm(d, eps=1e-6)
        self.feed_forward_in = nn.Linear(d, d)
        self.feed_forward_out = nn.Linear(d, d)
        self.output_norm = nn.LayerNorm(d, eps=1e-6)
        self.dropout = nn.Dropout(config.dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        uniform_init_(self, self.dim)

    def node_states(self, graph: SessionGraph) -> torch.Tensor:
        """Dynamic item states of the packed nodes ``[N, d]``."""
        hypergraph = build_session_hypergraph(graph, self.config.window)
        embedded = self.embed_items(graph.node_items)
        states = embedded
        for layer in self.layers:
            states = self.dropout(layer(hypergraph, states)) + embedded
        return states

    def readout(self, clicks: torch.Tensor, packing: PackedTokens) -> torch.Tensor:
        """The Transformer layer's output at the last click, layer-normed ``[B, d]``."""
        last = clicks.index_select(0, packing.last)
        query = self.query(self.query_norm(last)).index_select(0, packing.rows)
        logits = (query * self.key(clicks)).sum(dim=1) / math.sqrt(self.dim)
        weights = self.dropout(packing.softmax_per_row(logits))
        attended = packing.sum_per_row(weights.unsqueeze(1) * self.value(clicks))
        hidden = last + self.dropout(self.attention_out(attended))
        hidden = hidden + self.dropout(
            self.feed_forward_out(F.relu(self.feed_forward_in(self.feed_forward_norm(hidden))))
        )
        return self.output_norm(hidden)

    def encode(self, batch: SessionBatch) -> BackboneOutput:
        graph = session_graph(batch)
        packing = PackedTokens(graph.position_mask)
        states = self.node_states(graph)
        clicks = states.index_select(0, packing.pack(graph.flat_alias))  # [T, d]
        session = self.readout(clicks, packing)
        local = states.index_select(0, graph.last_node)
        return BackboneOutput(session=session, vectors={"local": local, "global": session})
