"""LLM-DMsRec: the explicit/latent split, the titles and llm sources, fusion, alignment switch, ablations,
and an end-to-end run over SR-GNN on the tiny dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from intentrec.data.batch import SessionBatch
from intentrec.errors import ConfigError, DataError
from intentrec.models.methods import FeatureTable, build_method
from intentrec.models.methods.dmsrec_features import (
    group_means,
    llm_tables,
    normalise_title,
    split_intents,
    titles_intents,
)
from intentrec.models.methods.losses import ALIGNMENTS
from intentrec.models.registry import BACKBONES, build_backbone, load_all
from tests.helpers.hash_encoder import register_hash_encoder
from tests.helpers.tiny_dataset import write_tiny_dataset

load_all()
ENCODER = "dmsrec-test-hash"


register_hash_encoder(ENCODER, 8)


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("INTENTREC_HOME", str(tmp_path / "home"))


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny"))


# ----------------------------------------------------------------------------- the split rule


def test_split_matches_clicked_titles_after_normalisation():
    clicked = ["Red Lipstick", "Nail Polish, Pink", "Garden Hose 50ft"]
    pieces = [
        "  red   LIPSTICK ",  # case and spacing
        "Nail Polish, Pink_B00ABC1234",  # an echoed ASIN-like id
        "Garden Hose 50ft_77",  # an echoed numeric id
        "Blue Mascara",  # not clicked
        "Red Lipstick Deluxe",  # a longer, different title
    ]
    explicit, latent = split_intents(pieces, clicked)
    assert explicit == pieces[:3]
    assert latent == ["Blue Mascara", "Red Lipstick Deluxe"]
    # an id that does not look like a code is removed when it is the clicked item's own id
    assert split_intents(["Shampoo_x"], ["Shampoo"], ["x"])[0] == ["Shampoo_x"]
    assert split_intents(["Shampoo_x"], ["Shampoo"])[1] == ["Shampoo_x"]
    assert normalise_title("Red Lipstick [ID: B00X]") == "red lipstick"
    # an id cut off by the token limit, and a bracket that is not an id
    assert normalise_title("Red Lipstick [ID: B0") == "red lipstick"
    assert normalise_title("Red Lipstick [") == "red lipstick"
    assert normalise_title("Red Lipstick [Pack of 2]") == "red lipstick [pack of 2]"


def test_split_matches_the_truncated_titles_the_prompt_shows():
    long_title = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
    shown = "one two three four five six seven eight nine ten eleven twelve…"  # candidate list: 12 words
    explicit, latent = split_intents([shown, "other"], [long_title])
    assert explicit == [shown] and latent == ["other"]


def test_an_empty_group_copies_the_other():
    assert split_intents(["Blue Mascara", "Soap"], ["Red Lipstick"]) == (
        ["Blue Mascara", "Soap"],
        ["Blue Mascara", "Soap"],
    )
    assert split_intents(["red lipstick"], ["Red Lipstick"]) == (["red lipstick"], ["red lipstick"])
    assert split_intents(["", "  "], ["x"]) == ([], [])


def test_group_means_match_a_plain_loop():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(7, 3)).astype(np.float32)
    owners = np.array([0, 0, 2, 2, 2, 4])
    rows = np.array([1, 6, 0, 0, 3, 5])
    means, counts = group_means(vectors, owners, rows, 5)
    assert counts.tolist() == [2, 0, 3, 0, 1]
    expected = np.zeros((5, 3), np.float32)
    for o in range(5):
        if counts[o]:
            expected[o] = vectors[rows[owners == o]].mean(0)
    np.testing.assert_allclose(means, expected, rtol=1e-6, atol=1e-7)


def test_titles_source_rule_matches_a_plain_loop():
    rng = np.random.default_rng(1)
    num_items, latent_top = 12, 2
    catalogue = rng.normal(size=(num_items, 4)).astype(np.float32)
    prefixes = [[1, 2, 2], [7], [3, 4, 5, 6, 8, 9], [10, 11]]
    candidates = np.array(
        [
            [2, 5, 6, 1, 9, 10],  # clicked 2 and 1 among candidates
            [3, 4, 5, 6, 8, 9],  # nothing clicked: explicit copies latent
            [3, 4, 5, 6, 8, 9],  # everything clicked: latent copies explicit
            [12, 10, 1, 2, 3, 4],
        ]
    )
    values = np.array([i for p in prefixes for i in p])
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in prefixes])])
    explicit, latent, stats = titles_intents(values, offsets, candidates, catalogue, latent_top=latent_top)
    for row, (prefix, cands) in enumerate(zip(prefixes, candidates.tolist())):
        e = [c for c in cands if c in prefix]
        lat = [c for c in cands if c not in prefix][:latent_top]
        e, lat = e or lat, lat or e
        np.testing.assert_allclose(explicit[row], catalogue[np.array(e) - 1].mean(0), rtol=1e-5)
        np.testing.assert_allclose(latent[row], catalogue[np.array(lat) - 1].mean(0), rtol=1e-5)
    assert stats["explicit_copied_from_latent"] == 1 and stats["latent_copied_from_explicit"] == 1


# ----------------------------------------------------------------------------- the model


def text_tables(names=("explicit", "latent"), n=64, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    return {
        g: FeatureTable(np.arange(n), rng.normal(size=(n, dim)).astype(np.float32), np.ones(n, bool)) for g in names
    }


def make(dataset, backbone="srgnn", backbone_config=None, **config):
    torch.manual_seed(0)
    bb = build_backbone(
        backbone, dataset.num_items, {"embedding_dim": 16} if backbone_config is None else backbone_config
    )
    bb.prepare(dataset)
    m = build_method("dmsrec", bb, config)
    m.attach(text_tables(m.feature_names()))
    return m


def batch():
    return SessionBatch.from_lists(
        [[1, 2, 3], [4], [5, 6, 7, 5], [9, 9]], targets=[2, 3, 4, 1], example_ids=[3, 9, 12, 40]
    )


def test_fusion_and_loss_follow_the_paper(tiny):
    m = make(tiny, text_dropout=0.0, beta=0.5, alpha_explicit=0.3, alpha_latent=2.0).train()
    b = batch()
    out = m.backbone.encode(b)
    s = out.session
    e_hat = m.text_proj(m.feature("explicit", b.example_ids))
    l_hat = m.text_proj(m.feature("latent", b.example_ids))
    assert m.fusion.in_features == 3 * 16 and m.fusion.bias is None
    fused, aux = m.fuse(out, b)
    torch.testing.assert_close(fused.session, m.fusion(torch.cat([s, e_hat, l_hat], 1)))
    # KL(P_session || P_text), softmax over the feature dimension, batch mean — written out by hand
    p = torch.softmax(s, -1)
    for name, t in (("kl_explicit", e_hat), ("kl_latent", l_hat)):
        q = torch.softmax(t, -1)
        torch.testing.assert_close(aux[name], (p * (p.log() - q.log())).sum(-1).mean())
    ce = F.cross_entropy(m.backbone.score(fused), b.targets)
    expected = ce + 0.5 * (0.3 * aux["kl_explicit"] + 2.0 * aux["kl_latent"])
    torch.manual_seed(1)
    torch.testing.assert_close(m.loss(b), expected)
    # no auxiliary loss at evaluation time, and no text dropout
    m.eval()
    assert m.fuse(m.backbone.encode(b), b)[1] == {}


def test_text_dropout_is_applied_before_the_projection(tiny):
    m = make(tiny, text_dropout=0.5).train()
    b = batch()
    out = m.backbone.encode(b)
    torch.manual_seed(3)
    fused, _ = m.fuse(out, b)
    torch.manual_seed(3)
    dropped = {g: F.dropout(m.feature(g, b.example_ids), 0.5, True) for g in ("explicit", "latent")}
    expected = m.fusion(torch.cat([out.session, *(m.text_proj(dropped[g]) for g in ("explicit", "latent"))], 1))
    torch.testing.assert_close(fused.session, expected)


@pytest.mark.parametrize("alignment", ["kl", "infonce", "contrastive", "directau", "none"])
def test_alignment_switch(tiny, alignment):
    m = make(tiny, alignment=alignment, text_dropout=0.0).train()
    b = batch()
    out = m.backbone.encode(b)
    _, aux = m.fuse(out, b)
    if alignment == "none":
        assert aux == {} and m.extra_loss(aux) is None
        return
    assert set(aux) == {f"{alignment}_explicit", f"{alignment}_latent"}
    t = m.text_proj(m.feature("latent", b.example_ids))
    torch.testing.assert_close(aux[f"{alignment}_latent"], ALIGNMENTS[alignment](out.session, t))
    torch.testing.assert_close(m.extra_loss(aux), 0.7 * (aux[f"{alignment}_explicit"] + aux[f"{alignment}_latent"]))


def test_ablations_drop_a_group_from_fusion_and_loss(tiny):
    b = batch()
    wo_explicit = make(tiny, use_explicit=False).train()
    assert wo_explicit.feature_names() == ("latent",) and wo_explicit.fusion.in_features == 2 * 16
    assert set(wo_explicit.fuse(wo_explicit.backbone.encode(b), b)[1]) == {"kl_latent"}
    wo_latent = make(tiny, use_latent=False).train()
    assert wo_latent.feature_names() == ("explicit",)
    assert set(wo_latent.fuse(wo_latent.backbone.encode(b), b)[1]) == {"kl_explicit"}
    assert make(tiny, beta=0.0).extra_loss({"kl_latent": torch.tensor(1.0)}) is None
    with pytest.raises(ConfigError, match="w/o semantic"):
        make(tiny, use_explicit=False, use_latent=False)
    with pytest.raises(ConfigError, match="unknown key 'gamma'"):
        make(tiny, gamma=1)
    with pytest.raises(ConfigError, match="alignment"):
        make(tiny, alignment="cosine")
    with pytest.raises(ConfigError, match="needs llm="):
        make(tiny, source="llm")
    with pytest.raises(ConfigError, match="candidate_folds"):
        make(tiny, candidate_folds=1)
    with pytest.raises(ConfigError, match="candidate_train"):
        make(tiny, candidate_train={"nope": 1})


@pytest.mark.parametrize("backbone", BACKBONES.names())
def test_fusion_shapes_and_gradients_for_every_backbone(tiny, backbone):
    m = make(tiny, backbone=backbone, backbone_config={}).train()
    b = batch()
    out = m.encode(b)
    assert out.session.shape == (b.size, m.dim)
    assert m(b).shape == (b.size, tiny.num_items)
    # backbone parameters behind the session vector s must learn through the fusion and alignment
    session = m.backbone.encode(b).session
    trainable = any(p.requires_grad for p in m.backbone.parameters())
    assert session.requires_grad == trainable  # a backbone with nothing to train (fixed vectors) feeds none
    if trainable:
        session.sum().backward()
    feeding = {n for n, p in m.backbone.named_parameters() if p.grad is not None and torch.any(p.grad != 0)}
    assert bool(feeding) == trainable
    m.zero_grad(set_to_none=True)
    loss = m.loss(b)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = dict(m.named_parameters())
    for name, p in grads.items():
        if not name.startswith("backbone."):
            assert p.grad is not None and torch.any(p.grad != 0), name
    starved = [
        n for n in feeding if grads["backbone." + n].grad is None or not torch.any(grads["backbone." + n].grad != 0)
    ]
    assert not starved


# ----------------------------------------------------------------------------- the llm source


def _store_answers(dataset, store_path: Path, llm_path: Path, answers: dict[int, str]) -> dict[str, str]:
    from intentrec.semantic.llm import resolve_llm_identity
    from intentrec.semantic.prompts import get_template
    from intentrec.semantic.store import AnswerRecord, AnswerStore, answer_key, dataset_fingerprint

    identity = resolve_llm_identity(str(llm_path))
    version = get_template("dmsrec").version
    records, links = [], []
    for eid, text in answers.items():
        key = answer_key(identity["backend"], identity["model_sha256"], {}, version, f"prompt {eid}")
        records.append(
            AnswerRecord(
                key,
                identity["backend"],
                identity["model"],
                identity["model_sha256"],
                "dmsrec",
                version,
                "{}",
                f"prompt {eid}",
                text,
            )
        )
        links.append((eid, key))
    with AnswerStore(store_path) as store:
        store.put_many(records)
        store.link_examples(dataset_fingerprint(dataset.path), "dmsrec", identity["model_sha256"], links)
    return identity


def test_llm_source_splits_answers_and_refuses_uncovered_examples(tmp_path):
    from intentrec.semantic.encoders import get_encoder
    from intentrec.semantic.prompts import get_template
    from intentrec.training import train

    dataset = write_tiny_dataset(tmp_path / "ds")
    llm_path = tmp_path / "fake.gguf"
    llm_path.write_bytes(b"not a real model")
    # Answers of several shapes: a clicked title with an echoed id and an unclicked one; only clicked
    # titles (latent copies explicit); only unclicked ones (explicit copies latent); a shared answer.
    answers, prefixes = {}, {}
    for split in ("train", "valid", "test"):
        ex = dataset.examples(split)
        for row, eid in enumerate(ex.example_ids.tolist()):
            prefix = ex.prefix(row).tolist()
            prefixes[eid] = prefix
            unclicked = [i for i in range(1, 31) if i not in prefix]
            last = prefix[-1]
            answers[eid] = [
                f"Item number {last}_item{last}; item NUMBER {unclicked[0]}",
                f"Item number {last}; Item number {prefix[0]}",
                f"Item number {unclicked[1]}; Item number {unclicked[2]}",
                "Item number 30; Item number 1",
            ][eid % 4]
    train_ids = dataset.examples("train").example_ids
    skipped = train_ids[:3].tolist()
    for eid in skipped:
        answers.pop(eid)
    answers[int(train_ids[3])] = "!!!"  # unusable
    store_path = tmp_path / "answers.sqlite"
    identity = _store_answers(dataset, store_path, llm_path, answers)

    encoder = get_encoder(ENCODER)
    tables = llm_tables(dataset.path, encoder, llm_identity=identity, store_path=store_path)
    explicit, latent = tables["explicit"], tables["latent"]
    coverage = explicit.info["coverage"]
    assert coverage["missing"] == 3 and coverage["unusable"] == 1
    assert coverage["with_intent"] == coverage["examples"] - 4
    assert coverage["latent_copied_from_explicit"] > 0 and coverage["explicit_copied_from_latent"] > 0
    assert explicit.coverage(np.array(skipped)).tolist() == [False, False, False]
    # the vectorised tables agree with split_intents applied example by example
    titles, item_ids = dataset.titles(), dataset.item_ids()
    template = get_template("dmsrec")
    for eid, text in answers.items():
        pos = explicit.positions(np.array([eid]))[0]
        pieces = template.parse(text).texts
        if not pieces:
            assert not explicit.present[pos]
            continue
        e, lat = split_intents(pieces, [titles[i - 1] for i in prefixes[eid]], [item_ids[i - 1] for i in prefixes[eid]])
        np.testing.assert_allclose(
            explicit.vectors[pos], encoder.encode(e, normalize=True).mean(0), rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            latent.vectors[pos], encoder.encode(lat, normalize=True).mean(0), rtol=1e-5, atol=1e-6
        )

    config = {"source": "llm", "llm": str(llm_path), "store": str(store_path), "encoder": ENCODER}
    with pytest.raises(DataError, match="have no text features"):
        train(
            dataset.path,
            "srgnn",
            {"embedding_dim": 8},
            {"epochs": 1},
            out=tmp_path / "refused",
            method="dmsrec",
            method_config=config,
            progress=False,
        )
    result = train(
        dataset.path,
        "srgnn",
        {"embedding_dim": 8},
        {"epochs": 1},
        out=tmp_path / "run",
        method="dmsrec",
        method_config={**config, "restrict_to_covered": True},
        progress=False,
    )
    semantic = result.metrics["semantic"]
    assert semantic["source"] == "llm"
    assert semantic["examples_used"]["train"] == semantic["examples_total"]["train"] - 4
    assert semantic["features"]["explicit"]["llm"]["model_sha256"] == identity["model_sha256"]


# ----------------------------------------------------------------------------- end to end


def test_end_to_end_titles_source_over_srgnn(tiny, tmp_path):
    from typer.testing import CliRunner

    from intentrec.cli.main import app
    from intentrec.data.candidates import candidates_path

    config = {
        "encoder": ENCODER,
        "candidate_epochs": 1,
        "candidate_model_config": {"embedding_dim": 8},
        "candidate_work_dir": str(tmp_path / "cand"),
        "candidate_top": 10,
        "latent_top": 3,
    }
    from intentrec.training import train
    from intentrec.training.candidates import build_declared_candidates

    # prepare() never trains: without the candidate file, training stops and names the command that builds it
    with pytest.raises(
        DataError, match="candidate file this run reads is missing; build it first with\n  intentrec candidates "
    ):
        train(
            tiny.path,
            "srgnn",
            {"embedding_dim": 16},
            {"epochs": 2},
            out=tmp_path / "run",
            method="dmsrec",
            method_config=config,
            progress=False,
        )
    assert not candidates_path(tiny.path, "gcegnn", 2).exists()
    built = build_declared_candidates(tiny.path, "srgnn", {"embedding_dim": 16}, "dmsrec", config, progress=False)
    assert built is not None and built.path == candidates_path(tiny.path, "gcegnn", 2)
    result = train(
        tiny.path,
        "srgnn",
        {"embedding_dim": 16},
        {"epochs": 2},
        out=tmp_path / "run",
        method="dmsrec",
        method_config=config,
        progress=False,
    )
    # a file built with other settings than the run declares is refused, never used silently
    with pytest.raises(DataError, match=r"built with other settings \(trainer differ\)"):
        train(
            tiny.path,
            "srgnn",
            {"embedding_dim": 16},
            {"epochs": 2},
            out=tmp_path / "other",
            method="dmsrec",
            method_config={**config, "candidate_epochs": 2},
            progress=False,
        )
    semantic = result.metrics["semantic"]
    assert semantic["source"] == "titles" and semantic["alignment"] == "kl"
    assert semantic["views"] == ["explicit", "latent"]
    assert semantic["examples_used"] == semantic["examples_total"]
    cands = semantic["candidates"]
    assert cands["leaky"] is False and cands["model"] == "gcegnn"
    assert cands["file"] == str(candidates_path(tiny.path, "gcegnn", 2))
    assert set(cands["runs"]) == {"fold-0", "fold-1", "all"}
    assert semantic["features"]["explicit"]["latent_top"] == 3
    assert 0.0 <= result.test["HR@20"] <= 1.0 and result.epochs_run == 2
    # evaluate re-attaches the features (candidate file reused, nothing retrained) and reproduces the test metrics
    report = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run"), "--json"])
    assert report.exit_code == 0, report.output
    assert json.loads(report.output)["metrics"]["HR@20"] == pytest.approx(result.test["HR@20"])
