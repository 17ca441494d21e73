"""Session-graph construction (intentrec.models.graph) against hand-computed graphs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from intentrec.data.batch import SessionBatch
from intentrec.models.graph import (
    EDGE_IN,
    EDGE_IN_OUT,
    EDGE_NONE,
    EDGE_OUT,
    EDGE_SELF,
    build_session_graph,
    reversed_positions,
    segment_softmax,
    session_graph,
)


def graph_of(sessions, pad: int = 0):
    batch = SessionBatch.from_lists(sessions)
    items = F.pad(batch.items, (0, pad))
    return build_session_graph(items, batch.lengths)


def test_repeated_item_graph_matches_hand_computation():
    # 1 -> 2 -> 3 -> 2 -> 4: edges 1→2, 2→3, 3→2, 2→4
    g = graph_of([[1, 2, 3, 2, 4]])
    assert g.nodes.tolist() == [[1, 2, 3, 4]]
    assert g.alias.tolist() == [[0, 1, 2, 1, 3]]
    assert g.node_counts.tolist() == [1.0, 2.0, 1.0, 1.0]
    expected_out = [[0, 1, 0, 0], [0, 0, 0.5, 0.5], [0, 1, 0, 0], [0, 0, 0, 0]]
    expected_in = [[0, 0, 0, 0], [0.5, 0, 0.5, 0], [0, 1, 0, 0], [0, 1, 0, 0]]
    torch.testing.assert_close(g.a_out[0], torch.tensor(expected_out))
    torch.testing.assert_close(g.a_in[0], torch.tensor(expected_in))
    assert g.last_node.tolist() == [3]


def test_repeated_edge_is_counted_once():
    # 5→6 occurs twice: degrees count distinct edges (authors' u_A[u][v] = 1).
    g = graph_of([[5, 6, 5, 6]])
    torch.testing.assert_close(g.a_out[0], torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    torch.testing.assert_close(g.a_in[0], torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    assert g.edge_source.numel() == 2


def test_self_loop_and_length_one_sessions():
    g = graph_of([[7, 7], [9]])
    assert g.nodes.tolist() == [[7], [9]]
    assert g.node_mask.tolist() == [[True], [True]]
    torch.testing.assert_close(g.a_out, torch.tensor([[[1.0]], [[0.0]]]))
    torch.testing.assert_close(g.a_in, torch.tensor([[[1.0]], [[0.0]]]))
    assert g.alias.tolist() == [[0, 0], [0, 0]]
    assert g.position_mask.tolist() == [[True, True], [True, False]]
    assert g.last_node.tolist() == [0, 1]  # packed ids: session 0 has node 0, session 1 node 1


def test_nodes_are_sorted_by_item_and_padded_per_batch():
    g = graph_of([[9, 3], [4, 4, 4], [1, 2, 3, 1]])
    assert g.max_nodes == 3
    assert g.nodes.tolist() == [[3, 9, 0], [4, 0, 0], [1, 2, 3]]
    assert g.node_mask.tolist() == [[True, True, False], [True, False, False], [True] * 3]
    assert g.alias.tolist() == [[1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 2, 0]]
    assert g.node_session.tolist() == [0, 0, 1, 2, 2, 2]
    assert g.node_items.tolist() == [3, 9, 4, 1, 2, 3]
    # Padding nodes have no edges.
    assert g.adjacency[0, 2].sum() == 0 and g.adjacency[1, :, 1:].sum() == 0


def test_extra_padding_changes_nothing():
    sessions = [[1, 2, 3, 2, 4], [5, 6, 5, 6], [7, 7], [9]]
    narrow, wide = graph_of(sessions), graph_of(sessions, pad=6)
    for name in ("node_items", "node_session", "node_slot", "edge_source", "edge_target"):
        assert torch.equal(getattr(narrow, name), getattr(wide, name)), name
    assert torch.equal(narrow.a_in, wide.a_in) and torch.equal(narrow.a_out, wide.a_out)
    assert torch.equal(wide.flat_alias[:, :5], narrow.flat_alias)


def _loop_reference(session):
    """The definition, one session at a time (like the authors' get_slice)."""
    nodes = sorted(set(session))
    index = {item: i for i, item in enumerate(nodes)}
    n = len(nodes)
    adjacency = torch.zeros(n, n)
    for a, b in itertools.pairwise(session):
        adjacency[index[a], index[b]] = 1.0
    out_deg = adjacency.sum(1, keepdim=True).clamp(min=1)
    in_deg = adjacency.sum(0).clamp(min=1).unsqueeze(1)
    return nodes, adjacency / out_deg, adjacency.t() / in_deg, [index[i] for i in session]


def test_random_batches_match_a_per_session_loop():
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        size = int(torch.randint(1, 9, (1,), generator=generator))
        sessions = [
            torch.randint(1, 7, (int(torch.randint(1, 10, (1,), generator=generator)),),
                          generator=generator).tolist()
            for _ in range(size)
        ]  # fmt: skip
        g = graph_of(sessions, pad=2)
        for row, session in enumerate(sessions):
            nodes, a_out, a_in, alias = _loop_reference(session)
            n = len(nodes)
            assert g.nodes[row, :n].tolist() == nodes
            torch.testing.assert_close(g.a_out[row, :n, :n], a_out)
            torch.testing.assert_close(g.a_in[row, :n, :n], a_in)
            assert g.alias[row, : len(session)].tolist() == alias
        # Packed propagation is the dense matrix product.
        messages = torch.randn(g.total_nodes, 3, generator=generator)
        dense = g.to_dense(messages)
        torch.testing.assert_close(g.to_dense(g.propagate_in(messages)), g.a_in @ dense)
        torch.testing.assert_close(g.to_dense(g.propagate_out(messages)), g.a_out @ dense)


def test_edge_types_and_packed_relation_pairs():
    # 1→2, 2→1 (in-out pair), 1→3 (out for 1, in for 3); [4, 4] is only a self relation.
    g = graph_of([[1, 2, 1, 3], [4, 4]])
    types = g.edge_types()
    expected = [
        [EDGE_SELF, EDGE_IN_OUT, EDGE_OUT],
        [EDGE_IN_OUT, EDGE_SELF, EDGE_NONE],
        [EDGE_IN, EDGE_NONE, EDGE_SELF],
    ]
    assert types[0].tolist() == expected
    assert types[1].tolist() == [[EDGE_SELF, EDGE_NONE, EDGE_NONE]] + [[EDGE_NONE] * 3] * 2
    node, neighbor, relation = g.relation_pairs()
    packed = {(int(a), int(b)): int(r) for a, b, r in zip(node, neighbor, relation, strict=True)}
    first_node = [0, 3]  # packed id of each session's first node
    dense = {
        (first_node[s] + i, first_node[s] + j): int(types[s, i, j])
        for s in range(2)
        for i in range(3)
        for j in range(3)
        if types[s, i, j] != EDGE_NONE
    }
    assert packed == dense


def test_segment_softmax_by_hand():
    scores = torch.tensor([0.0, math.log(2.0), 0.0, 5.0])
    segment = torch.tensor([0, 0, 1, 2])
    torch.testing.assert_close(segment_softmax(scores, segment, 3), torch.tensor([1 / 3, 2 / 3, 1.0, 1.0]))
    weighted = segment_softmax(scores, segment, 3, multiplicity=torch.tensor([2.0, 1.0, 1.0, 3.0]))
    torch.testing.assert_close(weighted, torch.tensor([0.5, 0.5, 1.0, 1.0]))
    # Columns are independent softmaxes; huge scores do not overflow.
    wide = segment_softmax(torch.tensor([[1000.0, 0.0], [1000.0, 0.0]]), torch.tensor([0, 0]), 1)
    torch.testing.assert_close(wide, torch.full((2, 2), 0.5))


def test_reversed_positions():
    lengths = torch.tensor([3, 1])
    assert reversed_positions(lengths, 4, 200).tolist() == [[2, 1, 0, 0], [0, 0, 0, 0]]
    assert reversed_positions(lengths, 4, 2).tolist() == [[1, 1, 0, 0], [0, 0, 0, 0]]


def test_session_graph_of_a_batch_and_gather_positions():
    batch = SessionBatch.from_lists([[2, 1, 2], [3]])
    g = session_graph(batch)
    states = torch.tensor([[1.0], [2.0], [3.0]])  # packed nodes: item 1, item 2, item 3
    clicks = g.gather_positions(states)
    assert clicks[0, :, 0].tolist() == [2.0, 1.0, 2.0]
    assert clicks[1, 0, 0].item() == 3.0
    assert g.sum_per_session(states).tolist() == [[3.0], [3.0]]


@pytest.mark.parametrize("width", [1, 3])
def test_empty_rows_of_a_single_session_batch(width):
    g = graph_of([[4] * width])
    assert g.total_nodes == 1 and g.max_nodes == 1
    assert g.edge_source.numel() == (1 if width > 1 else 0)
