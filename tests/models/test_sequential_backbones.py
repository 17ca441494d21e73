"""Hand-checked behaviour of the shared layers and the four sequential backbones."""

from __future__ import annotations

import math

import pytest
import torch

from intentrec.data.batch import SessionBatch
from intentrec.models.backbones.gru4rec import run_gru
from intentrec.models.backbones.sasrec import PackedTokens, window_positions
from intentrec.models.layers import (
    AdditiveAttention,
    LengthGroups,
    gather_last,
    keep_most_recent,
    masked_mean,
    masked_softmax,
)
from intentrec.models.registry import build_backbone

pytestmark = pytest.mark.usefixtures("single_thread")


# ---- layers -------------------------------------------------------------------------------------


def test_masked_softmax_ignores_padding_and_empties_fully_masked_rows():
    scores = torch.tensor([[0.0, math.log(3.0), 100.0], [1.0, 2.0, 3.0]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    weights = masked_softmax(scores, mask)
    torch.testing.assert_close(weights, torch.tensor([[0.25, 0.75, 0.0], [0.0, 0.0, 0.0]]))


def test_masked_mean_and_gather_last():
    values = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [99.0, 99.0]], [[5.0, 6.0], [0.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    torch.testing.assert_close(masked_mean(values, mask), torch.tensor([[2.0, 3.0], [5.0, 6.0]]))
    last = gather_last(values, torch.tensor([2, 1]))
    torch.testing.assert_close(last, torch.tensor([[3.0, 4.0], [5.0, 6.0]]))


def test_keep_most_recent_truncates_each_row_from_the_left():
    items = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 0, 0, 0], [8, 9, 10, 11, 0]])
    kept, lengths = keep_most_recent(items, torch.tensor([5, 2, 4]), 3)
    assert kept.tolist() == [[3, 4, 5], [6, 7, 0], [9, 10, 11]]
    assert lengths.tolist() == [3, 2, 3]
    same, _ = keep_most_recent(items, torch.tensor([5, 2, 4]), 5)
    assert same is items


# ---- GRU4Rec / NARM -----------------------------------------------------------------------------

SESSIONS = [[4, 2, 9], [7], [1, 3, 5, 8, 2, 6]]


def batch() -> SessionBatch:
    return SessionBatch.from_lists(SESSIONS, targets=[1, 2, 3])


def hidden_states(model, session: list[int]) -> torch.Tensor:
    """Unpadded, unbatched GRU pass over one session: [len, d]."""
    states, _ = model.gru(model.embedding(torch.tensor([session])))
    return states[0]


def test_gru4rec_vectors_match_an_unpadded_gru_run():
    torch.manual_seed(0)
    model = build_backbone("gru4rec", 10, {"embedding_dim": 8}).eval()
    with torch.no_grad():
        out = model.encode(batch())
        for row, session in enumerate(SESSIONS):
            states = hidden_states(model, session)
            torch.testing.assert_close(out.vectors["local"][row], states[-1])
            torch.testing.assert_close(out.vectors["global"][row], states.mean(0))
        torch.testing.assert_close(out.session, out.vectors["local"])
        torch.testing.assert_close(model(batch()), out.session @ model.embedding.weight[1:].t())


def test_gru4rec_init_bounds_and_padding_row():
    model = build_backbone("gru4rec", 50, {"embedding_dim": 10})
    assert model.embedding.weight[0].abs().sum() == 0
    bound = math.sqrt(6.0 / (51 + 10))
    assert model.embedding.weight.abs().max() <= bound
    assert model.gru.weight_hh_l0.abs().max() <= math.sqrt(6.0 / 20)
    assert model.gru.bias_ih_l0.abs().sum() == 0


def test_narm_attention_readout_and_bilinear_session_by_hand():
    torch.manual_seed(0)
    model = build_backbone("narm", 10, {"embedding_dim": 6}).eval()
    with torch.no_grad():
        out = model.encode(batch())
        for row, session in enumerate(SESSIONS):
            states = hidden_states(model, session)
            h_t = states[-1]
            att = model.attention
            energy = att.score(torch.sigmoid(att.key_proj(states) + att.query_projs[0](h_t)))[:, 0]
            c_l = (torch.softmax(energy, 0)[:, None] * states).sum(0)
            torch.testing.assert_close(out.vectors["local"][row], h_t)
            torch.testing.assert_close(out.vectors["global"][row], c_l)
            expected = model.bilinear.weight @ torch.cat([h_t, c_l])
            torch.testing.assert_close(out.session[row], expected)


def test_narm_dropouts_are_the_papers_and_only_act_in_training():
    model = build_backbone("narm", 10, {})
    assert (model.embedding_dropout.p, model.encoder_dropout.p) == (0.25, 0.5)
    torch.manual_seed(1)
    model.train()
    assert not torch.equal(model(batch()), model(batch()))
    model.eval()
    assert torch.equal(model(batch()), model(batch()))


# ---- STAMP --------------------------------------------------------------------------------------


def test_stamp_trilinear_score_by_hand():
    model = build_backbone("stamp", 3, {"embedding_dim": 2}).eval()
    with torch.no_grad():
        model.embedding.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        for parameter in model.attention.parameters():
            parameter.zero_()
        # σ(0) = 1/2 on both hidden units and w0 = [1, 1]: every raw α_i is exactly 1.
        model.attention.score.weight.fill_(1.0)
        for mlp in (model.mlp_general, model.mlp_current):
            mlp.weight.copy_(torch.eye(2))
            mlp.bias.zero_()
        out = model.encode(SessionBatch.from_lists([[1, 2], [3]]))
        scores = model.score(out)
    t = math.tanh(1.0)
    # Session [1, 2]: m_a = x1 + x2 = [1, 1] (unnormalised α), h_s = tanh([1, 1]), h_t = tanh(x2).
    torch.testing.assert_close(out.vectors["global"][0], torch.tensor([t, t]))
    torch.testing.assert_close(out.vectors["local"][0], torch.tensor([0.0, t]))
    torch.testing.assert_close(scores[0], torch.tensor([0.0, t * t, t * t]))
    # Session [3]: m_a = x3 = [1, 1], h_t = tanh([1, 1]).
    torch.testing.assert_close(out.session[1], torch.tensor([t * t, t * t]))


def test_stamp_init_follows_the_paper():
    torch.manual_seed(0)
    model = build_backbone("stamp", 2000, {})
    emb = model.embedding.weight[1:]
    assert abs(emb.std().item() - 0.002) < 0.0002
    assert abs(model.mlp_general.weight.std().item() - 0.05) < 0.005
    assert model.mlp_general.bias.abs().sum() == 0


# ---- SASRec -------------------------------------------------------------------------------------


def test_sasrec_positions_count_back_from_the_most_recent_item():
    positions = window_positions(torch.tensor([3, 1, 5]), 5, 5)
    assert positions.tolist() == [[2, 3, 4, 4, 4], [4, 4, 4, 4, 4], [0, 1, 2, 3, 4]]


def test_sasrec_long_sessions_are_truncated_to_the_most_recent_items():
    torch.manual_seed(0)
    model = build_backbone("sasrec", 20, {"embedding_dim": 8, "max_length": 4, "num_heads": 2})
    model.eval()
    with torch.no_grad():
        long = model.encode(SessionBatch.from_lists([[9, 8, 7, 1, 2, 3, 4], [5, 6]]))
        short = model.encode(SessionBatch.from_lists([[1, 2, 3, 4], [5, 6]]))
        different = model.encode(SessionBatch.from_lists([[9, 2, 3, 4], [5, 6]]))
    torch.testing.assert_close(long.session, short.session)
    torch.testing.assert_close(long.vectors["global"], short.vectors["global"])
    assert not torch.allclose(different.session[0], short.session[0])


def test_sasrec_uses_exactly_the_window_positions_of_each_session():
    torch.manual_seed(0)
    model = build_backbone("sasrec", 20, {"embedding_dim": 8, "max_length": 6}).eval()
    sessions = SessionBatch.from_lists([[3], [5, 3]])
    with torch.no_grad():
        reference = model.encode(sessions).session
        changed_rows = []
        for row in range(6):
            saved = model.positions.weight[row].clone()
            # Random, not constant: LayerNorm hides a constant shift of every dimension.
            model.positions.weight[row].add_(torch.randn(8))
            changed = ~torch.isclose(model.encode(sessions).session, reference).all(dim=1)
            model.positions.weight[row].copy_(saved)
            changed_rows.append(changed.tolist())
    # [3] reads only position 5; [5, 3] reads positions 4 and 5, whatever the batch width.
    assert changed_rows == [[False, False]] * 4 + [[False, True], [True, True]]


@pytest.mark.parametrize("name", ["gru4rec", "narm", "stamp", "sasrec"])
def test_default_train_has_the_documented_keys(name):
    model = build_backbone(name, 5, {})
    assert set(model.default_train) == {"lr", "batch_size", "l2", "lr_decay_step", "lr_decay_gamma"}
    assert model.registry_name == name and model.dim == 100


def test_additive_attention_on_real_positions_only_equals_the_padded_computation():
    torch.manual_seed(0)
    attention = AdditiveAttention(4, [4, 4], 3, bias=True)
    keys = torch.randn(3, 5, 4)
    queries = [torch.randn(3, 4), torch.randn(3, 4)]
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    full = attention(keys, queries)
    packed = attention(keys, queries, mask)
    torch.testing.assert_close(packed[mask], full[mask])
    assert torch.all(packed[~mask] == 0)


def test_packed_tokens_per_row_helpers_match_the_padded_ones():
    lengths = torch.tensor([1, 6, 3, 2])
    mask = torch.arange(6).unsqueeze(0) < lengths.unsqueeze(1)
    packing = PackedTokens(mask)
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(4, 6, 5, generator=generator)
    scores = torch.randn(4, 6, generator=generator) * 30  # large: the per-row shift matters
    assert packing.num_tokens == 12
    assert packing.lengths.tolist() == [1, 6, 3, 2] and packing.starts.tolist() == [0, 1, 7, 10]
    torch.testing.assert_close(packing.pack(values).index_select(0, packing.last), gather_last(values, lengths))
    torch.testing.assert_close(packing.sum_per_row(packing.pack(values)), (values * mask.unsqueeze(2)).sum(1))
    torch.testing.assert_close(
        packing.unpack(packing.softmax_per_row(packing.pack(scores))), masked_softmax(scores, mask)
    )


@pytest.mark.parametrize("num_layers", [1, 2])
def test_packed_gru_equals_running_each_session_alone(num_layers):
    torch.manual_seed(0)
    gru = torch.nn.GRU(4, 3, num_layers=num_layers, batch_first=True)
    lengths = torch.tensor([5, 1, 40, 9, 17, 8, 2, 33, 16])  # several length groups (≤8, ≤16, ...)
    mask = torch.arange(int(lengths.max())).unsqueeze(0) < lengths.unsqueeze(1)
    packing = PackedTokens(mask)
    inputs = torch.randn(packing.num_tokens, 4, requires_grad=True)
    states = run_gru(gru, inputs, LengthGroups(packing))
    expected = torch.cat(
        [
            gru(inputs[start : start + n].unsqueeze(0))[0].squeeze(0)
            for start, n in zip(packing.starts.tolist(), lengths.tolist())
        ]
    )
    torch.testing.assert_close(states, expected)
    upstream = torch.randn_like(states)
    got = torch.autograd.grad(states, (inputs, *gru.parameters()), upstream)
    want = torch.autograd.grad(expected, (inputs, *gru.parameters()), upstream)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_length_groups_pad_each_group_to_its_own_longest_row_and_pack_back():
    lengths = torch.tensor([3, 20, 1, 9, 8])
    packing = PackedTokens(torch.arange(20).unsqueeze(0) < lengths.unsqueeze(1))
    groups = LengthGroups(packing)
    values = torch.arange(float(packing.num_tokens)).unsqueeze(1)
    blocks = groups.pad(values)
    assert [tuple(b.shape) for b in blocks] == [(3, 8, 1), (1, 9, 1), (1, 20, 1)]  # ≤8, ≤16, ≤32
    # Row 0 (3 clicks at packed 0..2) is padded with copies of its last click.
    assert blocks[0][1].squeeze(1).tolist() == [0, 1, 2, 2, 2, 2, 2, 2]
    torch.testing.assert_close(groups.pack(blocks), values)


def test_length_groups_refuse_empty_sessions():
    packing = PackedTokens(torch.tensor([[True, False], [False, False]]))
    with pytest.raises(ValueError, match="at least one click"):
        LengthGroups(packing)


def test_sasrec_packed_tokens_round_trip():
    mask = torch.tensor([[True, True, False], [True, False, False], [True, True, True]])
    packing = PackedTokens(mask)
    values = torch.arange(9.0).view(3, 3, 1)
    packed = packing.pack(values)
    assert packed.squeeze(1).tolist() == [0.0, 1.0, 3.0, 6.0, 7.0, 8.0]
    torch.testing.assert_close(packing.unpack(packed), values * mask.unsqueeze(2))
