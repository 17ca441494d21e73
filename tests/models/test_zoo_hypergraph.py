"""DHCN and SHARE against hand-built hypergraphs and per-session re-derivations of their equations.

The shared contract (shapes, gradients, padding, overfitting, determinism) is checked for every
backbone in test_backbone_contract.py; here each model's own maths is checked.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from intentrec.data.batch import SessionBatch
from intentrec.errors import IntentrecError
from intentrec.models.backbones.dhcn import build_item_hypergraph, contrastive_loss
from intentrec.models.backbones.share import build_session_hypergraph
from intentrec.models.graph import session_graph
from intentrec.models.registry import build_backbone
from tests.helpers.tiny_dataset import write_tiny_dataset

pytestmark = pytest.mark.usefixtures("single_thread")

NUM_ITEMS = 10
TRAIN = [[1, 2, 3], [2, 2, 4], [5], [3, 1, 6, 2]]
SESSIONS = [[1, 2, 3, 2, 4], [5, 5], [7], [3, 9, 3, 9, 3, 1], [6, 8, 6]]


def csr(sessions):
    values = np.array([i for s in sessions for i in s], dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sessions])]).astype(np.int64)
    return values, offsets


def dense_adjacency(hypergraph) -> torch.Tensor:
    """``D⁻¹ H B⁻¹ Hᵀ`` as a dense ``[n, n]`` matrix: the propagation of the identity table."""
    return hypergraph.propagate(torch.eye(hypergraph.num_items))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    sessions = {"train": TRAIN, "valid": [[1, 8, 2]], "test": [[9, 10, 3], [2, 9]]}
    return write_tiny_dataset(tmp_path_factory.mktemp("hypergraph"), sessions, num_items=NUM_ITEMS)


def dhcn(dataset, seed: int = 0, **config):
    torch.manual_seed(seed)
    model = build_backbone("dhcn", dataset.num_items, {"embedding_dim": 8, **config})
    model.prepare(dataset)
    return model


# ---------------------------------------------------------------- DHCN


def test_item_hypergraph_incidence_by_hand():
    # hyperedges {1,2,3}, {2,4} (the repeated 2 joins once), {5}; item 6 is in none
    hypergraph = build_item_hypergraph(*csr([[1, 2, 3], [2, 2, 4], [5]]), num_items=6)
    assert hypergraph.num_edges == 3
    pairs = sorted(zip(hypergraph.pair_edge.tolist(), (hypergraph.pair_column + 1).tolist(), strict=True))
    assert pairs == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 4), (2, 5)]
    third, sixth, half = 1 / 3, 1 / 6, 1 / 2
    expected = torch.tensor(
        [
            [third, third, third, 0, 0, 0],  # item 1: degree 1, edge of size 3
            [sixth, (third + half) / 2, sixth, half / 2, 0, 0],  # item 2: degree 2
            [third, third, third, 0, 0, 0],
            [0, half, 0, half, 0, 0],
            [0, 0, 0, 0, 1, 0],
            [0, 0, 0, 0, 0, 0],  # in no hyperedge: no message
        ]
    )
    torch.testing.assert_close(dense_adjacency(hypergraph), expected)


def test_prepare_reads_train_split_only(dataset):
    model = dhcn(dataset)
    assert model.hypergraph.num_edges == len(TRAIN)
    columns = set((model.hypergraph.pair_column + 1).tolist())
    assert columns == {1, 2, 3, 4, 5, 6}  # 8 (valid only), 9 and 10 (test only) are not in it
    torch.testing.assert_close(
        dense_adjacency(model.hypergraph), dense_adjacency(build_item_hypergraph(*csr(TRAIN), num_items=NUM_ITEMS))
    )
    # the code's hyperedges: every train example (prefix), still train only
    examples = dhcn(dataset, hyperedges="examples")
    assert examples.hypergraph.num_edges == len(dataset.examples("train"))
    assert set((examples.hypergraph.pair_column + 1).tolist()) <= {1, 2, 3, 4, 5, 6}


def test_encoding_before_prepare_says_what_to_do():
    model = build_backbone("dhcn", NUM_ITEMS, {"embedding_dim": 8})
    with pytest.raises(IntentrecError, match="prepare"):
        model(SessionBatch.from_lists([[1, 2]]))


def test_scores_follow_the_papers_equations(dataset):
    model = dhcn(dataset).eval()
    layers = model.config.layers
    adjacency = dense_adjacency(model.hypergraph)
    x = model.id_table
    table, power = x.clone(), x
    for _ in range(layers):
        power = adjacency @ power
        table = table + power
    table = table / (layers + 1)  # mean of layers 0..L
    sessions = []
    for session in SESSIONS:
        clicks = table[torch.tensor(session) - 1]
        mean = clicks.mean(0, keepdim=True)
        reversed_positions = torch.arange(len(session) - 1, -1, -1)
        hidden = torch.tanh(model.position_mix(torch.cat([model.position(reversed_positions), clicks], 1)))
        beta = model.readout_score(torch.sigmoid(model.gate_click(hidden) + model.gate_mean(mean)))
        sessions.append((beta * clicks).sum(0))
    expected = torch.stack(sessions) @ table.t()
    with torch.no_grad():
        torch.testing.assert_close(model(SessionBatch.from_lists(SESSIONS)), expected, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(model.item_table(), table)


def test_contrastive_term_sign_and_scale():
    torch.manual_seed(3)
    hyper, line = torch.randn(6, 5), torch.randn(6, 5)
    torch.manual_seed(11)
    value = contrastive_loss(hyper, line)
    torch.manual_seed(11)  # the same two draws: rows, then columns
    corrupted = hyper[torch.randperm(6)][:, torch.randperm(5)]
    positive, negative = (hyper * line).sum(1), (line * corrupted).sum(1)
    # the code's form, summed (not averaged) over the batch
    code = (-torch.log(1e-8 + torch.sigmoid(positive)) - torch.log(1e-8 + 1 - torch.sigmoid(negative))).sum()
    torch.testing.assert_close(value, code, rtol=1e-5, atol=1e-6)
    # agreeing channels cost less than opposed ones; the term grows with the batch (a sum)
    torch.manual_seed(0)
    agree = contrastive_loss(3 * hyper, hyper)
    torch.manual_seed(0)
    oppose = contrastive_loss(3 * hyper, -hyper)
    assert agree < oppose
    assert agree > 0
    torch.manual_seed(0)
    doubled = contrastive_loss(3 * hyper.repeat(2, 1), hyper.repeat(2, 1))
    assert doubled > 1.5 * agree


def test_training_loss_is_ce_plus_beta_ssl(dataset):
    model = dhcn(dataset, ssl_weight=0.3)
    batch = SessionBatch.from_lists(SESSIONS, targets=[2, 4, 1, 6, 3])
    model.eval()  # no dropout in DHCN: the eval loss is the CE part of the training loss
    cross_entropy = model.loss(batch)
    torch.testing.assert_close(cross_entropy, F.cross_entropy(model(batch), batch.targets))
    session, line = model.encode(batch).session, model.line_channel(batch)
    model.train()
    torch.manual_seed(5)
    loss = model.loss(batch)  # the SSL term's two permutations are its only random draws
    torch.manual_seed(5)
    ssl = contrastive_loss(session, line)
    torch.testing.assert_close(loss, cross_entropy + 0.3 * ssl)
    assert ssl > 0
    off = dhcn(dataset, ssl_weight=0.0).train()
    torch.testing.assert_close(off.loss(batch), off.eval().loss(batch))


def test_line_graph_channel_by_hand_and_its_batch_dependence(dataset):
    model = dhcn(dataset, layers=2)
    sessions = [[1, 2, 3], [2, 4], [7]]
    batch = SessionBatch.from_lists(sessions)
    sets = [set(s) for s in sessions]
    overlap = torch.tensor([[len(a & b) / len(a | b) for b in sets] for a in sets])  # 1 on the diagonal
    normalised = overlap / overlap.sum(1, keepdim=True)
    start = torch.stack([model.id_table[torch.tensor(s) - 1].mean(0) for s in sessions])
    expected = (start + normalised @ start + normalised @ normalised @ start) / 3
    line = model.line_channel(batch)
    torch.testing.assert_close(line, expected.detach())
    # the code's line channel reads the item table without gradient; line_gradient lets it through
    assert not line.requires_grad
    assert dhcn(dataset, layers=2, line_gradient=True).line_channel(batch).requires_grad
    # the line graph spans the batch (only the SSL term depends on batch-mates) ...
    alone = model.line_channel(SessionBatch.from_lists(sessions[:1]))
    assert not torch.allclose(alone[0], line[0])
    torch.testing.assert_close(model.line_channel(SessionBatch.from_lists(sessions[2:]))[0], line[2])  # no overlap
    # ... while the session vector that scores the items does not, in training mode too
    model.train()
    torch.testing.assert_close(
        model.encode(SessionBatch.from_lists(sessions[:1])).session[0], model.encode(batch).session[0]
    )


# ---------------------------------------------------------------- SHARE


def hyperedge_sets(sessions, window):
    """The item set of every hyperedge, per session, from the hypergraph built for the batch."""
    graph = session_graph(SessionBatch.from_lists(sessions))
    hypergraph = build_session_hypergraph(graph, window)
    members: dict[int, set[int]] = {}
    for edge, node in zip(hypergraph.pair_edge.tolist(), hypergraph.pair_node.tolist(), strict=True):
        members.setdefault(edge, set()).add(node)
    assert len(members) == hypergraph.num_edges
    per_session: dict[int, list[frozenset[int]]] = {}
    for nodes in members.values():
        owners = {int(graph.node_session[n]) for n in nodes}
        assert len(owners) == 1, "a hyperedge never spans two sessions"
        items = frozenset(int(graph.node_items[n]) for n in nodes)
        per_session.setdefault(owners.pop(), []).append(items)
    return [sorted(per_session[b], key=sorted) for b in range(len(sessions))]


def test_sliding_window_hyperedges_by_hand():
    session = [1, 2, 1, 3]
    one = [{1}, {2}, {1}, {3}]  # w = 0: every click
    two = [{1, 2}, {2, 1}, {1, 3}]  # w = 1: consecutive pairs, not merged when equal
    three = [{1, 2}, {2, 1, 3}]  # w = 2: [1, 2, 1] (the repeated 1 joins once) and [2, 1, 3]
    by_key = lambda edges: sorted((frozenset(e) for e in edges), key=sorted)  # noqa: E731
    assert hyperedge_sets([session, [5]], 0) == [by_key(one), by_key([{5}])]
    assert hyperedge_sets([session, [5]], 1) == [by_key(one + two), by_key([{5}])]
    assert hyperedge_sets([session, [5]], 2) == [by_key(one + two + three), by_key([{5}])]
    assert hyperedge_sets([session], 7) == [by_key(one + two + three + [{1, 2, 3}])]  # the whole session


def share_by_hand(model, session):
    """SHARE for one session, written densely from the code's layers (all queries, then the last)."""
    nodes = sorted(set(session))
    slot = {item: i for i, item in enumerate(nodes)}
    width = len(session)
    incidence = []  # [edges, nodes]
    for w in range(min(model.config.window, width - 1) + 1):
        for start in range(width - w):
            row = torch.zeros(len(nodes))
            row[[slot[i] for i in session[start : start + w + 1]]] = 1.0
            incidence.append(row)
    incidence = torch.stack(incidence) > 0
    embedded = model.id_table[torch.tensor(nodes) - 1]
    x = embedded
    d = model.dim
    for layer in model.layers:
        keys = layer.key(x)
        values = x if layer.value is None else layer.value(x)
        logits = (layer.context @ keys.t() / math.sqrt(d)).expand(len(incidence), -1)
        edges = torch.softmax(logits.masked_fill(~incidence, -1e9), 1) @ values
        logits = keys @ layer.edge_key(edges).t() / math.sqrt(d)
        x = torch.softmax(logits.masked_fill(~incidence.t(), -1e9), 1) @ edges + embedded
    clicks = x[[slot[i] for i in session]]  # [L, d]
    queries = model.query(model.query_norm(clicks))
    attended = torch.softmax(queries @ model.key(clicks).t() / math.sqrt(d), 1) @ model.value(clicks)
    hidden = clicks + model.attention_out(attended)
    hidden = hidden + model.feed_forward_out(F.relu(model.feed_forward_in(model.feed_forward_norm(hidden))))
    return model.output_norm(hidden[-1]), clicks[-1]


@pytest.mark.parametrize(("window", "steps"), [(1, 2), (2, 1), (0, 3)])
def test_share_follows_the_codes_layers(window, steps):
    torch.manual_seed(0)
    model = build_backbone("share", NUM_ITEMS, {"embedding_dim": 8, "window": window, "steps": steps}).eval()
    with torch.no_grad():
        out = model.encode(SessionBatch.from_lists(SESSIONS))
        for row, session in enumerate(SESSIONS):
            session_vector, local = share_by_hand(model, session)
            torch.testing.assert_close(out.session[row], session_vector, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out.vectors["local"][row], local, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.score(out), out.session @ model.id_table.t())


def test_share_window_changes_the_encoding():
    torch.manual_seed(0)
    narrow = build_backbone("share", NUM_ITEMS, {"embedding_dim": 8, "window": 1}).eval()
    wide = build_backbone("share", NUM_ITEMS, {"embedding_dim": 8, "window": 3}).eval()
    wide.load_state_dict(narrow.state_dict())
    batch = SessionBatch.from_lists(SESSIONS)
    with torch.no_grad():
        assert not torch.allclose(narrow.encode(batch).session[0], wide.encode(batch).session[0])
        # a single click has only its own hyperedge whatever the window
        torch.testing.assert_close(narrow.encode(batch).session[2], wide.encode(batch).session[2])
