"""MSGAT against per-session re-derivations of the authors' equations, on hand-sized examples.

The shared contract (shapes, gradients, padding, batch independence, overfitting, determinism) is
checked in test_backbone_contract.py; here MSGAT's own maths. The model was also compared with the
authors' ``model.py`` with copied weights (see docs/backbones.md); these tests restate the same
equations independently of both.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from intentrec.data.batch import SessionBatch
from intentrec.models.backbones.msgat import clip_norm, entmax, jaccard_overlap
from intentrec.models.graph import session_graph
from intentrec.models.layers import PackedTokens
from intentrec.models.registry import backbone_class, build_backbone

SESSIONS = [[1, 2, 3, 2, 4], [5, 5], [7], [3, 9, 3, 9, 3, 1], [6, 8, 6], [2, 4, 1]]
NUM_ITEMS = 10
DIM = 10  # 2d = 20 = 5 heads of 4


@pytest.fixture(autouse=True)
def single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def build(seed=0, **config):
    torch.manual_seed(seed)
    model = build_backbone("msgat", NUM_ITEMS, {"embedding_dim": DIM, **config})
    model.eval()
    return model


# ---------------------------------------------------------------------------- α-entmax


def entmax_by_bisection(scores: torch.Tensor, alpha: float, steps: int = 200) -> torch.Tensor:
    """One row, float64: p_i = [(α-1) z_i - τ]_+^{1/(α-1)} with Σ p = 1, τ by plain bisection."""
    z = (alpha - 1) * scores.double()
    low, high = z.max() - 1, z.max()
    for _ in range(steps):
        tau = (low + high) / 2
        if (z - tau).clamp(min=0).pow(1 / (alpha - 1)).sum() >= 1:
            low = tau
        else:
            high = tau
    p = (z - low).clamp(min=0).pow(1 / (alpha - 1))
    return p / p.sum()


def sparsemax(scores: torch.Tensor) -> torch.Tensor:
    """α = 2 in closed form (Martins & Astudillo, 2016): projection onto the simplex."""
    z, _ = scores.double().sort(descending=True)
    k = torch.arange(1, len(z) + 1, dtype=z.dtype)
    support = 1 + k * z > z.cumsum(0)
    size = int(support.sum())
    tau = (z[:size].sum() - 1) / size
    return (scores.double() - tau).clamp(min=0)


@pytest.mark.parametrize(
    "alpha,dtype,atol",
    [
        # near α = 1 the exponent 1/(α-1) amplifies float32 rounding (in the authors' code too)
        (1.0001, torch.float64, 1e-9),
        (1.05, torch.float32, 2e-6),
        (1.3, torch.float32, 2e-6),
        (1.5, torch.float32, 2e-6),
        (1.8, torch.float32, 2e-6),
        (2.0, torch.float32, 2e-6),
    ],
)
@pytest.mark.parametrize("spread", [0.5, 3.0, 30.0])
def test_entmax_matches_a_plain_bisection(alpha, dtype, atol, spread):
    generator = torch.Generator().manual_seed(int(alpha * 1000) + int(spread))
    scores = (torch.randn(7, 13, generator=generator, dtype=torch.float64) * spread).to(dtype)
    out = entmax(scores, torch.full((7, 1), alpha, dtype=dtype))
    for row in range(7):
        torch.testing.assert_close(out[row].double(), entmax_by_bisection(scores[row], alpha), atol=atol, rtol=0)
    torch.testing.assert_close(out.sum(1), torch.ones(7, dtype=dtype))
    if alpha == 2.0:
        for row in range(7):
            torch.testing.assert_close(out[row].double(), sparsemax(scores[row]), atol=1e-6, rtol=0)


def test_entmax_is_sparse_and_near_softmax_as_alpha_falls_to_one():
    scores = torch.tensor([[2.0, 1.0, -3.0, 0.5]])
    assert (entmax(scores, torch.tensor([[1.5]]))[0, 2] == 0).all()  # a low score gets exactly 0
    torch.testing.assert_close(entmax(scores, torch.tensor([[1.001]])), torch.softmax(scores, 1), atol=2e-3, rtol=0)


def test_entmax_ignores_minus_infinity_entries():
    scores = torch.randn(4, 9)
    alpha = torch.tensor([[1.2], [1.5], [1.7], [2.0]])
    padded = torch.cat([scores, torch.full((4, 3), float("-inf"))], 1)
    out = entmax(padded, alpha)
    assert (out[:, 9:] == 0).all()
    torch.testing.assert_close(out[:, :9], entmax(scores, alpha))


def test_entmax_gradients_match_finite_differences():
    generator = torch.Generator().manual_seed(0)
    scores = (torch.randn(2, 3, 6, dtype=torch.double, generator=generator) * 2).requires_grad_()
    alpha = (1.1 + 0.8 * torch.rand(2, 3, 1, dtype=torch.double, generator=generator)).requires_grad_()
    assert torch.autograd.gradcheck(lambda s, a: entmax(s, a), (scores, alpha))
    # α shared by several rows (broadcast): its gradient is summed over them
    shared = torch.tensor([[[1.4]]], dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s, a: entmax(s, a), (scores, shared))


# ---------------------------------------------------------------------------- helpers


def test_clip_norm_caps_long_rows_only():
    rows = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    torch.testing.assert_close(clip_norm(rows, 1.5), torch.tensor([[0.9, 1.2], [0.3, 0.4], [0.0, 0.0]]))


def test_jaccard_overlap_by_hand():
    graph = session_graph(SessionBatch.from_lists(SESSIONS))
    sets = [set(s) for s in SESSIONS]
    expected = torch.tensor([[len(a & b) / len(a | b) for b in sets] for a in sets])
    torch.testing.assert_close(jaccard_overlap(graph), expected)
    assert torch.equal(jaccard_overlap(graph).diagonal(), torch.ones(len(SESSIONS)))


# ---------------------------------------------------------------------------- the equations


def session_matrices(session):
    nodes = sorted(set(session))
    index = {item: i for i, item in enumerate(nodes)}
    adjacency = torch.zeros(len(nodes), len(nodes))
    for a, b in itertools.pairwise(session):
        adjacency[index[a], index[b]] = 1.0
    a_out = adjacency / adjacency.sum(1, keepdim=True).clamp(min=1)
    a_in = adjacency.t() / adjacency.t().sum(1, keepdim=True).clamp(min=1)
    return nodes, [index[i] for i in session], a_in, a_out


def intra_by_hand(model, session):
    """The intra-session channel for one session: (s, the clipped item vectors of its nodes)."""
    cfg = model.config
    nodes, alias, a_in, a_out = session_matrices(session)
    e = model.id_table[torch.tensor(nodes) - 1]
    e = e * torch.clamp(cfg.max_norm / e.norm(dim=1, keepdim=True), max=1.0)
    p = model.position.weight[torch.arange(len(nodes)) + 1]  # node rank + 1 (slot 0: padding item)
    p = p * torch.clamp(cfg.max_norm / p.norm(dim=1, keepdim=True), max=1.0)
    x = torch.cat([e, p], 1)
    mean, var = x.mean(1, keepdim=True), x.var(1, unbiased=False, keepdim=True)
    h = (x - mean) / torch.sqrt(var + 1e-12) * model.input_norm.weight + model.input_norm.bias
    layer = model.gnn.layer  # SR-GNN's gated GNN (its own equations: test_graph_backbones.py)
    m = torch.cat([a_in @ layer.edge_in(h) + layer.bias_in, a_out @ layer.edge_out(h) + layer.bias_out], 1)
    x_r, x_z, x_n = layer.input_gates(m).chunk(3, 1)
    h_r, h_z, h_n = layer.hidden_gates(h).chunk(3, 1)
    r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
    candidate = torch.tanh(x_n + r * h_n)
    clicks = ((1 - z) * candidate + z * h)[alias]  # [L, 2d]

    # multi-head entmax self-attention over the clicks and a zero target token
    tokens = torch.cat([clicks, torch.zeros(1, clicks.shape[1])])
    q = torch.relu(model.attention_query(tokens))
    heads, size = cfg.heads, clicks.shape[1] // cfg.heads
    attended = []
    for head in range(heads):
        cols = slice(head * size, (head + 1) * size)
        logits = q[:, cols] @ tokens[:, cols].t() / math.sqrt(size)
        alpha = 1 + torch.sigmoid(model.head_alpha(q[-1, cols]))  # one α per head, from the target query
        weights = torch.stack([entmax(row.unsqueeze(0), alpha.view(1, 1))[0] for row in logits])
        attended.append(weights @ tokens[:, cols])
    a = torch.cat(attended, 1)
    out = model.attention_norm(model.feed_forward_out(torch.relu(model.feed_forward_in(a))) + a)
    target, keys = out[-1], out[:-1]

    # sparse global attention: keys = self-attention outputs, values σ(W_a h_last + W_b h_t)
    values = torch.sigmoid(model.value_last(clicks[-1]) + model.value_click(clicks))
    logits = model.global_score(torch.relu(model.global_key(keys) + model.global_query(target))).squeeze(1)
    alpha_g = 1 + torch.sigmoid(model.global_alpha(target))
    beta = entmax(logits.unsqueeze(0), alpha_g.view(1, 1))[0]
    readout = beta @ values
    s = F.normalize(F.selu(model.decoder(torch.cat([readout, target]))), dim=0)
    return s, e


def test_eval_matches_per_session_equations():
    model = build()
    with torch.no_grad():
        model.id_table[3] *= 30  # item 4 longer than max_norm: clipped on lookup
        model.position.weight[2] *= 30
        out = model.encode(SessionBatch.from_lists(SESSIONS))
        scores = model.score(out)
        for row, session in enumerate(SESSIONS):
            s, e = intra_by_hand(model, session)
            relation = F.normalize(F.selu(e.sum(0)), dim=0)  # the session is its own pool
            session_vector = s + (s + relation)  # INC over a pool of one: the neighbour is itself
            torch.testing.assert_close(out.vectors["global"][row], s)
            torch.testing.assert_close(out.vectors["local"][row], e[sorted(set(session)).index(session[-1])])
            torch.testing.assert_close(out.session[row], session_vector)
            expected = 20.0 * session_vector @ F.normalize(model.id_table, dim=1).t()
            torch.testing.assert_close(scores[row], expected)


def test_batch_pool_matches_per_pair_equations():
    """Training's inter-session channel: relation graph over the batch, then INC's top-k neighbours."""
    model = build(num_neighbors=3)
    batch = SessionBatch.from_lists(SESSIONS)
    graph = session_graph(batch)
    with torch.no_grad():
        intra, items, _ = model.intra_session(graph, PackedTokens(graph.position_mask))
        item_sums = graph.sum_per_session(items)
        relation, neighbors = model.inter_session(intra, item_sums, graph, "batch")
        sets = [set(s) for s in SESSIONS]
        n = len(SESSIONS)
        overlap = torch.tensor([[len(a & b) / len(a | b) for b in sets] for a in sets])
        expected_relation = torch.stack(
            [
                F.normalize(F.selu(sum(overlap[i, j] * item_sums[j] for j in range(n)) / overlap[i].sum()), dim=0)
                for i in range(n)
            ]
        )
        torch.testing.assert_close(relation, expected_relation)
        z = intra + expected_relation
        for i in range(n):
            # the code's cosine: ε = 1e-6 inside the norm, per entry
            cos = torch.stack(
                [
                    z[i] @ z[j] / (torch.sqrt((z[i] ** 2 + 1e-6).sum()) * torch.sqrt((z[j] ** 2 + 1e-6).sum()))
                    for j in range(n)
                ]
            )
            top, index = torch.softmax(cos, 0).topk(3)
            assert index[0] == i  # a session is its own nearest neighbour
            expected = (torch.softmax(top, 0).unsqueeze(1) * z[index]).sum(0)
            torch.testing.assert_close(neighbors[i], expected)


def test_training_uses_the_batch_pool_and_evaluation_each_session_alone():
    model = build(dropout=0.0, neighbor_dropout=0.0)
    batch = SessionBatch.from_lists(SESSIONS)
    graph = session_graph(batch)
    with torch.no_grad():
        intra, items, _ = model.intra_session(graph, PackedTokens(graph.position_mask))
        sums = graph.sum_per_session(items)
        model.train()
        _, pooled = model.inter_session(intra, sums, graph, "batch")
        torch.testing.assert_close(model.encode(batch).session, intra + pooled)
        model.eval()
        _, alone = model.inter_session(intra, sums, graph, "self")
        torch.testing.assert_close(model.encode(batch).session, intra + alone)
        assert not torch.allclose(pooled, alone)


def test_train_pool_self_trains_as_it_evaluates():
    model = build(dropout=0.0, neighbor_dropout=0.0, train_pool="self")
    batch = SessionBatch.from_lists(SESSIONS)
    with torch.no_grad():
        model.train()
        trained = model.encode(batch).session
        model.eval()
        torch.testing.assert_close(trained, model.encode(batch).session)


def test_relation_channel_carries_no_gradient_to_the_items():
    """As in the code (the relation channel copies the item vectors through numpy)."""
    model = build(dropout=0.0, neighbor_dropout=0.0)
    batch = SessionBatch.from_lists([[1, 2]])
    model.eval()
    out = model.encode(batch)
    # with one session: session = 2s + r, and r's only input is the (detached) item vectors
    relation = out.session - 2 * out.vectors["global"]
    assert relation.requires_grad
    (grad,) = torch.autograd.grad(relation.sum(), model.id_table, allow_unused=True)
    assert grad is None or torch.all(grad == 0)


def test_defaults_are_the_codes():
    cls = backbone_class("msgat")
    config = cls.Config()
    assert (config.embedding_dim, config.steps, config.heads, config.num_neighbors) == (100, 1, 5, 3)
    assert (config.scale, config.max_norm, config.max_positions) == (20.0, 1.5, 300)
    assert (config.dropout, config.neighbor_dropout, config.train_pool) == (0.2, 0.4, "batch")
    assert cls.default_train == {
        "lr": 0.001, "batch_size": 512, "l2": 1e-5, "lr_decay_step": 5, "lr_decay_gamma": 0.1,
    }  # fmt: skip
    model = build_backbone("msgat", 50, {})
    bound = 1 / 100**0.5
    assert all(p.abs().max() <= bound for p in model.parameters())  # U(-1/√d, 1/√d), layer norms too


def test_heads_must_divide_the_doubled_dimension():
    with pytest.raises(ValueError, match="divisible"):
        build(heads=3)
