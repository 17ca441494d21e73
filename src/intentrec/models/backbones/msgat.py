"""MSGAT: bi-channel multiple sparse graph attention networks (Qiao et al., CIKM 2023).

Two channels, following the authors' released code (``model.py`` of QEpiphany/MSGAT):

**Intra-session channel** (width 2d):

* every node (distinct item, ordered by item index) gets ``x = LN([e_v ; p_slot])``: its item
  vector and a position vector, both clipped to norm 1.5 (the code's ``max_norm``); the position
  is the node's rank among the session's distinct items (slot + 1: slot 0 of the code's node list
  is the padding item);
* SR-GNN's gated GNN (``steps``) on the session graph gives click states ``h_t``;
* a zero "target" token is appended to the clicks and a multi-head α-entmax self-attention runs
  over clicks + target: ``q = Dropout(ReLU(W_q x))``, keys and values the states themselves,
  ``softmax`` replaced by ``entmax_α`` with one ``α = 1 + σ(w_αᵀ q_target^head)`` per session and
  head; then ``o = LN(Dropout(W2 ReLU(W1 a)) + a)``. The target token's output is the target
  representation ``t``, the clicks' outputs ``x̂_t`` are the keys of the next step;
* sparse global attention: ``β = entmax_α_g(w0ᵀ ReLU(W1 x̂_t + W2 t + b))`` over clicks with
  ``α_g = 1 + σ(w_gᵀ t)``, values ``σ(W_a h_last + W_b h_t)``; ``c = Σ β_t σ(...)``;
* decoder ``s = normalise(Dropout(SELU(W_f [c ; t])))`` (d-dimensional).

**Inter-session channel** (the *pool*: the sessions a session is related to):

* relation: ``r = normalise(SELU(Σ_j Ĵ_ij R_j))``, ``R_j`` the sum of session j's distinct item
  vectors (no gradient, as in the code), ``Ĵ`` the row-normalised Jaccard overlap of the pool's
  item sets (1 on the diagonal);
* intent neighbour collaboration (INC): with ``z = s + r``, cosine similarities of ``z`` within the
  pool, a softmax over the pool, the ``num_neighbors`` largest, a softmax over those, and
  ``n = Dropout(Σ w_k z_k)``;
* session ``s + n``; scores ``scale · (s + n)ᵀ v̂`` with unit-norm item vectors ``v̂`` (scale 20).

The pool: in training, the batch (as in the code; ``train_pool: self`` trains as it evaluates). In
evaluation, each session alone, i.e. what the code computes for a batch of one (had its
``squeeze()`` not dropped the batch dimension): ``r = normalise(SELU(R_i))``, ``n = z``, session
``2s + r``. The code evaluates with the test batch as the pool, which makes a session's scores
depend on its batch-mates and, with prefix examples stored in session order, lets the longer
prefixes of the same session (which contain the target) into the pool; see docs/backbones.md.

Other deviations, also documented there: padding clicks are masked in the self-attention (the
code lets every query attend to them); the code's target-aware attention in the relation channel
has identical keys (one relation vector copied per position), so its output is that vector
whatever its weights, and we compute the vector directly without those parameters.

``local`` = the last click's item vector (clipped), ``global`` = s, ``session`` = s + n.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from intentrec.data.batch import SessionBatch
from intentrec.models.backbones.srgnn import GatedGraphNetwork, uniform_init_
from intentrec.models.base import Backbone, BackboneConfig, BackboneOutput
from intentrec.models.graph import SessionGraph, session_graph
from intentrec.models.layers import LengthGroups, PackedTokens
from intentrec.models.registry import register_backbone
from intentrec.models.scoring import linear_cross_entropy
from intentrec.search_space import FloatRange, IntRange, SearchSpace

# Authors' main.py: Adam lr 0.001, batch 512, l2 1e-5, lr × 0.1 every 5 epochs (30 epochs, patience 3).
MSGAT_TRAIN: dict = {
    "lr": 0.001,
    "batch_size": 512,
    "l2": 1e-5,
    "lr_decay_step": 5,
    "lr_decay_gamma": 0.1,
}

#: the code's ``add_value`` keeps α away from 1, where entmax's exponent 1/(α-1) is unbounded
MIN_ALPHA = 1.0 + 1e-5


class _Entmax(torch.autograd.Function):
    """α-entmax over the last dimension, with the closed-form backward pass.

    ``p_i = [(α - 1) z_i - τ]_+^{1/(α-1)}`` with τ such that ``Σ p_i = 1`` (Peters et al., 2019; the
    ``entmax_bisect`` the authors call). The code finds τ by 50 bisection steps; we use Newton's
    method on ``f(τ) = Σ [(α - 1) z_i - τ]_+^{1/(α-1)} - 1``, which is convex and decreasing for
    α ≤ 2, so steps from ``τ = (α - 1) max z - 1`` (where f ≥ 0) rise monotonically to the root
    without overshooting. It stops when a step no longer moves τ in floating point (6-10 steps on
    Beauty batches, against 25-35 halvings for bisection to reach float resolution); the result
    equals bisection's to rounding (tests/models/test_msgat.py).
    """

    @staticmethod
    def forward(ctx, scores: torch.Tensor, alpha: torch.Tensor, max_steps: int) -> torch.Tensor:
        ctx.alpha_shape = alpha.shape
        alpha = alpha.expand(*scores.shape[:-1], 1)
        rise = alpha - 1
        exponent = 1.0 / rise
        shifted = (scores - scores.amax(dim=-1, keepdim=True)) * rise
        tau = torch.full_like(rise, -1.0)
        tiny = torch.finfo(scores.dtype).tiny
        for _ in range(max_steps):
            gap = (shifted - tau).clamp_(min=0)
            mass = gap.pow(exponent)
            # f'(τ) = -(1/(α-1)) Σ gap^{1/(α-1) - 1}, taken as mass / gap (0 off the support, also
            # for α = 2, where gap^0 would count every entry). The largest entry keeps
            # gap ≥ (1/n)^{α-1} > 0, so the slope is never 0.
            slope = (mass / gap.clamp_(min=tiny)).sum(dim=-1, keepdim=True)
            excess = mass.sum(dim=-1, keepdim=True) - 1
            step = (excess / (exponent * slope)).clamp_(min=0)
            moved = tau + step
            if bool((moved == tau).all()):
                break
            tau = moved
        probs = (shifted - tau).clamp_(min=0).pow_(exponent)
        probs = probs / probs.sum(dim=-1, keepdim=True)
        ctx.save_for_backward(probs, alpha)
        return probs

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        probs, alpha = ctx.saved_tensors
        support = probs > 0
        zero = probs.new_zeros(())
        skew = torch.where(support, probs.pow(2 - alpha), zero)  # p^{2-α} on the support
        skew_sum = skew.sum(dim=-1, keepdim=True)
        grad_scores = skew * grad
        grad_scores = grad_scores - skew * (grad_scores.sum(dim=-1, keepdim=True) / skew_sum)
        grad_alpha = None
        if ctx.needs_input_grad[1]:
            rise = alpha - 1
            plogp = torch.where(support, probs * probs.clamp(min=torch.finfo(probs.dtype).tiny).log(), zero)
            entropy = plogp.sum(dim=-1, keepdim=True)
            skewed = skew / skew_sum
            grad_alpha = grad * (probs - skewed) / rise**2 - grad * (plogp - skewed * entropy) / rise
            grad_alpha = grad_alpha.sum(dim=-1, keepdim=True).sum_to_size(ctx.alpha_shape)
        return grad_scores, grad_alpha, None


def entmax(scores: torch.Tensor, alpha: torch.Tensor, max_steps: int = 50) -> torch.Tensor:
    """α-entmax of ``scores`` ``[..., n]`` over the last dimension (``-inf`` entries get 0).

    ``alpha`` ``[..., 1]`` (broadcastable) must lie in (1, 2]; every row needs a finite score.
    """
    return _Entmax.apply(scores, alpha, max_steps)


def sparsity_alpha(layer: nn.Linear, query: torch.Tensor) -> torch.Tensor:
    """The code's learned entmax α: ``1 + σ(layer(query))``, kept above 1."""
    return (torch.sigmoid(layer(query)) + 1).clamp(min=MIN_ALPHA)


def clip_norm(vectors: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Rows longer than ``max_norm`` scaled down to it (the code's ``nn.Embedding(max_norm=…)``)."""
    norms = vectors.norm(dim=-1, keepdim=True)
    return vectors * (max_norm / norms.clamp(min=max_norm))


def jaccard_overlap(graph: SessionGraph) -> torch.Tensor:
    """``[B, B]`` Jaccard similarity of the sessions' distinct-item sets (1 on the diagonal).

    Counted from the pairs of packed nodes that hold the same item (no ``[B, num_items]`` matrix).
    """
    batch = graph.batch_size
    order = torch.argsort(graph.node_items, stable=True)
    _, group_sizes = torch.unique_consecutive(graph.node_items.index_select(0, order), return_counts=True)
    group_starts = torch.cumsum(group_sizes, 0) - group_sizes
    pairs_per_group = group_sizes * group_sizes
    group = torch.repeat_interleave(torch.arange(len(group_sizes), device=order.device), pairs_per_group)
    within = torch.arange(int(pairs_per_group.sum()), device=order.device) - (
        torch.cumsum(pairs_per_group, 0) - pairs_per_group
    ).index_select(0, group)
    size = group_sizes.index_select(0, group)
    start = group_starts.index_select(0, group)
    sessions = graph.node_session.index_select(0, order)
    left = sessions.index_select(0, start + within // size)
    right = sessions.index_select(0, start + within % size)
    dtype = torch.get_default_dtype()
    shared = torch.zeros(batch, batch, dtype=dtype, device=order.device)
    shared.index_put_((left, right), torch.ones_like(left, dtype=dtype), accumulate=True)
    sizes = shared.diagonal()
    return shared / (sizes.unsqueeze(0) + sizes.unsqueeze(1) - shared)


class MSGATConfig(BackboneConfig):
    steps: int = Field(1, ge=1, description="GNN propagation steps (code: --step 1)")
    heads: int = Field(5, ge=1, description="self-attention heads over the 2d-wide states (code: 5)")
    num_neighbors: int = Field(3, ge=1, description="INC neighbours (code: 3 Diginetica, 7 Tmall, 4 Nowplaying)")
    scale: float = Field(20.0, gt=0.0, description="scores are scale · sessionᵀ v̂ (code: w = 20)")
    max_norm: float = Field(1.5, gt=0.0, description="item and position vectors are clipped to this norm")
    max_positions: int = Field(300, ge=2, description="rows of the position table (code: 300)")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="query, feed-forward and decoder dropout")
    neighbor_dropout: float = Field(0.4, ge=0.0, lt=1.0, description="dropout on the INC neighbour vector")
    train_pool: Literal["batch", "self"] = Field(
        "batch",
        description="the sessions the inter-session channel relates in training: the batch (code) or "
        "each session alone, as in evaluation",
    )

    search_space: ClassVar[SearchSpace] = {
        "num_neighbors": IntRange(low=2, high=8),
        "scale": FloatRange(low=8.0, high=32.0, log=True),
        "dropout": FloatRange(low=0.0, high=0.5),
        "neighbor_dropout": FloatRange(low=0.0, high=0.6),
    }


@register_backbone("msgat")
class MSGAT(Backbone):
    """``local`` = last click's item vector, ``global`` = s (intra-session), ``session`` = s + n."""

    Config: ClassVar[type[BackboneConfig]] = MSGATConfig
    vector_names: ClassVar[tuple[str, ...]] = ("local", "global")
    default_train: ClassVar[dict] = dict(MSGAT_TRAIN)

    def __init__(self, num_items: int, config: MSGATConfig):
        super().__init__(num_items, config)
        self.config: MSGATConfig
        d = config.embedding_dim
        wide = 2 * d
        if wide % config.heads:
            raise ValueError(f"2 × embedding_dim = {wide} is not divisible by heads = {config.heads}")
        self.id_table = nn.Parameter(torch.empty(num_items, d))
        self.position = nn.Embedding(config.max_positions, d)
        self.input_norm = nn.LayerNorm(wide, eps=1e-12)
        self.gnn = GatedGraphNetwork(wide, config.steps)
        # multi-head entmax self-attention
        self.attention_query = nn.Linear(wide, wide)
        self.head_alpha = nn.Linear(wide // config.heads, 1)
        self.feed_forward_in = nn.Linear(wide, wide)
        self.feed_forward_out = nn.Linear(wide, wide)
        self.attention_norm = nn.LayerNorm(wide)
        # sparse global attention
        self.global_key = nn.Linear(wide, wide, bias=False)  # W1 (on the self-attention outputs)
        self.global_query = nn.Linear(wide, wide)  # W2 and b (on the target representation)
        self.global_score = nn.Linear(wide, 1, bias=False)  # w0
        self.global_alpha = nn.Linear(wide, 1)
        self.value_last = nn.Linear(wide, wide)  # the code's linear_one
        self.value_click = nn.Linear(wide, wide)  # linear_two
        self.decoder = nn.Linear(2 * wide, d)  # W_f
        self.dropout = nn.Dropout(config.dropout)
        self.neighbor_dropout = nn.Dropout(config.neighbor_dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The code: every parameter (layer norms included) ~ U(-1/√d, 1/√d), d = embedding_dim.
        uniform_init_(self, self.dim)

    # ---------------------------------------------------------------- scoring
    def item_table(self) -> torch.Tensor:
        return F.normalize(super().item_table(), dim=1)

    def score(self, output: BackboneOutput) -> torch.Tensor:
        # The scale multiplies the session, not the scores: the same products as score_loss's
        # fused path, so both give the same gradients to rounding (scores reach ±60 here).
        return F.linear(self.config.scale * output.session, self.item_table())

    def score_loss(self, output: BackboneOutput, targets: torch.Tensor) -> torch.Tensor:
        return linear_cross_entropy(self.config.scale * output.session, self.item_table(), targets)

    # ---------------------------------------------------------------- intra-session channel
    def node_inputs(self, graph: SessionGraph) -> tuple[torch.Tensor, torch.Tensor]:
        """``(items, x)``: clipped item vectors ``[N, d]`` and the GNN inputs ``LN([e ; p])`` ``[N, 2d]``."""
        items = clip_norm(self.embed_items(graph.node_items), self.config.max_norm)
        slots = (graph.node_slot + 1).clamp(max=self.config.max_positions - 1)
        positions = clip_norm(self.position(slots), self.config.max_norm)
        return items, self.input_norm(torch.cat([items, positions], dim=1))

    def self_attention(self, clicks: torch.Tensor, packing: PackedTokens) -> tuple[torch.Tensor, torch.Tensor]:
        """Entmax self-attention over each session's clicks plus a zero target token.

        ``clicks`` ``[T, 2d]`` packed; returns ``(outputs at the clicks [T, 2d], target [B, 2d])``.
        Each session's tokens are its clicks then the target, packed ``[T + B]``; sessions are
        padded per length group (``LengthGroups``) and padded keys are masked.
        """
        batch, wide = packing.batch, clicks.shape[1]
        heads = self.config.heads
        size = wide // heads
        tokens = packing.lengths + 1
        starts = torch.cumsum(tokens, 0) - tokens
        at_click = torch.arange(packing.num_tokens, device=clicks.device) + packing.rows
        at_target = starts + packing.lengths
        values = clicks.new_zeros(packing.num_tokens + batch, wide).index_copy(0, at_click, clicks)
        queries = self.dropout(torch.relu(self.attention_query(values)))

        width = int(tokens.max())
        token_mask = torch.arange(width, device=clicks.device).unsqueeze(0) < tokens.unsqueeze(1)
        groups = LengthGroups(PackedTokens(token_mask))
        alpha = sparsity_alpha(self.head_alpha, queries.index_select(0, at_target).view(batch, heads, size))
        owner = torch.repeat_interleave(torch.arange(batch, device=clicks.device), tokens)
        place = torch.arange(len(owner), device=clicks.device) - starts.index_select(0, owner)
        blocks = []
        for query, value, row, slot in zip(
            groups.pad(queries), groups.pad(values), groups.pad(owner), groups.pad(place), strict=True
        ):
            rows, longest = row.shape
            # Padding slots repeat the row's last token; a slot is real where its place is its index.
            real = slot == torch.arange(longest, device=slot.device)
            q = query.view(rows, longest, heads, size).transpose(1, 2)
            v = value.view(rows, longest, heads, size).transpose(1, 2)
            logits = (q @ v.transpose(2, 3)) / math.sqrt(size)
            logits = logits.masked_fill(~real.view(rows, 1, 1, longest), float("-inf"))
            weights = entmax(logits, alpha[row[:, 0]].unsqueeze(-1))
            blocks.append((weights @ v).transpose(1, 2).reshape(rows, longest, wide))
        attended = groups.pack(blocks)
        outputs = self.attention_norm(
            self.dropout(self.feed_forward_out(torch.relu(self.feed_forward_in(attended)))) + attended
        )
        return outputs.index_select(0, at_click), outputs.index_select(0, at_target)

    def intra_session(
        self, graph: SessionGraph, packing: PackedTokens
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(s [B, d], clipped node item vectors [N, d], target representation [B, 2d])``."""
        items, inputs = self.node_inputs(graph)
        states = self.gnn(graph, inputs)
        clicks = states.index_select(0, packing.pack(graph.flat_alias))  # [T, 2d]
        keys, target = self.self_attention(clicks, packing)
        rows = packing.rows
        last = clicks.index_select(0, packing.last)
        values = torch.sigmoid(self.value_last(last).index_select(0, rows) + self.value_click(clicks))
        logits = self.global_score(
            torch.relu(self.global_key(keys) + self.global_query(target).index_select(0, rows))
        ).squeeze(1)
        mask = graph.position_mask
        logits = packing.unpack(logits).masked_fill(~mask, float("-inf"))
        beta = entmax(logits, sparsity_alpha(self.global_alpha, target))
        readout = packing.sum_per_row(packing.pack(beta).unsqueeze(1) * values)
        intra = self.dropout(F.selu(self.decoder(torch.cat([readout, target], dim=1))))
        return F.normalize(intra, dim=1), items, target

    # ---------------------------------------------------------------- inter-session channel
    def inter_session(
        self, intra: torch.Tensor, item_sums: torch.Tensor, graph: SessionGraph, pool: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(r, n)``: relation vector and INC neighbour vector ``[B, d]`` over the ``pool``.

        ``pool`` is ``"batch"`` (the sessions of the batch relate to each other, as in training) or
        ``"self"`` (each session is its own pool: ``r = normalise(SELU(R))``, ``n = s + r``).
        """
        if pool == "self":
            relation = F.normalize(F.selu(item_sums), dim=1)
            return relation, self.neighbor_dropout(intra + relation)
        if pool != "batch":
            raise ValueError(f"unknown pool {pool!r}")
        overlap = jaccard_overlap(graph)
        relation = (overlap / overlap.sum(dim=1, keepdim=True)) @ item_sums
        relation = F.normalize(F.selu(relation), dim=1)
        mixed = intra + relation
        length = torch.sqrt((mixed * mixed + 1e-6).sum(dim=1, keepdim=True))  # the code's ε per entry
        similarity = torch.softmax((mixed @ mixed.t()) / (length * length.t()), dim=1)
        top, index = torch.topk(similarity, k=min(self.config.num_neighbors, intra.shape[0]), dim=1)
        weights = torch.softmax(top, dim=1)
        neighbors = torch.einsum("bk,bkd->bd", weights, mixed[index])
        return relation, self.neighbor_dropout(neighbors)

    def encode(self, batch: SessionBatch) -> BackboneOutput:
        graph = session_graph(batch)
        packing = PackedTokens(graph.position_mask)
        intra, items, _ = self.intra_session(graph, packing)
        # The relation channel reads the item vectors without gradient, as in the code (it copies
        # them through numpy).
        item_sums = graph.sum_per_session(items.detach())
        pool = self.config.train_pool if self.training else "self"
        _, neighbors = self.inter_session(intra, item_sums, graph, pool)
        local = items.index_select(0, graph.last_node)
        return BackboneOutput(session=intra + neighbors, vectors={"local": local, "global": intra})
