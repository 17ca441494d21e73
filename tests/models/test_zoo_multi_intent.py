"""MSGIFSR's intent-unit graph and MiaSRec's intent scoring, checked on hand-sized sessions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from intentrec.data.batch import SessionBatch
from intentrec.models.backbones.miasrec import newest_first
from intentrec.models.backbones.msgifsr import build_intent_graph
from intentrec.models.registry import build_backbone

pytestmark = pytest.mark.usefixtures("single_thread")

# [4, 2, 4, 7, 3] repeats item 4 (so its graph has a cycle 4 -> 2 -> 4); [6] and
# [2, 3] are shorter than the highest granularity.
SESSIONS = [[4, 2, 4, 7, 3], [6], [2, 3]]


def graph_of(sessions, order=3, short_units="session", extra_width=0):
    batch = SessionBatch.from_lists(sessions)
    return build_intent_graph(F.pad(batch.items, (0, extra_width)), batch.lengths, order, short_units)


def units(level, session):
    """The units of one session as tuples of item indices (0 padding removed)."""
    rows = level.items[level.session == session].tolist()
    return sorted(tuple(i for i in row if i) for row in rows)


def edges(graph, name):
    """A relation's edges as (source unit, target unit) tuples of item indices."""
    relation = next(r for r in graph.relations if r.name == name)
    source, target = graph.levels[relation.source], graph.levels[relation.target]

    def unit(level, index):
        return tuple(i for i in level.items[index].tolist() if i)

    return sorted(
        (unit(source, s), unit(target, t))
        for s, t in zip(relation.edge_source.tolist(), relation.edge_target.tolist(), strict=True)
    )


def test_intent_units_of_each_granularity():
    graph = graph_of(SESSIONS)
    first, second, third = graph.levels
    assert units(first, 0) == [(2,), (3,), (4,), (7,)]
    assert units(second, 0) == [(2, 4), (4, 2), (4, 7), (7, 3)]
    assert units(third, 0) == [(2, 4, 7), (4, 2, 4), (4, 7, 3)]
    # the last unit of each granularity is made of the last k clicks
    assert second.items[second.last[0]].tolist() == [7, 3]
    assert third.items[third.last[0]].tolist() == [4, 7, 3]
    # shorter sessions: their one k-unit is the session itself
    assert units(second, 1) == [(6,)] and units(third, 1) == [(6,)]
    assert units(second, 2) == [(2, 3)] and units(third, 2) == [(2, 3)]
    assert third.items[third.last[2]].tolist() == [2, 3, 0] and third.lengths[third.last[2]].item() == 2


def test_short_sessions_can_follow_the_reference_rule():
    graph = graph_of(SESSIONS, short_units="smallest_item")
    third = graph.levels[2]
    assert units(third, 1) == [(6, 6, 6)]
    assert units(third, 2) == [(2, 2, 2)]  # the session's smallest item index, k times
    assert units(graph.levels[1], 1) == [(6, 6)]


def test_graph_edges_follow_consecutive_units():
    graph = graph_of(SESSIONS)
    assert edges(graph, "intra_1") == [((2,), (3,)), ((2,), (4,)), ((4,), (2,)), ((4,), (7,)), ((7,), (3,))]
    assert edges(graph, "intra_2") == [((2, 4), (4, 7)), ((4, 2), (2, 4)), ((4, 7), (7, 3))]
    assert edges(graph, "intra_3") == [((2, 4, 7), (4, 7, 3)), ((4, 2, 4), (2, 4, 7))]
    # item at t -> the unit starting at t + 1; the unit starting at t -> the item at t + k
    assert edges(graph, "up_2") == [((2,), (4, 7)), ((4,), (2, 4)), ((4,), (7, 3))]
    assert edges(graph, "down_2") == [((2, 4), (7,)), ((4, 2), (4,)), ((4, 7), (3,))]
    assert edges(graph, "up_3") == [((2,), (4, 7, 3)), ((4,), (2, 4, 7))]
    assert edges(graph, "down_3") == [((2, 4, 7), (3,)), ((4, 2, 4), (7,))]


def test_graph_is_the_same_under_extra_padding():
    narrow, wide = graph_of(SESSIONS), graph_of(SESSIONS, extra_width=4)
    for a, b in zip(narrow.levels, wide.levels, strict=True):
        assert torch.equal(a.items, b.items) and torch.equal(a.last, b.last) and torch.equal(a.session, b.session)
    for a, b in zip(narrow.relations, wide.relations, strict=True):
        assert torch.equal(a.edge_source, b.edge_source) and torch.equal(a.edge_target, b.edge_target)


def test_msgifsr_scores_are_log_probabilities_and_attention_learns():
    torch.manual_seed(0)
    model = build_backbone("msgifsr", 12, {"embedding_dim": 16, "heads": 2, "dropout": 0.0})
    # item 2 follows both 1 and 3 (two in-edges at granularity 1), unit (1, 2) precedes (2, 3) and (2, 1)
    batch = SessionBatch.from_lists([[1, 2, 3, 2, 1, 2, 1], [5, 6], [7]], targets=[3, 7, 8])
    scores = model(batch)
    torch.testing.assert_close(scores.exp().sum(1), torch.ones(3))
    model.loss(batch).backward()
    layer = model.layers[0]
    for convs in (layer.forward_convs, layer.backward_convs):
        for name in ("intra_1", "intra_2"):
            assert torch.any(convs[name].attn_l.grad != 0) and torch.any(convs[name].attn_r.grad != 0), name


@pytest.mark.parametrize("name", ["msgifsr", "miasrec"])
def test_a_replaced_session_is_scored_as_one_intent(name):
    torch.manual_seed(0)
    model = build_backbone(name, 12, {"embedding_dim": 16}).eval()
    batch = SessionBatch.from_lists([[1, 2, 3], [5]])
    output = model.encode(batch)
    replaced = output.replace_session(torch.randn(2, 16))
    table = model.item_table()
    expected_one = model.score_with(output.__class__(session=output.session, extras=output.extras), table)
    torch.testing.assert_close(expected_one, model.score(output))  # the unreplaced output: its intents
    got = model.score_with(replaced, table)
    if name == "miasrec":
        want = F.normalize(replaced.session, dim=-1) @ table.t() / model.config.temperature
    else:
        want = model.intent_log_probs(F.normalize(replaced.session, dim=-1).unsqueeze(1), table, batch.items)[:, 0]
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, model.score(output))


def test_newest_first_reverses_within_the_length():
    items = torch.tensor([[1, 2, 3], [4, 5, 0], [6, 0, 0]])
    assert newest_first(items, torch.tensor([3, 2, 1])).tolist() == [[3, 2, 1], [5, 4, 0], [6, 0, 0]]


def test_miasrec_scores_max_and_mean_of_the_selected_intents():
    torch.manual_seed(0)
    model = build_backbone("miasrec", 12, {"embedding_dim": 16, "beta": 0.75}).eval()
    batch = SessionBatch.from_lists([[1, 2, 3, 2], [5]])
    output = model.encode(batch)
    selected, intents = output.extras["selected"], output.extras["intents"]
    assert selected.shape == (2, 5) and not selected[1, 2:].any()  # padding tokens are never intents
    assert selected.any(dim=1).all()
    table = model.item_table()
    for row in range(2):
        cosines = intents[row, selected[row]] @ table.t() / model.config.temperature
        want = 0.75 * cosines.max(0).values + 0.25 * cosines.mean(0)
        torch.testing.assert_close(model.score(output)[row], want)
    # an unselected intent is the zero vector; a selected one has unit length
    norms = intents.norm(dim=-1)
    torch.testing.assert_close(norms[selected], torch.ones(int(selected.sum())))
    assert torch.all(norms[~selected] == 0)


def naive_miasrec_scores(model, output, table):
    """β max + (1 − β) mean of the selected intents' cosines / τ, one session at a time."""
    cfg = model.config
    intents, selected = output.extras["intents"], output.extras["selected"]
    rows = []
    for row in range(intents.shape[0]):
        cosines = intents[row, selected[row]] @ table.t() / cfg.temperature
        rows.append(cfg.beta * cosines.max(0).values + (1 - cfg.beta) * cosines.mean(0))
    return torch.stack(rows)


def test_miasrec_scoring_gradients_match_a_naive_max_and_mean():
    """The fused scoring (packed by rank, gradients written by hand) against autograd of the formula."""
    torch.manual_seed(0)
    model = build_backbone("miasrec", 12, {"embedding_dim": 16, "beta": 0.75}).eval()
    batch = SessionBatch.from_lists([[1, 2, 3, 2], [5], [7, 8, 9, 10, 11, 12, 1], [4, 4]], targets=[3, 6, 2, 9])
    params = [p for p in model.parameters() if p.requires_grad]
    weights = torch.randn(batch.size, 12)
    got = model.score_with(model.encode(batch), model.item_table())
    got_grads = torch.autograd.grad((got * weights).sum(), params, allow_unused=True)
    want = naive_miasrec_scores(model, model.encode(batch), model.item_table())
    want_grads = torch.autograd.grad((want * weights).sum(), params, allow_unused=True)
    torch.testing.assert_close(got, want)
    for (name, _), a, b in zip(model.named_parameters(), got_grads, want_grads, strict=True):
        if name.startswith("importance") or name.endswith("key.bias"):
            continue  # their true gradient is 0 (rounding only): normalise(γh) = normalise(h), softmax shift
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


def test_miasrec_losses_of_two_live_graphs_do_not_share_buffers():
    """A second forward pass before the first one's backward (the scoring reuses a CPU workspace)."""
    torch.manual_seed(0)
    model = build_backbone("miasrec", 12, {"embedding_dim": 16}).eval()
    first = SessionBatch.from_lists([[1, 2, 3], [5, 6]], targets=[4, 7])
    second = SessionBatch.from_lists([[9, 8, 7, 6], [2]], targets=[1, 3])
    params = [p for p in model.parameters() if p.requires_grad]
    alone = [torch.autograd.grad(model.loss(b), params, allow_unused=True) for b in (first, second)]
    losses = [model.loss(first), model.loss(second)]
    together = [torch.autograd.grad(loss, params, allow_unused=True) for loss in reversed(losses)][::-1]
    for want, got in zip(alone, together, strict=True):
        for a, b in zip(want, got, strict=True):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b)
