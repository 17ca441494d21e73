"""TAGNN: target attentive graph neural network (Yu et al., SIGIR 2020).

SR-GNN's gated GNN and readout, plus a target-aware session vector for every candidate item ``v``::

    β_{v,j} = softmax_j( vᵀ W_t h_j )        over the session's clicks j
    s_t(v)  = Σ_j β_{v,j} h_j
    score(v) = (s_h + s_t(v))ᵀ v,   s_h = W3[s_l; s_g]

so scores depend on the candidate and ``score()`` is overridden. As in the authors' code the readout
weights α are softmax-normalised (SR-GNN leaves them raw) and both softmaxes run over clicks; we
compute them over the session's distinct nodes with each node weighted by its click count, which is
the same softmax without a ``[B, L]`` axis. The target term is computed on packed nodes in item
chunks, so memory is ``O(N · chunk)`` for N nodes in the batch, never ``[B, num_items, d]``.

``local`` / ``global`` are s_l / s_g; ``session`` is s_h (the candidate-independent part);
``extras`` carry the packed node states the target term needs.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.autograd.function import once_differentiable

from intentrec.data.batch import SessionBatch
from intentrec.models.backbones.srgnn import SRGNN, SRGNN_TRAIN, SRGNNConfig
from intentrec.models.base import BackboneConfig, BackboneOutput
from intentrec.models.graph import SessionGraph, segment_softmax, session_graph
from intentrec.models.registry import register_backbone
from intentrec.search_space import SearchSpace


class TAGNNConfig(SRGNNConfig):
    score_chunk: int = Field(1 << 22, ge=1, description="max (packed nodes × items) per chunk of the target term")

    search_space: ClassVar[SearchSpace] = dict(SRGNNConfig.search_space)


@register_backbone("tagnn")
class TAGNN(SRGNN):
    """``local`` = s_l, ``global`` = s_g (softmax attention), ``session`` = W3[s_l; s_g]."""

    Config: ClassVar[type[BackboneConfig]] = TAGNNConfig
    vector_names: ClassVar[tuple[str, ...]] = ("local", "global")
    # The authors' main.py uses SR-GNN's trainer values unchanged.
    default_train: ClassVar[dict] = dict(SRGNN_TRAIN)

    def __init__(self, num_items: int, config: TAGNNConfig):
        super().__init__(num_items, config)
        self.target_projection = nn.Linear(config.embedding_dim, config.embedding_dim, bias=False)
        self.reset_parameters()  # again, now that W_t exists

    def attention_readout(self, graph: SessionGraph, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        local = states.index_select(0, graph.last_node)
        scores = self.attention(states, local, graph.node_session)
        alpha = segment_softmax(scores, graph.node_session, graph.batch_size, graph.node_counts)
        return local, graph.sum_per_session(alpha.unsqueeze(1) * states)

    def encode(self, batch: SessionBatch) -> BackboneOutput:
        graph = session_graph(batch)
        states = self.node_states(graph)
        local, global_ = self.attention_readout(graph, states)
        return BackboneOutput(
            session=self.session_vector(local, global_),
            vectors={"local": local, "global": global_},
            extras={
                "node_states": states,
                "node_session": graph.node_session,
                "node_counts": graph.node_counts,
            },
        )

    def target_scores(self, output: BackboneOutput, table: torch.Tensor | None = None) -> torch.Tensor:
        """``s_t(v)ᵀ v`` for every session and item ``v`` of ``table`` (default: the item table), ``[B, n]``."""
        states = output.extras["node_states"]
        return target_attention(
            self.target_projection(states),  # W_t h_j, [N, d]
            states,
            self.item_table() if table is None else table,
            output.extras["node_session"],
            output.extras["node_counts"],
            output.session.shape[0],
            max(1, self.config.score_chunk // max(states.shape[0], 1)),
        )

    def score_with(self, output: BackboneOutput, table: torch.Tensor) -> torch.Tensor:
        return F.linear(output.session, table) + self.target_scores(output, table)


class _TargetAttention(torch.autograd.Function):
    """``out[b, v] = Σ_j β_{v,j} (h_j · v)`` with ``β_{v,j} = softmax_j(k_j · v)`` over the nodes of
    session ``b`` (node ``j`` weighted by its click count), computed in item chunks.

    The softmax is normalised after the per-session sums (``out = Σ e·(h·v) / Σ e`` with
    ``e = count · exp(k·v)``), in ``[B, chunk]`` space rather than per node. Its usual shift by the
    per-session maximum is skipped when ``max‖k‖ · max‖v‖`` bounds every logit well inside the
    dtype's exp range (the common case; the shifted path remains for the rest): the softmax is the
    same function either way.

    Hand-written backward: with ``g = dout[owner] / norm[owner]``, ``d(h_j·v) = e g`` and
    ``d(k_j·v) = e g (h_j·v − out)``. It keeps two ``[N, chunk]`` matrices per chunk (e and h·v),
    which its backward overwrites in place, where autograd would keep about a dozen and walk them
    op by op. Same values and gradients as the plain autograd version (checked by the tests).
    """

    @staticmethod
    def forward(ctx, keys, states, items, owner, counts, batch_size: int, chunk: int):
        out = keys.new_empty(batch_size, items.shape[0])
        weights = counts.unsqueeze(1).to(keys.dtype)
        bound = keys.norm(dim=1).max() * items.norm(dim=1).max() if keys.numel() else keys.new_zeros(())
        # Unshifted, every e = count·exp(logit) and every per-session sum stays far from over- and underflow.
        shift = bool(bound > 0.75 * math.log(torch.finfo(keys.dtype).max))
        ctx.blocks = []
        product = None
        for start in range(0, items.shape[0], chunk):
            block = items[start : start + chunk]
            logits, values = keys @ block.t(), states @ block.t()  # [N, c]
            if shift:
                index = owner.unsqueeze(1).expand_as(logits)
                top = logits.new_full((batch_size, block.shape[0]), float("-inf"))
                top = top.scatter_reduce(0, index, logits, reduce="amax", include_self=True)
                logits.sub_(top.index_select(0, owner))
            weighted = logits.exp_().mul_(weights)  # e, [N, c]
            norm = weighted.new_zeros(batch_size, block.shape[0]).index_add_(0, owner, weighted)
            if product is None or product.shape != weighted.shape:
                product = torch.empty_like(weighted)
            numerator = norm.new_zeros(norm.shape).index_add_(0, owner, torch.mul(weighted, values, out=product))
            out[:, start : start + block.shape[0]] = numerator.div_(norm)
            ctx.blocks.append((weighted, values, norm))
        ctx.save_for_backward(keys, states, items, owner, out)
        ctx.chunk = chunk
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        keys, states, items, owner, out = ctx.saved_tensors
        grad_keys, grad_states = torch.zeros_like(keys), torch.zeros_like(states)
        grad_items = torch.empty_like(items)
        if ctx.blocks is None:
            raise RuntimeError("TAGNN's target attention supports one backward pass per forward")
        blocks, ctx.blocks = ctx.blocks, None
        for number, (weighted, values, norm) in enumerate(blocks):
            start = number * ctx.chunk
            cols = slice(start, start + weighted.shape[1])
            block = items[cols]
            scaled = grad_out[:, cols] / norm
            grad_values = weighted.mul_(scaled.index_select(0, owner))  # d(h_j·v) = β g
            grad_logits = values.sub_(out[:, cols].index_select(0, owner)).mul_(grad_values)
            grad_keys.addmm_(grad_logits, block)
            grad_states.addmm_(grad_values, block)
            grad_items[cols] = grad_logits.t() @ keys + grad_values.t() @ states
        return grad_keys, grad_states, grad_items, None, None, None, None


def target_attention(
    keys: torch.Tensor,
    states: torch.Tensor,
    items: torch.Tensor,
    owner: torch.Tensor,
    counts: torch.Tensor,
    batch_size: int,
    chunk: int,
) -> torch.Tensor:
    """TAGNN's target term for packed nodes (``keys`` = W_t h_j and ``states`` = h_j, ``[N, d]``;
    ``owner`` ``[N]`` their sessions, ``counts`` ``[N]`` their click counts) against every row of
    ``items`` ``[n, d]`` -> ``[batch_size, n]``, ``chunk`` items at a time."""
    return _TargetAttention.apply(keys, states, items, owner, counts, batch_size, chunk)
