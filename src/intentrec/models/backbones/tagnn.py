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

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from intentrec.data.batch import SessionBatch
from intentrec.models.backbones.srgnn import SRGNN, SRGNN_TRAIN, SRGNNConfig
from intentrec.models.base import BackboneConfig, BackboneOutput
from intentrec.models.graph import SessionGraph, segment_softmax, session_graph
from intentrec.models.registry import register_backbone


class TAGNNConfig(SRGNNConfig):
    score_chunk: int = Field(
        1 << 22, ge=1, description="max (packed nodes × items) per chunk of the target term"
    )


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

    def attention_readout(
        self, graph: SessionGraph, states: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
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

    def target_scores(self, output: BackboneOutput) -> torch.Tensor:
        """``s_t(v)ᵀ v`` for every session and item, ``[B, num_items]``."""
        states = output.extras["node_states"]
        owner = output.extras["node_session"]
        counts = output.extras["node_counts"]
        batch_size = output.session.shape[0]
        keys = self.target_projection(states)  # W_t h_j, [N, d]
        items = self.item_embeddings()
        chunk = max(1, self.config.score_chunk // max(states.shape[0], 1))
        parts = []
        for start in range(0, items.shape[0], chunk):
            block = items[start : start + chunk]
            beta = segment_softmax(keys @ block.t(), owner, batch_size, counts)  # [N, chunk]
            values = beta * (states @ block.t())  # β_{v,j} h_jᵀ v
            parts.append(values.new_zeros(batch_size, block.shape[0]).index_add_(0, owner, values))
        return torch.cat(parts, dim=1)

    def score(self, output: BackboneOutput) -> torch.Tensor:
        return F.linear(output.session, self.item_embeddings()) + self.target_scores(output)
