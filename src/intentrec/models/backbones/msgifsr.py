"""MSGIFSR: multi-granularity consecutive user intent units (Guo et al., WSDM 2022).

A session ``[i_1 … i_n]`` is read at granularities ``k = 1 … K`` (``order``). At granularity k the
*intent units* are the distinct windows of k consecutive clicks ``(i_t … i_{t+k-1})``; granularity 1
is SR-GNN's distinct items. Every unit becomes a node of a heterogeneous session graph with, following
the authors' ``collate.py``, distinct edges

* ``intra_k``: unit at t → unit at t + 1 (consecutive units of one granularity),
* ``up_k`` (k ≥ 2): item at t → the k-unit that starts at t + 1,
* ``down_k`` (k ≥ 2): the k-unit that starts at t → the item at t + k.

A k-unit's input vector is ``0.5 mean(e) + 0.5 GRU_k(e)`` over its items' vectors ``e`` (clipped to
norm 1, the code's ``nn.Embedding(max_norm=1)``), L2-normalised. One layer of graph attention runs over
the graph in both directions (two sets of DGL-style ``GATConv``s, 8 heads, residual; one module per
``intra_k``, one ``inter`` module shared by all ``up_k``/``down_k`` relations), summed over relations,
max over heads, plus the mean input vector of the node's granularity in its session; then normalised.

Readout, per granularity k: ``g_k`` = softmax attention over the nodes of *all* granularities of the
session with the last k-unit ``l_k`` as query, ``s_k = normalise(W_k [l_k ; g_k])``. Scoring with the
item table normalised: per granularity the *repeat-explore* mixture ("RE") ``p_k = φ_k softmax_in(12
s_kᵀ v) + (1 − φ_k) softmax_out(12 s_kᵀ v)`` (``softmax_in`` over the items already in the session,
``softmax_out`` over the others, ``φ_k`` from an MLP of ``s_k``); the granularities are fused ("IFR") as
``p = Σ_k softmax(a)_k p_k``; scores are ``log p`` (cross-entropy of the scores = the code's NLL of
``log p``). We compute it in log space (no underflow to ``log 0``).

Deviations from the authors' code, on purpose: (1) a session shorter than k has no k-unit; the code
then makes one out of the session's *smallest item index* repeated k times, which depends on how items
are numbered. By default we use the whole session as its one k-unit (``short_units="session"``);
``"smallest_item"`` restores the code's rule. (2) DGL's ``HeteroGraphConv`` skips a relation that has
no edge anywhere in the batch, so its residual and bias terms vanish for *every* node of that batch;
we always add them (the same numbers whenever every relation has an edge in the batch, which a real
training batch has), so a session is encoded independently of its batch. (3) ``nn.Embedding(max_norm=1)``
rescales the table in place at each lookup; we clip the looked-up vectors instead and leave the table
alone. Parameters the code creates but never uses (the layer's ``lint``/``linq``/``link``, ``beta``,
``sc_sr[1:]``, the last ``GRU``) are left out.

Vectors: ``local`` = state of the last clicked item (granularity 1), ``global`` = ``g_1``, the
attention readout over the units of all granularities queried by the last item; ``session`` =
``Σ_k softmax(a)_k s_k``. The K intent vectors ``s_k`` are ``extras["intents"]``; they are what the
backbone scores. When a method replaces ``session``, the new vector is scored the same way as a
single intent (RE included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from intentrec.data.batch import SessionBatch
from intentrec.models.backbones.msgat import clip_norm
from intentrec.models.base import Backbone, BackboneConfig, BackboneOutput
from intentrec.models.graph import build_session_graph, segment_softmax
from intentrec.models.registry import register_backbone

if TYPE_CHECKING:
    from intentrec.training.config import TrainerConfig


# --------------------------------------------------------------------------- intent-unit graph


@dataclass
class UnitLevel:
    """The intent units of one granularity k, packed over the batch (``N`` units)."""

    items: torch.Tensor  # long [N, k] item indices of each unit, 0 after its length
    lengths: torch.Tensor  # long [N] items per unit (k, or fewer for a short session's unit)
    session: torch.Tensor  # long [N] batch row of each unit, non-decreasing
    last: torch.Tensor  # long [B] the unit of the last k clicks (a short session: its one unit)
    alias: torch.Tensor  # long [B, W] unit starting at each click position, -1 where none


@dataclass
class Relation:
    """Distinct directed edges from units of granularity ``source`` to units of ``target``."""

    name: str  # "intra_k", "up_k" or "down_k"
    source: int  # granularity index (0 = items)
    target: int
    edge_source: torch.Tensor  # long [E] packed unit ids of the source level
    edge_target: torch.Tensor  # long [E]


@dataclass
class IntentGraph:
    levels: list[UnitLevel]
    relations: list[Relation]
    batch_size: int


def _distinct_edges(source: torch.Tensor, target: torch.Tensor, num_targets: int) -> tuple[torch.Tensor, torch.Tensor]:
    keys = torch.unique(source * max(num_targets, 1) + target)
    return keys // max(num_targets, 1), keys % max(num_targets, 1)


def _unit_level(items: torch.Tensor, lengths: torch.Tensor, k: int, short_units: str) -> UnitLevel:
    """Distinct k-windows of every session; a session shorter than k gets one unit (see module doc)."""
    batch, width = items.shape
    device = items.device
    windows = items.unfold(1, k, 1) if width >= k else items.new_zeros(batch, 0, k)  # [B, W, k]
    starts = torch.arange(windows.shape[1], device=device)
    valid = starts.unsqueeze(0) + k <= lengths.unsqueeze(1)  # [B, W]
    rows = torch.arange(batch, device=device).unsqueeze(1).expand_as(valid)
    short = torch.nonzero(lengths < k).squeeze(1)
    if short_units == "smallest_item":
        smallest = items.masked_fill(items == 0, torch.iinfo(items.dtype).max).amin(dim=1)
        short_items = smallest[short].unsqueeze(1).expand(-1, k)
    else:  # the whole session, padded with 0 to k items
        short_items = F.pad(items, (0, max(k - width, 0)))[short, :k]
    keys = torch.cat(
        [
            torch.cat([rows[valid].unsqueeze(1), windows[valid]], dim=1),
            torch.cat([short.unsqueeze(1), short_items], dim=1),
        ]
    )
    # One row per distinct (session, unit content); sorted by session first, so packed ids group by session.
    unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
    num_windows = int(valid.sum())
    alias = torch.full_like(valid, -1, dtype=torch.long).masked_scatter(valid, inverse[:num_windows])
    last = torch.empty(batch, dtype=torch.long, device=device)
    has_window = lengths >= k
    last_start = (lengths - k).clamp(min=0).unsqueeze(1)
    if alias.shape[1]:
        last[has_window] = alias.gather(1, last_start.clamp(max=alias.shape[1] - 1)).squeeze(1)[has_window]
    last[short] = inverse[num_windows:]
    unit_items = unique[:, 1:]
    return UnitLevel(
        items=unit_items,
        lengths=(unit_items > 0).sum(dim=1),
        session=unique[:, 0],
        last=last,
        alias=alias,
    )


def build_intent_graph(items: torch.Tensor, lengths: torch.Tensor, order: int, short_units: str) -> IntentGraph:
    """MSGIFSR's heterogeneous graph of a right-padded batch ``items`` ``[B, L]``, no per-session loop."""
    graph = build_session_graph(items, lengths)
    position_mask = graph.position_mask
    item_alias = graph.flat_alias  # [B, L] packed item node of each click
    levels = [
        UnitLevel(
            items=graph.node_items.unsqueeze(1),
            lengths=torch.ones_like(graph.node_items),
            session=graph.node_session,
            last=graph.last_node,
            alias=torch.where(position_mask, item_alias, -1),
        )
    ]
    relations = [Relation("intra_1", 0, 0, graph.edge_source, graph.edge_target)]
    for k in range(2, order + 1):
        level = _unit_level(items, lengths, k, short_units)
        levels.append(level)
        alias = level.alias
        count = int(level.session.shape[0])
        follows = alias[:, 1:] >= 0  # a unit starts at t + 1
        relations.append(
            Relation(f"intra_{k}", k - 1, k - 1, *_distinct_edges(alias[:, :-1][follows], alias[:, 1:][follows], count))
        )
        steps = follows.shape[1]
        up = _distinct_edges(item_alias[:, :steps][follows], alias[:, 1:][follows], count)
        relations.append(Relation(f"up_{k}", 0, k - 1, *up))
        down = _distinct_edges(alias[:, :steps][follows], item_alias[:, k : k + steps][follows], graph.total_nodes)
        relations.append(Relation(f"down_{k}", k - 1, 0, *down))
    return IntentGraph(levels=levels, relations=relations, batch_size=int(items.shape[0]))


# --------------------------------------------------------------------------- layers


class GraphAttention(nn.Module):
    """DGL's ``GATConv`` as the code configures it: shared ``fc`` for source and target, ``heads``
    heads of width d, identity residual of the (dropped-out) target input, bias. ``[N_t, heads, d]``."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.fc = nn.Linear(dim, heads * dim, bias=False)
        self.attn_l = nn.Parameter(torch.empty(heads, dim))
        self.attn_r = nn.Parameter(torch.empty(heads, dim))
        self.bias = nn.Parameter(torch.empty(heads * dim))
        self.feat_drop = nn.Dropout(dropout)
        self.attn_drop = nn.Dropout(dropout)

    def forward(
        self, source: torch.Tensor, target: torch.Tensor, edge_source: torch.Tensor, edge_target: torch.Tensor
    ) -> torch.Tensor:
        heads, d = self.heads, target.shape[1]
        source, target = self.feat_drop(source), self.feat_drop(target)
        projected = self.fc(source).view(-1, heads, d)
        left = (projected * self.attn_l).sum(-1)  # [N_s, H]
        # (fc(target) · attn_r) without projecting every target: fold attn_r into fc first.
        right = target @ torch.einsum("hoi,ho->ih", self.fc.weight.view(heads, d, -1), self.attn_r)  # [N_t, H]
        logits = F.leaky_relu(left[edge_source] + right[edge_target], 0.2)
        weights = self.attn_drop(segment_softmax(logits, edge_target, target.shape[0]))
        messages = weights.unsqueeze(-1) * projected[edge_source]
        out = projected.new_zeros(target.shape[0], heads, d).index_add_(0, edge_target, messages)
        return out + target.unsqueeze(1) + self.bias.view(heads, d)


class MultiGranularityLayer(nn.Module):
    """The code's ``MSHGNN``: graph attention along the edges and against them, summed over relations."""

    def __init__(self, dim: int, order: int, heads: int, dropout: float):
        super().__init__()
        names = [f"intra_{k}" for k in range(1, order + 1)] + ["inter"]
        self.forward_convs = nn.ModuleDict({n: GraphAttention(dim, heads, dropout) for n in names})
        self.backward_convs = nn.ModuleDict({n: GraphAttention(dim, heads, dropout) for n in names})

    def forward(self, graph: IntentGraph, states: list[torch.Tensor]) -> list[torch.Tensor]:
        summed: list[torch.Tensor | float] = [0.0] * len(states)
        for relation in graph.relations:
            key = relation.name if relation.name.startswith("intra") else "inter"
            s, t = relation.source, relation.target
            along = self.forward_convs[key](states[s], states[t], relation.edge_source, relation.edge_target)
            against = self.backward_convs[key](states[t], states[s], relation.edge_target, relation.edge_source)
            summed[t] = summed[t] + along
            summed[s] = summed[s] + against
        out = []
        for level, (total, inputs) in enumerate(zip(summed, states, strict=True)):
            sessions = graph.levels[level].session
            mean = _segment_mean(inputs, sessions, graph.batch_size)
            out.append(total.amax(dim=1) + mean.index_select(0, sessions))
        return out


def _repeats_earlier(items: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` True where the same item occurs at an earlier position of the row."""
    same = items.unsqueeze(2) == items.unsqueeze(1)  # [B, L, L]
    return torch.tril(same, diagonal=-1).any(dim=2)


def _segment_mean(values: torch.Tensor, segment: torch.Tensor, count: int) -> torch.Tensor:
    sums = values.new_zeros(count, values.shape[1]).index_add_(0, segment, values)
    sizes = torch.bincount(segment, minlength=count).clamp(min=1).to(values.dtype)
    return sums / sizes.unsqueeze(1)


# --------------------------------------------------------------------------- model


class MSGIFSRConfig(BackboneConfig):
    embedding_dim: int = Field(256, ge=1, description="the code's default (main_msgifsr.py)")
    order: int = Field(3, ge=1, description="highest granularity K of the intent units")
    num_layers: int = Field(1, ge=1, description="graph attention layers")
    heads: int = Field(8, ge=1, description="GATConv heads (max-pooled)")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="feature and attention dropout")
    scale: float = Field(12.0, gt=0, description="factor of the cosine scores inside the softmaxes")
    repeat_explore: bool = Field(True, description="the RE mixture of in-session / new-item softmaxes (code: --extra)")
    fusion: bool = Field(True, description="IFR: mix the granularities' distributions (code: --fusion); else k=1 only")
    short_units: Literal["session", "smallest_item"] = Field(
        "session", description="k-unit of a session shorter than k: the session itself, or the code's rule"
    )


@register_backbone("msgifsr")
class MSGIFSR(Backbone):
    """``local`` = last item's state, ``global`` = readout g_1, ``session`` = IFR-weighted intents."""

    Config: ClassVar[type[BackboneConfig]] = MSGIFSRConfig
    vector_names: ClassVar[tuple[str, ...]] = ("local", "global")
    # main_msgifsr.py / train.py: Adam lr 1e-3, batch 512, L2 1e-4 (not on biases), StepLR(3, 0.1).
    default_train: ClassVar[dict] = {
        "lr": 0.001,
        "batch_size": 512,
        "l2": 1e-4,
        "lr_decay_step": 3,
        "lr_decay_gamma": 0.1,
    }

    def __init__(self, num_items: int, config: MSGIFSRConfig):
        super().__init__(num_items, config)
        self.config: MSGIFSRConfig
        d, order = config.embedding_dim, config.order
        self.id_table = nn.Parameter(torch.empty(num_items, d))
        self.feat_drop = nn.Dropout(config.dropout)
        self.unit_grus = nn.ModuleList(nn.GRUCell(d, d) for _ in range(order - 1))
        self.layers = nn.ModuleList(
            MultiGranularityLayer(d, order, config.heads, config.dropout) for _ in range(config.num_layers)
        )
        self.readout_node = nn.ModuleList(nn.Linear(d, d) for _ in range(order))
        self.readout_last = nn.ModuleList(nn.Linear(d, d, bias=False) for _ in range(order))
        self.readout_score = nn.ModuleList(nn.Linear(d, 1, bias=False) for _ in range(order))
        self.intent = nn.ModuleList(nn.Linear(2 * d, d, bias=False) for _ in range(order))
        if config.repeat_explore:
            self.repeat_gate = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 2, bias=False))
        if config.fusion and order > 1:
            self.granularity_logits = nn.Parameter(torch.empty(order))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.dim)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.uniform_(-bound, bound)
            if hasattr(self, "granularity_logits"):
                self.granularity_logits.zero_()
                self.granularity_logits[0] = 1.0  # the code starts the IFR weights at [1, 0, …]

    def param_groups(self, cfg: TrainerConfig) -> list[dict]:
        """The code's ``fix_weight_decay``: no weight decay on biases."""
        decay, no_decay = [], []
        for name, parameter in self.named_parameters():
            if parameter.requires_grad:
                (no_decay if "bias" in name else decay).append(parameter)
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]

    def scoring_table(self, vectors: torch.Tensor | None = None) -> torch.Tensor:
        if vectors is None:
            return self.item_table()
        return F.normalize(vectors, dim=-1)

    # ---------------------------------------------------------------- encoder
    def unit_inputs(self, level: UnitLevel, granularity: int) -> torch.Tensor:
        """``normalise(0.5 mean(e) + 0.5 GRU(e))`` of each unit (granularity 1: ``normalise(e)``)."""
        vectors = self.feat_drop(clip_norm(self.embed_items(level.items), 1.0))  # [N, k, d]
        if granularity == 1:
            return F.normalize(vectors[:, 0], dim=-1)
        cell = self.unit_grus[granularity - 2]
        hidden = vectors.new_zeros(vectors.shape[0], vectors.shape[2])
        for step in range(vectors.shape[1]):
            hidden = torch.where((step < level.lengths).unsqueeze(1), cell(vectors[:, step], hidden), hidden)
        mask = (level.items > 0).unsqueeze(-1).to(vectors.dtype)
        mean = (vectors * mask).sum(1) / level.lengths.clamp(min=1).unsqueeze(1).to(vectors.dtype)
        return F.normalize(0.5 * mean + 0.5 * hidden, dim=-1)

    def readout(self, graph: IntentGraph, states: list[torch.Tensor], lasts: list[torch.Tensor]) -> list[torch.Tensor]:
        """``g_k`` for every granularity: attention over the nodes of all granularities, query ``l_k``."""
        nodes = torch.cat(states)
        owner = torch.cat([level.session for level in graph.levels])
        out = []
        for k, last in enumerate(lasts):
            hidden = self.readout_node[k](nodes) + self.readout_last[k](last).index_select(0, owner)
            alpha = segment_softmax(self.readout_score[k](torch.sigmoid(hidden)), owner, graph.batch_size)
            out.append(nodes.new_zeros(graph.batch_size, nodes.shape[1]).index_add_(0, owner, alpha * nodes))
        return out

    def granularity_log_weights(self) -> torch.Tensor | None:
        """IFR weights ``log softmax(a)`` ``[K]``; None when only granularity 1 is scored."""
        if not hasattr(self, "granularity_logits"):
            return None
        return torch.log_softmax(self.granularity_logits, dim=0)

    def encode(self, batch: SessionBatch) -> BackboneOutput:
        graph = build_intent_graph(batch.items, batch.lengths, self.config.order, self.config.short_units)
        states = [self.unit_inputs(level, k + 1) for k, level in enumerate(graph.levels)]
        for layer in self.layers:
            states = layer(graph, states)
        states = [F.normalize(s, dim=-1) for s in states]
        lasts = [s.index_select(0, level.last) for s, level in zip(states, graph.levels, strict=True)]
        readouts = self.readout(graph, states, lasts)
        intents = torch.stack(
            [
                F.normalize(self.intent[k](torch.cat([last, read], dim=1)), dim=-1)
                for k, (last, read) in enumerate(zip(lasts, readouts, strict=True))
            ],
            dim=1,
        )  # [B, K, d]
        weights = self.granularity_log_weights()
        session = intents[:, 0] if weights is None else torch.einsum("k,bkd->bd", weights.exp(), intents)
        return BackboneOutput(
            session=session,
            vectors={"local": lasts[0], "global": readouts[0]},
            extras={"intents": intents, "intent_session": session, "items": batch.items},
        )

    # ---------------------------------------------------------------- scoring
    def intent_log_probs(self, intents: torch.Tensor, table: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``log p_k(v)`` ``[B, K, n]`` of intents ``[B, K, d]`` against a (normalised) ``table``."""
        logits = self.config.scale * torch.einsum("bkd,nd->bkn", intents, table)
        if not self.config.repeat_explore:
            return torch.log_softmax(logits, dim=-1)
        return logits + self._repeat_explore_offsets(logits, intents, items)

    def _repeat_explore_offsets(self, logits: torch.Tensor, intents: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``log p_k(v) − logit_k(v)`` ``[B, K, n]``: ``log φ − LSE_in`` on session items, ``log(1−φ) − LSE_out``
        elsewhere. Exactly one of the two softmaxes covers v, so the RE mixture needs no ``logaddexp``."""
        batch, _, n = logits.shape
        seen = torch.zeros(batch, n, dtype=torch.bool, device=items.device)
        rows = torch.arange(batch, device=items.device).unsqueeze(1).expand_as(items)
        real = items > 0
        seen[rows[real], items[real] - 1] = True
        # LSE over the session's distinct items, from the few logits gathered at them.
        positions = (items - 1).clamp(min=0)
        first = real & ~_repeats_earlier(items)
        gathered = logits.gather(2, positions.unsqueeze(1).expand(-1, logits.shape[1], -1))
        lse_in = torch.logsumexp(gathered.masked_fill(~first.unsqueeze(1), float("-inf")), dim=-1)
        lse_out = torch.logsumexp(logits.masked_fill(seen.unsqueeze(1), float("-inf")), dim=-1)
        gate = torch.log_softmax(self.repeat_gate(intents), dim=-1)  # [B, K, 2]
        # A side with no item (a session holding the whole catalogue) has LSE = -inf; it gets p = 0.
        inside = torch.where(torch.isfinite(lse_in), gate[..., 0] - lse_in, float("-inf"))
        outside = torch.where(torch.isfinite(lse_out), gate[..., 1] - lse_out, float("-inf"))
        return torch.where(seen.unsqueeze(1), inside.unsqueeze(-1), outside.unsqueeze(-1))

    def score_with(self, output: BackboneOutput, table: torch.Tensor) -> torch.Tensor:
        """``log p(v)``: the IFR mixture over the intents, or over a method's single session vector."""
        items = output.extras["items"]
        if output.session is output.extras["intent_session"]:
            intents, weights = output.extras["intents"], self.granularity_log_weights()
            if weights is None:
                intents = intents[:, :1]
        else:  # a method's own session vector, scored as one intent
            intents, weights = F.normalize(output.session, dim=-1).unsqueeze(1), None
        log_probs = self.intent_log_probs(intents, table, items)
        if weights is None:
            return log_probs[:, 0]
        return torch.logsumexp(log_probs + weights.view(1, -1, 1), dim=1)
