"""Session graphs for the GNN backbones, built for a whole padded batch at once.

The session graph of SR-GNN (Wu et al., AAAI 2019): the nodes are the distinct items of a session and
there is a directed edge ``u -> v`` whenever ``v`` is clicked right after ``u``. An edge that occurs
several times is stored once (as in the authors' ``utils.py``: ``u_A[u][v] = 1``). The two message
matrices are row-normalised by distinct-edge degrees::

    A_out[i, j] = [i -> j] / out_degree(i)      (node i reads its successors)
    A_in[i, j]  = [j -> i] / in_degree(i)       (node i reads its predecessors)

Rows of nodes without such edges are zero.

Representation (chosen by measurement, see ``docs/results/srgnn-speed.md``): the graphs of a batch
are *packed* -- all real nodes of all sessions in one flat list ``[N]`` and the distinct edges as
``[E]`` index pairs -- because one long session would otherwise pad every session of the batch to
its node count (on Beauty, ``U`` ≈ 170 while the mean is ≈ 8). Dense ``[B, U, U]`` views are
available for models whose layers are easier to write densely (GCE-GNN's edge-type attention).

Construction is vectorised (no per-session loop): distinct items per row come from a sort; the
position -> node map ("alias") from scattering the running count of first occurrences back through
the sort permutation. Within a session nodes are ordered by item index (the order of ``np.unique``
in the reference code).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from intentrec.data.batch import SessionBatch

# Edge types of GCE-GNN's session graph (Wang et al., SIGIR 2020), as integer codes in ``edge_types``.
EDGE_NONE, EDGE_SELF, EDGE_OUT, EDGE_IN, EDGE_IN_OUT = 0, 1, 2, 3, 4


@dataclass
class SessionGraph:
    """Packed session graphs of a batch of ``B`` sessions with ``N`` nodes and ``E`` distinct edges."""

    node_items: torch.Tensor  # long [N] item index of each node
    node_session: torch.Tensor  # long [N] session (batch row) of each node, non-decreasing
    node_slot: torch.Tensor  # long [N] rank of the node within its session (0 .. U_b - 1)
    flat_alias: torch.Tensor  # long [B, L] packed node of each click; 0 on padding (mask it)
    position_mask: torch.Tensor  # bool [B, L] True on real clicks
    edge_source: torch.Tensor  # long [E] packed node ids, distinct (source, target) pairs
    edge_target: torch.Tensor  # long [E]
    lengths: torch.Tensor  # long [B] clicks per session
    max_nodes: int  # U: largest number of nodes of one session (≥ 1)

    # ---- packed quantities -------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return int(self.flat_alias.shape[0])

    @property
    def total_nodes(self) -> int:
        return int(self.node_items.shape[0])

    @cached_property
    def in_weight(self) -> torch.Tensor:
        """Per edge ``1 / in_degree(target)``, float [E] (the nonzeros of ``A_in``)."""
        degree = torch.bincount(self.edge_target, minlength=self.total_nodes)
        return 1.0 / degree[self.edge_target].to(torch.get_default_dtype())

    @cached_property
    def out_weight(self) -> torch.Tensor:
        """Per edge ``1 / out_degree(source)``, float [E] (the nonzeros of ``A_out``)."""
        degree = torch.bincount(self.edge_source, minlength=self.total_nodes)
        return 1.0 / degree[self.edge_source].to(torch.get_default_dtype())

    @cached_property
    def node_counts(self) -> torch.Tensor:
        """How many clicks fall on each node, float [N]."""
        clicks = self.flat_alias[self.position_mask]
        return torch.bincount(clicks, minlength=self.total_nodes).to(torch.get_default_dtype())

    @cached_property
    def last_node(self) -> torch.Tensor:
        """Packed node of the last click of each session, long [B]."""
        last = (self.lengths - 1).clamp(min=0).unsqueeze(1)
        return self.flat_alias.gather(1, last).squeeze(1)

    def propagate_in(self, messages: torch.Tensor) -> torch.Tensor:
        """``A_in @ messages`` for packed ``[N, d]`` messages: mean over each node's predecessors."""
        weighted = messages.index_select(0, self.edge_source) * self.in_weight.unsqueeze(1)
        return messages.new_zeros(messages.shape).index_add_(0, self.edge_target, weighted)

    def propagate_out(self, messages: torch.Tensor) -> torch.Tensor:
        """``A_out @ messages`` for packed ``[N, d]`` messages: mean over each node's successors."""
        weighted = messages.index_select(0, self.edge_target) * self.out_weight.unsqueeze(1)
        return messages.new_zeros(messages.shape).index_add_(0, self.edge_source, weighted)

    def sum_per_session(self, values: torch.Tensor) -> torch.Tensor:
        """Sum packed ``[N, d]`` values over the nodes of each session -> ``[B, d]``."""
        out = values.new_zeros(self.batch_size, values.shape[1])
        return out.index_add_(0, self.node_session, values)

    def gather_positions(self, node_states: torch.Tensor) -> torch.Tensor:
        """Packed node states ``[N, d]`` -> per-click states ``[B, L, d]`` (padding: node 0's state)."""
        return node_states[self.flat_alias]

    def relation_pairs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """GCE-GNN's typed neighbourhoods on packed nodes: ``(node, neighbour, relation)``, each [P].

        Every node is paired with itself (``EDGE_SELF``) and with each distinct neighbour ``j``:
        ``EDGE_OUT`` if only ``node -> j``, ``EDGE_IN`` if only ``j -> node``, ``EDGE_IN_OUT`` if
        both. Self-loops from repeated clicks add nothing beyond ``EDGE_SELF``. The packed
        counterpart of :meth:`edge_types`.
        """
        total = max(self.total_nodes, 1)
        not_loop = self.edge_source != self.edge_target
        source, target = self.edge_source[not_loop], self.edge_target[not_loop]
        rows = torch.cat([source, target])
        cols = torch.cat([target, source])
        relation = torch.cat([torch.full_like(source, EDGE_OUT), torch.full_like(target, EDGE_IN)])
        keys, inverse, counts = torch.unique(rows * total + cols, return_inverse=True, return_counts=True)
        # A pair listed twice was seen in both directions.
        kind = torch.zeros_like(keys).scatter_(0, inverse, relation)
        kind = torch.where(counts > 1, torch.full_like(kind, EDGE_IN_OUT), kind)
        nodes = torch.arange(self.total_nodes, device=keys.device)
        return (
            torch.cat([nodes, keys // total]),
            torch.cat([nodes, keys % total]),
            torch.cat([torch.full_like(nodes, EDGE_SELF), kind]),
        )

    # ---- dense views [B, U, ...] -------------------------------------------------------------
    @cached_property
    def node_mask(self) -> torch.Tensor:
        """bool [B, U], True on real nodes."""
        counts = torch.bincount(self.node_session, minlength=self.batch_size)
        slots = torch.arange(self.max_nodes, device=counts.device)
        return slots.unsqueeze(0) < counts.unsqueeze(1)

    @cached_property
    def nodes(self) -> torch.Tensor:
        """long [B, U] item index of each node (ascending within a session), 0 on padding nodes."""
        return self.to_dense(self.node_items)

    @cached_property
    def alias(self) -> torch.Tensor:
        """long [B, L] node slot (0 .. U-1) of each click within its own session; 0 on padding."""
        return torch.where(self.position_mask, self.node_slot[self.flat_alias], 0)

    def to_dense(self, values: torch.Tensor) -> torch.Tensor:
        """Packed ``[N, ...]`` -> ``[B, U, ...]``, zeros on padding nodes."""
        out = values.new_zeros((self.batch_size, self.max_nodes, *values.shape[1:]))
        return out.index_put((self.node_session, self.node_slot), values)

    @cached_property
    def adjacency(self) -> torch.Tensor:
        """float [B, U, U]: 1.0 where the distinct edge ``i -> j`` exists."""
        dense = torch.zeros(self.batch_size, self.max_nodes, self.max_nodes, device=self.node_items.device)
        session = self.node_session[self.edge_source]
        index = (session, self.node_slot[self.edge_source], self.node_slot[self.edge_target])
        return dense.index_put(index, torch.ones_like(self.edge_source, dtype=dense.dtype))

    @cached_property
    def a_out(self) -> torch.Tensor:
        """``[B, U, U]``: row i holds i's successors, divided by i's out-degree."""
        return self.adjacency / self.adjacency.sum(dim=2, keepdim=True).clamp(min=1.0)

    @cached_property
    def a_in(self) -> torch.Tensor:
        """``[B, U, U]``: row i holds i's predecessors, divided by i's in-degree."""
        incoming = self.adjacency.transpose(1, 2)
        return (incoming / incoming.sum(dim=2, keepdim=True).clamp(min=1.0)).contiguous()

    def edge_types(self) -> torch.Tensor:
        """GCE-GNN relation of every node pair, long [B, U, U].

        ``EDGE_SELF`` on the diagonal of real nodes; for ``i != j``: ``EDGE_OUT`` if only ``i -> j``,
        ``EDGE_IN`` if only ``j -> i``, ``EDGE_IN_OUT`` if both, ``EDGE_NONE`` otherwise. A repeated
        click (``[a, a]``) adds nothing beyond the self relation.
        """
        out_edge = self.adjacency > 0
        in_edge = out_edge.transpose(1, 2)
        types = torch.zeros(out_edge.shape, dtype=torch.long, device=out_edge.device)
        types = types.masked_fill(out_edge, EDGE_OUT)
        types = types.masked_fill(in_edge, EDGE_IN)
        types = types.masked_fill(out_edge & in_edge, EDGE_IN_OUT)
        eye = torch.eye(self.max_nodes, dtype=torch.bool, device=types.device).unsqueeze(0)
        types = types.masked_fill(eye, EDGE_NONE)
        return types.masked_fill(eye & self.node_mask.unsqueeze(2), EDGE_SELF)


def segment_softmax(
    scores: torch.Tensor,
    segment: torch.Tensor,
    num_segments: int,
    multiplicity: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax of ``scores`` ``[P, ...]`` within the groups ``segment`` ``[P]`` (values < num_segments).

    With ``multiplicity`` ``[P]`` an entry counts that many times (a node clicked twice weighs like
    two positions), i.e. ``m_p exp(s_p) / Σ_q m_q exp(s_q)``.
    """
    shape = (num_segments, *scores.shape[1:])
    index = segment.view(-1, *([1] * (scores.dim() - 1))).expand_as(scores)
    # The shift only guards exp() against overflow; softmax does not depend on it, so no gradient.
    peak = scores.new_full(shape, float("-inf")).scatter_reduce(
        0, index, scores.detach(), reduce="amax", include_self=True
    )
    weights = (scores - peak.index_select(0, segment)).exp()
    if multiplicity is not None:
        weights = weights * multiplicity.view(-1, *([1] * (scores.dim() - 1)))
    total = scores.new_zeros(shape).index_add_(0, segment, weights)
    return weights / total.index_select(0, segment)


def build_session_graph(items: torch.Tensor, lengths: torch.Tensor) -> SessionGraph:
    """Session graphs of a right-padded batch ``items`` ``[B, L]`` (0 = padding), no Python loops."""
    batch, width = items.shape
    device = items.device
    position_mask = items > 0

    # Distinct items: sort each row and mark the first occurrence of every real item. Padding (0)
    # sorts first and is never marked; repeats follow their first occurrence in the sorted row.
    sorted_items, order = items.sort(dim=1)
    first = torch.ones_like(position_mask)
    first[:, 1:] = sorted_items[:, 1:] != sorted_items[:, :-1]
    first &= sorted_items > 0
    packed_id = first.reshape(-1).cumsum(0).view(batch, width) - 1
    packed_id = torch.where(sorted_items > 0, packed_id, 0)

    node_items = sorted_items[first]
    nodes_per_session = first.sum(dim=1)
    node_session = torch.repeat_interleave(torch.arange(batch, device=device), nodes_per_session)
    session_start = torch.cumsum(nodes_per_session, 0) - nodes_per_session
    node_slot = torch.arange(node_items.shape[0], device=device) - session_start[node_session]

    # Alias: every click's packed node id, put back in click order through the sort permutation.
    flat_alias = torch.empty_like(packed_id).scatter_(1, order, packed_id)

    # Distinct directed edges between consecutive clicks.
    is_edge = position_mask[:, 1:]
    source = flat_alias[:, :-1][is_edge]
    target = flat_alias[:, 1:][is_edge]
    total = max(int(node_items.shape[0]), 1)
    keys = torch.unique(source * total + target)
    return SessionGraph(
        node_items=node_items,
        node_session=node_session,
        node_slot=node_slot,
        flat_alias=flat_alias,
        position_mask=position_mask,
        edge_source=keys // total,
        edge_target=keys % total,
        lengths=lengths,
        max_nodes=max(int(nodes_per_session.max()) if batch else 0, 1),
    )


def reversed_positions(lengths: torch.Tensor, width: int, max_positions: int) -> torch.Tensor:
    """Distance of every click from the last one (0 = last click), long ``[B, width]``.

    Clamped to ``max_positions - 1`` (older clicks share the last position embedding) and to 0 on
    padding, so the result can index an embedding table of ``max_positions`` rows.
    """
    steps = torch.arange(width, device=lengths.device).unsqueeze(0)
    return (lengths.unsqueeze(1) - 1 - steps).clamp(min=0, max=max_positions - 1)


def session_graph(batch: SessionBatch) -> SessionGraph:
    return build_session_graph(batch.items, batch.lengths)
