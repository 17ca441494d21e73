"""SR-GNN, NISER, TAGNN, GC-SAN and GCE-GNN against per-session re-derivations of their equations.

The shared contract (shapes, gradients, padding, overfitting, determinism) is checked for every
backbone in test_backbone_contract.py; here each model's own maths is checked.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from intentrec.data.batch import SessionBatch
from intentrec.errors import IntentrecError
from intentrec.models.backbones.gcegnn import build_global_graph
from intentrec.models.backbones.tagnn import target_attention
from intentrec.models.graph import segment_softmax, session_graph
from intentrec.models.layers import gather_last
from intentrec.models.registry import backbone_class, build_backbone
from tests.helpers.tiny_dataset import write_tiny_dataset

SESSIONS = [[1, 2, 3, 2, 4], [5, 5], [7], [3, 9, 3, 9, 3, 1], [6, 8, 6]]
NUM_ITEMS = 10


@pytest.fixture(autouse=True)
def single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def session_matrices(session):
    nodes = sorted(set(session))
    index = {item: i for i, item in enumerate(nodes)}
    adjacency = torch.zeros(len(nodes), len(nodes))
    for a, b in itertools.pairwise(session):
        adjacency[index[a], index[b]] = 1.0
    a_out = adjacency / adjacency.sum(1, keepdim=True).clamp(min=1)
    a_in = adjacency.t() / adjacency.t().sum(1, keepdim=True).clamp(min=1)
    return nodes, [index[i] for i in session], a_in, a_out


def gnn_by_hand(model, nodes, a_in, a_out):
    """SR-GNN's gated GNN for one session, written from the paper's equations."""
    layer = model.gnn.layer
    h = model.id_table[torch.tensor(nodes) - 1]
    for _ in range(model.config.steps):
        m = torch.cat([a_in @ layer.edge_in(h) + layer.bias_in, a_out @ layer.edge_out(h) + layer.bias_out], 1)
        x_r, x_z, x_n = layer.input_gates(m).chunk(3, 1)
        h_r, h_z, h_n = layer.hidden_gates(h).chunk(3, 1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        candidate = torch.tanh(x_n + r * h_n)
        h = (1 - z) * candidate + z * h
    return h


def srgnn_by_hand(model, session):
    nodes, alias, a_in, a_out = session_matrices(session)
    clicks = gnn_by_hand(model, nodes, a_in, a_out)[alias]
    last = clicks[-1]
    att = model.attention
    alpha = att.score(torch.sigmoid(att.node(clicks) + att.last(last))).squeeze(1)
    return last, (alpha.unsqueeze(1) * clicks).sum(0), clicks


def build(name, seed=0, **config):
    torch.manual_seed(seed)
    model = build_backbone(name, NUM_ITEMS, {"embedding_dim": 8, **config})
    model.eval()
    return model


# ---------------------------------------------------------------------------- SR-GNN


@pytest.mark.parametrize("steps", [1, 2])
def test_srgnn_matches_per_session_equations(steps):
    model = build("srgnn", steps=steps)
    with torch.no_grad():
        out = model.encode(SessionBatch.from_lists(SESSIONS))
        for row, session in enumerate(SESSIONS):
            local, global_, _ = srgnn_by_hand(model, session)
            torch.testing.assert_close(out.vectors["local"][row], local)
            torch.testing.assert_close(out.vectors["global"][row], global_)
            session_vector = model.combine(torch.cat([local, global_]))
            torch.testing.assert_close(out.session[row], session_vector)
        torch.testing.assert_close(model.score(out), out.session @ model.id_table.t())


def test_srgnn_defaults_are_the_papers():
    config = backbone_class("srgnn").Config()
    assert (config.embedding_dim, config.steps, config.hybrid) == (100, 1, True)
    assert backbone_class("srgnn").default_train == {
        "lr": 0.001, "batch_size": 100, "l2": 1e-5, "lr_decay_step": 3, "lr_decay_gamma": 0.1,
    }  # fmt: skip
    bound = 1 / 100**0.5
    model = build_backbone("srgnn", 50, {})
    assert all(p.abs().max() <= bound for p in model.parameters())


def test_srgnn_global_only_ablation():
    model = build("srgnn", hybrid=False)
    with torch.no_grad():
        out = model.encode(SessionBatch.from_lists(SESSIONS))
    torch.testing.assert_close(out.session, out.vectors["global"])


# ---------------------------------------------------------------------------- NISER


def test_niser_normalises_and_scales():
    model = build("niser")
    batch = SessionBatch.from_lists(SESSIONS)
    with torch.no_grad():
        out = model.encode(batch)
        scores = model.score(out)
        torch.testing.assert_close(out.session.norm(dim=1), torch.ones(len(SESSIONS)))
        torch.testing.assert_close(model.item_table().norm(dim=1), torch.ones(NUM_ITEMS))
        assert scores.abs().max() <= 16.0 + 1e-4
        cosine = F.normalize(out.session, dim=1) @ F.normalize(model.id_table, dim=1).t()
        torch.testing.assert_close(scores, 16.0 * cosine)
        # A replaced (unnormalised) session vector is scored like its unit-length version.
        scaled = model.score(out.replace_session(3.0 * out.session))
        torch.testing.assert_close(scaled, scores)


def test_niser_plus_readout_by_hand():
    model = build("niser", dropout=0.0)
    with torch.no_grad():
        out = model.encode(SessionBatch.from_lists(SESSIONS))
        for row, session in enumerate(SESSIONS):
            nodes, alias, a_in, a_out = session_matrices(session)
            original = model.id_table.clone()
            model.id_table.copy_(F.normalize(original, dim=1))  # NISER feeds unit vectors
            states = gnn_by_hand(model, nodes, a_in, a_out)
            model.id_table.copy_(original)
            # positions count back from the last click: the last click has position 0
            positions = torch.arange(len(session) - 1, -1, -1)
            clicks = states[alias] + model.position.weight[positions]
            att = model.attention
            alpha = att.score(torch.sigmoid(att.node(clicks) + att.last(clicks[-1]))).squeeze(1)
            global_ = (alpha.unsqueeze(1) * clicks).sum(0)
            torch.testing.assert_close(out.vectors["local"][row], clicks[-1])
            torch.testing.assert_close(out.vectors["global"][row], global_)
            expected = F.normalize(model.combine(torch.cat([clicks[-1], global_])), dim=0)
            torch.testing.assert_close(out.session[row], expected)


def test_niser_without_positions_is_normalised_srgnn():
    niser = build("niser", positions=False, dropout=0.0)
    assert niser.position is None
    srgnn = build("srgnn")
    srgnn.load_state_dict(niser.state_dict())
    with torch.no_grad():
        srgnn.id_table.copy_(F.normalize(niser.id_table, dim=1))
        batch = SessionBatch.from_lists(SESSIONS)
        torch.testing.assert_close(niser.encode(batch).session, F.normalize(srgnn.encode(batch).session, dim=1))


# ---------------------------------------------------------------------------- TAGNN


def test_tagnn_scores_match_per_item_loop():
    model = build("tagnn")
    batch = SessionBatch.from_lists(SESSIONS)
    with torch.no_grad():
        out = model.encode(batch)
        scores = model.score(out)
        items = model.id_table
        for row, session in enumerate(SESSIONS):
            local, _, clicks = srgnn_by_hand(model, session)
            att = model.attention
            e = att.score(torch.sigmoid(att.node(clicks) + att.last(local))).squeeze(1)
            global_ = (torch.softmax(e, 0).unsqueeze(1) * clicks).sum(0)  # softmax over clicks
            torch.testing.assert_close(out.vectors["global"][row], global_)
            session_vector = model.combine(torch.cat([local, global_]))
            torch.testing.assert_close(out.session[row], session_vector)
            for v in range(NUM_ITEMS):
                beta = torch.softmax(clicks @ model.target_projection.weight.t() @ items[v], 0)
                target = (beta.unsqueeze(1) * clicks).sum(0)
                expected = (session_vector + target) @ items[v]
                torch.testing.assert_close(scores[row, v], expected)


def test_tagnn_item_chunks_do_not_change_scores():
    whole = build("tagnn")
    chunked = build("tagnn", score_chunk=7)  # fewer than one item per packed node
    chunked.load_state_dict(whole.state_dict())
    batch = SessionBatch.from_lists(SESSIONS)
    with torch.no_grad():
        torch.testing.assert_close(chunked.score(chunked.encode(batch)), whole.score(whole.encode(batch)))


@pytest.mark.parametrize("chunk", [1, 3, 7, 100])
@pytest.mark.parametrize("scale", [1.0, 100.0])  # 100: logits too large for the unshifted softmax
def test_tagnn_target_attention_matches_autograd_of_the_formula(chunk, scale):
    generator = torch.Generator().manual_seed(0)
    owner = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    counts = torch.tensor([1.0, 2, 1, 1, 1, 1, 3, 1, 1], dtype=torch.double)
    keys, states, items = (torch.randn(rows, 4, dtype=torch.double, generator=generator) for rows in (9, 9, 7))
    keys = (keys * scale).requires_grad_()
    states, items = states.requires_grad_(), items.requires_grad_()
    fused = target_attention(keys, states, items, owner, counts, 3, chunk)
    beta = segment_softmax(keys @ items.t(), owner, 3, counts)
    plain = torch.zeros(3, 7, dtype=torch.double).index_add(0, owner, beta * (states @ items.t()))
    upstream = torch.randn(3, 7, dtype=torch.double, generator=generator)
    torch.testing.assert_close(fused, plain)
    fused_grads = torch.autograd.grad(fused, (keys, states, items), upstream)
    plain_grads = torch.autograd.grad(plain, (keys, states, items), upstream)
    for a, b in zip(fused_grads, plain_grads):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------- GC-SAN


def test_gcsan_session_mixes_self_attention_and_gnn_state():
    model = build("gcsan", dropout=0.0)
    batch = SessionBatch.from_lists(SESSIONS)
    with torch.no_grad():
        out = model.encode(batch)
        for row, session in enumerate(SESSIONS):
            nodes, alias, a_in, a_out = session_matrices(session)
            clicks = gnn_by_hand(model, nodes, a_in, a_out)[alias]
            block = model.blocks[0]
            q, k, v = block.query(clicks), block.key(clicks), block.value(clicks)
            attended = torch.softmax(q @ k.t() / 8**0.5, dim=1) @ v
            block_out = block.feed_forward(attended) + attended
            torch.testing.assert_close(out.vectors["local"][row], clicks[-1])
            torch.testing.assert_close(out.vectors["global"][row], block_out[-1])
            expected = 0.6 * block_out[-1] + 0.4 * clicks[-1]
            torch.testing.assert_close(out.session[row], expected)


def test_gcsan_last_block_on_the_last_query_equals_running_every_block_in_full():
    model = build("gcsan", dropout=0.0, blocks=2, attention_heads=2)
    model.eval()
    batch = SessionBatch.from_lists(SESSIONS)
    with torch.no_grad():
        out = model.encode(batch)
        graph = session_graph(batch)
        states = model.gnn(graph, model.id_table.index_select(0, graph.node_items - 1))
        attended = graph.gather_positions(states)
        for block in model.blocks:
            attended = block(attended, graph.position_mask)
        torch.testing.assert_close(out.vectors["global"], gather_last(attended, batch.lengths))


@pytest.mark.parametrize("weight,vector", [(1.0, "global"), (0.0, "local")])
def test_gcsan_weight_extremes(weight, vector):
    model = build("gcsan", weight=weight, blocks=2, attention_heads=2)
    with torch.no_grad():
        out = model.encode(SessionBatch.from_lists(SESSIONS))
    torch.testing.assert_close(out.session, out.vectors[vector])


def test_gcsan_rejects_heads_that_do_not_divide_the_dimension():
    with pytest.raises(ValueError, match="divisible"):
        build("gcsan", attention_heads=3)


# ---------------------------------------------------------------------------- GCE-GNN


def test_global_graph_by_hand():
    sessions = [[1, 2, 3, 1], [2, 3], [4, 4, 2]]
    values = np.array([i for s in sessions for i in s], dtype=np.int32)
    offsets = np.array([0, 4, 6, 9])
    # ε = 1: 1-2 ×1, 2-3 ×2, 3-1 ×1, 4-2 ×1 (4-4 is not a neighbour pair)
    neighbors, weights = build_global_graph(values, offsets, 4, epsilon=1, num_neighbors=2)
    assert neighbors.tolist() == [[0, 0], [2, 3], [3, 1], [2, 1], [2, 0]]
    assert weights.tolist() == [[0, 0], [1, 1], [2, 1], [2, 1], [1, 0]]
    # ε = 2 adds 1-3 (session 1), 2-1 (session 1) and 4-2 (session 3).
    neighbors, weights = build_global_graph(values, offsets, 4, epsilon=2, num_neighbors=3)
    assert neighbors.tolist() == [[0, 0, 0], [2, 3, 0], [1, 3, 4], [1, 2, 0], [2, 0, 0]]
    assert weights.tolist() == [[0, 0, 0], [2, 2, 0], [2, 2, 2], [2, 2, 0], [2, 0, 0]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("gcegnn"), num_items=NUM_ITEMS)


def test_gcegnn_needs_prepare(tiny):
    model = build("gcegnn")
    with pytest.raises(IntentrecError, match="prepare"):
        model.encode(SessionBatch.from_lists(SESSIONS))
    model.prepare(tiny)
    values, offsets = tiny.sessions("train")
    expected, _ = build_global_graph(values, offsets, NUM_ITEMS, 2, 12)
    assert torch.equal(model.neighbor_items, torch.from_numpy(expected))
    assert "neighbor_items" not in model.state_dict()  # rebuilt by prepare() after loading


def test_gcegnn_matches_per_session_equations(tiny):
    model = build("gcegnn")
    model.prepare(tiny)
    with torch.no_grad():
        out = model.encode(SessionBatch.from_lists(SESSIONS))
        table, slope = model.id_table, 0.2
        for row, session in enumerate(SESSIONS):
            nodes, alias, _, a_out = session_matrices(session)
            h = table[torch.tensor(nodes) - 1]
            n = len(nodes)
            edge = (a_out > 0) & ~torch.eye(n, dtype=torch.bool)
            relation = torch.zeros(n, n, dtype=torch.long)  # index into relation_vectors
            relation[edge & ~edge.t()] = 1  # out
            relation[~edge & edge.t()] = 2  # in
            relation[edge & edge.t()] = 3  # in-out
            allowed = edge | edge.t() | torch.eye(n, dtype=torch.bool)
            a = model.relation_vectors[relation]  # [n, n, d]
            e = F.leaky_relu((h.unsqueeze(1) * h.unsqueeze(0) * a).sum(-1), slope)
            local = torch.softmax(e.masked_fill(~allowed, float("-inf")), 1) @ h

            s = table[torch.tensor(session) - 1].mean(0)
            agg = model.aggregators[0]
            global_ = []
            for item, state in zip(nodes, h, strict=True):
                nbr = model.neighbor_items[item]
                keep = nbr > 0
                hn = table[nbr[keep] - 1]
                w = model.neighbor_weights[item][keep].unsqueeze(1)
                pi = agg.attention_score(F.leaky_relu(agg.attention_hidden(torch.cat([s * hn, w], 1)), slope)).squeeze(
                    1
                )
                pooled = (torch.softmax(pi, 0).unsqueeze(1) * hn).sum(0)
                global_.append(torch.relu(agg.output(torch.cat([state, pooled]))))
            x = (local + torch.stack(global_))[alias]
            p = model.position.weight[torch.arange(len(session) - 1, -1, -1)]
            z = torch.tanh(model.position_mix(torch.cat([x, p], 1)))
            gate = model.readout_position(z) + model.readout_mean(x.mean(0))
            beta = model.readout_score(torch.sigmoid(gate)).squeeze(1)
            readout = (beta.unsqueeze(1) * x).sum(0)
            torch.testing.assert_close(out.vectors["local"][row], x[-1])
            torch.testing.assert_close(out.session[row], readout)
            torch.testing.assert_close(out.vectors["global"][row], readout)


def test_gcegnn_two_hops_trains(tiny):
    model = build("gcegnn", hops=2, dropout_gcn=0.2)
    model.prepare(tiny)
    model.train()
    batch = SessionBatch.from_lists(SESSIONS, targets=[5, 6, 8, 2, 7])
    loss = model.loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    for aggregator in model.aggregators:
        assert aggregator.output.weight.grad.abs().sum() > 0


def test_gcegnn_defaults():
    config = backbone_class("gcegnn").Config()
    assert (config.epsilon, config.num_neighbors, config.hops) == (2, 12, 1)
    assert (config.dropout_global, config.dropout_local, config.dropout_gcn) == (0.5, 0.0, 0.0)
