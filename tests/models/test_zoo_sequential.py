"""Hand-checked equations of FPMC, Caser and Atten-Mixer (the shared contract suites cover the rest)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from intentrec.data.batch import SessionBatch
from intentrec.errors import ConfigError
from intentrec.models.backbones.caser import last_window
from intentrec.models.layers import PackedTokens
from intentrec.models.registry import build_backbone

pytestmark = pytest.mark.usefixtures("single_thread")


def eval_output(model, sessions: list[list[int]]):
    model.eval()
    with torch.no_grad():
        out = model.encode(SessionBatch.from_lists(sessions))
        return out, model.score(out)


# ---- FPMC ---------------------------------------------------------------------------------------

# One factor per block (embedding_dim 4): rows are [v^{I,U} | v^{I,L} | v^{L,I} | v^{S}] of items 1..3.
FPMC_TABLE = [[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 2.0, 0.0], [-2.0, 1.0, 0.0, 1.0]]


def fpmc(**config):
    model = build_backbone("fpmc", 3, {"embedding_dim": 4, **config})
    model.init_item_table(torch.tensor(FPMC_TABLE))
    return model


def test_fpmc_scores_are_the_mf_term_plus_the_last_click_transition():
    out, scores = eval_output(fpmc(), [[1, 2], [3]])
    # [1, 2]: session factor mean(4, 0) = 2, last click's v^{L,I} = 2 → 2·v^{I,U} + 2·v^{I,L}
    # [3]: session factor 1, v^{L,I} = 0 → 1·v^{I,U}
    torch.testing.assert_close(scores, torch.tensor([[6.0, -1.0, -2.0], [1.0, 0.5, -2.0]]))
    torch.testing.assert_close(out.vectors["global"], torch.tensor([[2.0, 0, 0, 0], [1.0, 0, 0, 0]]))
    torch.testing.assert_close(out.vectors["local"], torch.tensor([[0, 2.0, 0, 0], [0, 0.0, 0, 0]]))
    torch.testing.assert_close(out.session, out.vectors["global"] + out.vectors["local"])


def test_fpmc_without_session_factor_is_the_factorised_markov_chain_alone():
    _, scores = eval_output(fpmc(session_factor=False), [[1, 2], [3, 1]])
    # only <v_last^{L,I}, v_i^{I,L}>: last click 2 (v^{L,I} = 2), last click 1 (v^{L,I} = 3)
    torch.testing.assert_close(scores, torch.tensor([[4.0, -2.0, 2.0], [6.0, -3.0, 3.0]]))


def test_fpmc_sees_the_last_click_and_the_set_of_earlier_clicks_not_their_order():
    torch.manual_seed(0)
    model = build_backbone("fpmc", 20, {"embedding_dim": 8})
    _, scores = eval_output(model, [[4, 9, 2, 7], [9, 2, 4, 7], [4, 9, 7, 2]])
    torch.testing.assert_close(scores[0], scores[1])
    assert not torch.allclose(scores[0], scores[2])


def test_fpmc_width_must_hold_four_factor_blocks():
    with pytest.raises(ConfigError, match="multiple of 4"):
        build_backbone("fpmc", 5, {"embedding_dim": 10})


# ---- Caser --------------------------------------------------------------------------------------


def test_last_window_left_pads_so_the_last_click_is_the_last_row():
    items = torch.tensor([[5, 6, 7, 8], [3, 0, 0, 0], [1, 2, 0, 0]])
    assert last_window(items, torch.tensor([4, 1, 2]), 3).tolist() == [[6, 7, 8], [0, 0, 3], [0, 1, 2]]


def caser_by_hand():
    """d = 2, L = 2, one vertical and one horizontal filter per height, with chosen weights."""
    model = build_backbone("caser", 3, {"embedding_dim": 2, "window": 2, "num_vertical": 1, "num_horizontal": 1})
    model.init_item_table(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    with torch.no_grad():
        model.vertical.weight.copy_(torch.tensor([2.0, -1.0]).view(1, 1, 2, 1))
        model.vertical.bias.fill_(0.5)
        model.horizontal[0].weight.copy_(torch.tensor([1.0, 2.0]).view(1, 1, 1, 2))
        model.horizontal[0].bias.fill_(-1.0)
        model.horizontal[1].weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -1.0]]).view(1, 1, 2, 2))
        model.horizontal[1].bias.fill_(0.0)
    return model.eval()


def test_caser_vertical_and_horizontal_convolutions_by_hand():
    model = caser_by_hand()
    image = model.embed_items(torch.tensor([[1, 2], [0, 2]]))  # rows E = [[1, 0], [0, 1]] and [[0, 0], [0, 1]]
    with torch.no_grad():
        features = model.features(image)
    # vertical: 2·E_1 − 1·E_2 + 0.5 (no activation); horizontal h = 1: max over rows of ReLU(E_r·[1, 2] − 1);
    # h = 2: ReLU(E_1·[1, 1] + E_2·[1, −1])
    expected = torch.tensor([[2.5, -0.5, 1.0, 0.0], [0.5, -0.5, 1.0, 0.0]])
    torch.testing.assert_close(features, expected)
    out, _ = eval_output(model, [[3, 1, 2]])
    torch.testing.assert_close(out.session, F.relu(model.fc(expected[:1])).detach())
    torch.testing.assert_close(out.vectors["local"], torch.tensor([[0.0, 1.0]]))


def test_caser_feature_width_is_nv_d_plus_nh_per_height():
    torch.manual_seed(0)
    model = build_backbone("caser", 30, {"embedding_dim": 6, "window": 3, "num_vertical": 2, "num_horizontal": 4})
    image = model.embed_items(last_window(torch.tensor([[4, 5, 6, 7]]), torch.tensor([4]), 3))
    assert image.shape == (1, 3, 6)
    assert model.features(image).shape == (1, 2 * 6 + 4 * 3)
    assert [tuple(conv.weight.shape) for conv in model.horizontal] == [(4, 1, h, 6) for h in (1, 2, 3)]
    assert model.fc.in_features == 2 * 6 + 4 * 3


def test_caser_only_the_last_window_clicks_matter():
    torch.manual_seed(0)
    model = build_backbone("caser", 30, {"window": 3})
    _, scores = eval_output(model, [[9, 1, 2, 3], [5, 8, 1, 2, 3], [1, 2, 3], [4, 2, 3]])
    torch.testing.assert_close(scores[0], scores[1])
    torch.testing.assert_close(scores[0], scores[2])
    assert not torch.allclose(scores[2], scores[3])


# ---- Atten-Mixer --------------------------------------------------------------------------------


def attenmixer(**config):
    torch.manual_seed(0)
    return build_backbone("attenmixer", 12, {"embedding_dim": 8, "heads": 2, "levels": 3, **config}).eval()


def level_queries(model, sessions: list[list[int]]):
    """(recent clicks, raw queries, normalised queries) of a batch, in eval mode."""
    batch = SessionBatch.from_lists(sessions)
    packing = PackedTokens(batch.mask)
    with torch.no_grad():
        recent = model.recent_clicks(model._normalized(model.embed_items(packing.pack(batch.items))), packing)
        return recent, model.queries.raw(recent), model.queries(recent)


def test_attenmixer_level_l_query_reads_the_l_most_recent_clicks():
    model = attenmixer()
    x = F.normalize(model.id_table.detach(), dim=1)
    recent, raw, queries = level_queries(model, [[4, 9, 2, 7], [5]])
    zero = torch.zeros(8)
    torch.testing.assert_close(recent[0], x[[6, 1, 8]])  # 7, 2, 9: most recent first
    torch.testing.assert_close(recent[1], torch.stack([x[4], zero, zero]))  # before the start: zeros
    with torch.no_grad():
        for level, linear in enumerate(model.queries.levels, start=1):
            assert linear.in_features == level * 8
            for row in range(2):
                torch.testing.assert_close(raw[row, level - 1], linear(recent[row, :level].reshape(-1)))
    # normalised across the levels, coordinate by coordinate
    torch.testing.assert_close(queries.norm(dim=1), torch.ones(2, 8))
    torch.testing.assert_close(queries, raw / raw.norm(dim=1, keepdim=True))


def test_attenmixer_clicks_before_the_last_levels_enter_the_readout_not_the_queries():
    model = attenmixer()
    sessions = [[1, 4, 9, 2, 7], [3, 4, 9, 2, 7], [1, 4, 6, 2, 7]]
    _, _, queries = level_queries(model, sessions)
    torch.testing.assert_close(queries[0], queries[1])  # only the first click differs: outside the 3 levels
    assert not torch.allclose(queries[0], queries[2])  # the third most recent differs
    out, _ = eval_output(model, sessions[:2])
    assert not torch.allclose(out.vectors["global"][0], out.vectors["global"][1])


def reference_session(model, session: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One session at a time, from the equations: (readout a, unit session vector)."""
    cfg, mix = model.config, model.mixture
    x = F.normalize(model.id_table[torch.tensor(session) - 1], dim=1)  # [n, d]
    recent = torch.stack([x[-1 - j] if j < len(session) else torch.zeros(x.shape[1]) for j in range(cfg.levels)])
    raw = torch.stack([linear(recent[: i + 1].reshape(-1)) for i, linear in enumerate(model.queries.levels)])
    queries = raw / raw.norm(dim=0, keepdim=True)
    heads, c = cfg.heads, x.shape[1] // cfg.heads
    q = mix.query(queries).view(cfg.levels, heads, c)
    k = mix.key(x).view(len(session), heads, c)
    v = mix.value(x).view(len(session), heads, c)
    alpha = torch.softmax(2 * torch.sigmoid(torch.einsum("lhc,jhc->ljh", q, k)), dim=1)  # over clicks j
    pooled = (alpha**cfg.pool_norm).sum(0) ** (1 / cfg.pool_norm)  # [n, heads]
    weights = torch.softmax(2 * pooled, dim=0)
    readout = mix.norm(torch.einsum("jh,jhc->hc", weights, v).reshape(-1))
    return readout, F.normalize(model.transform(torch.cat([readout, x[-1]])), dim=0)


def test_attenmixer_matches_its_equations_one_session_at_a_time():
    model = attenmixer()
    sessions = [[4, 9, 2, 7, 11], [5], [3, 3, 8]]
    out, scores = eval_output(model, sessions)
    table = F.normalize(model.id_table.detach(), dim=1)
    with torch.no_grad():
        for row, session in enumerate(sessions):
            readout, session_vector = reference_session(model, session)
            torch.testing.assert_close(out.vectors["global"][row], readout)
            torch.testing.assert_close(out.session[row], session_vector)
            torch.testing.assert_close(scores[row], 16.0 * table @ session_vector)


def test_attenmixer_mixed_weights_are_a_distribution_per_head():
    model = attenmixer()
    batch = SessionBatch.from_lists([[4, 9, 2, 7, 11], [5], [3, 3, 8]])
    packing = PackedTokens(batch.mask)
    with torch.no_grad():
        clicks = model._normalized(model.embed_items(packing.pack(batch.items)))
        weights = model.mixture.weights(model.queries(model.recent_clicks(clicks, packing)), clicks, packing)
    assert weights.shape == (9, 2)
    torch.testing.assert_close(packing.sum_per_row(weights), torch.ones(3, 2))


def test_attenmixer_heads_must_divide_the_width():
    with pytest.raises(ConfigError, match="multiple of heads"):
        build_backbone("attenmixer", 5, {"embedding_dim": 100, "heads": 8})
