"""Intent distillation: teacher answers → localized targets → student → ``method.source=distilled``.

A teacher double (``tests.helpers.distill.TitleTeacher``) and a tiny BERT keep the logic tests fast;
one test runs the real SmolLM2 model end to end. The ``intentrec distill`` command is tested in
tests/cli/test_cli_distill.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from intentrec.data.batch import SessionBatch
from intentrec.data.dataset import PreparedDataset, all_examples
from intentrec.errors import ConfigError
from intentrec.models.methods.llm4sbr_distill import (
    StudentConfig,
    distill,
    distilled_views,
    holdout_mask,
    load_student,
    run_teacher,
)
from intentrec.semantic.encoders import get_encoder
from intentrec.semantic.infer import select_rows
from intentrec.semantic.intents import compute_intents, load_intents
from intentrec.semantic.store import AnswerStore
from tests.helpers.distill import TitleTeacher, make_title_bert
from tests.helpers.semantic import LLM_TITLES, llm_sessions, write_dataset

SESSIONS = {"train": llm_sessions(24, 5), "valid": llm_sessions(4, 4), "test": llm_sessions(4, 4)}
FAST = {"epochs": 40, "patience": 15, "hidden": 32, "attention": 16}


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTENTREC_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> str:
    return f"hf:{make_title_bert(tmp_path_factory.mktemp('title-bert'))}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, bert):
    """One distilled student on a tiny dataset, shared by the tests that only read it."""
    base = tmp_path_factory.mktemp("distill")
    data = write_dataset(base / "ds", SESSIONS, LLM_TITLES)
    teacher = TitleTeacher()
    result = distill(
        data,
        llm=teacher,
        sample=60,
        seed=0,
        out=base / "student",
        encoder=bert,
        config=StudentConfig(**FAST),
        store_path=base / "answers.sqlite",
        progress=False,
    )
    return {"data": data, "result": result, "teacher": teacher, "base": base}


def test_student_folder_identity_and_teacher_targets(trained, bert):
    result, data, base = trained["result"], trained["data"], trained["base"]
    ident = result.identity
    files = sorted(p.name for p in result.folder.iterdir())
    assert "student.json" in files and "student.safetensors" in files
    assert "teacher.llm4sbr-long.safetensors" in files and "teacher.llm4sbr-short.safetensors" in files
    assert not [p for p in base.iterdir() if p.name.startswith(".student.")]  # no staging folder left
    assert ident["teacher"]["model"] == "title-teacher" and ident["views"] == ["long", "short"]
    assert ident["sample"] == {"split": "train", "size": 60, "seed": 0}
    assert ident["templates"]["long"]["name"] == "llm4sbr-long" and ident["k"] == 3 and ident["window"] == 20
    ex = ident["examples"]
    assert ex["sampled"] == ex["with_targets"] == ex["fit"] + ex["held_out"] == 60 and ex["held_out"] > 0
    # every distinct prompt of the sample was asked once per view
    assert len(trained["teacher"].asked) == len(set(trained["teacher"].asked))
    assert sum(r["generated"] for r in ident["teacher_reports"].values()) == len(trained["teacher"].asked)

    # the targets are exactly what the llm source computes from the same stored answers
    encoder = get_encoder(bert)
    with AnswerStore(base / "answers.sqlite") as store:
        ref = compute_intents(
            data,
            template="llm4sbr-long",
            llm_identity=ident["teacher"],
            encoder=encoder,
            k=3,
            split="train",
            store=store,
            out=base / "ref.safetensors",
        )
    stored, _ = load_intents(result.folder / "teacher.llm4sbr-long.safetensors")
    np.testing.assert_array_equal(stored["vectors"], ref.vectors)
    rows = select_rows(len(PreparedDataset(data).examples("train")), limit=None, sample=60, seed=0)
    assert ref.has_intent[rows].all() and ref.has_intent.sum() == 60

    # selection on held-out teacher answers: the kept epoch is the best one seen, and beats the start
    history = [h["held_out_cosine"] for h in ident["history"]]
    held = ident["held_out_cosine"]["student"]
    assert held["mean"] == pytest.approx(max(history)) and max(history) > history[0]
    assert held["mean"] > ident["held_out_cosine"]["titles"]["mean"]


def test_holdout_keeps_sessions_whole():
    sessions = np.array([0, 0, 0, 1, 1, 2, 3, 3, 4, 5])
    mask = holdout_mask(sessions, 0.34, seed=3)
    for s in np.unique(sessions):
        assert len(set(mask[sessions == s].tolist())) == 1
    assert mask.any() and not mask.all()
    np.testing.assert_array_equal(mask, holdout_mask(sessions, 0.34, seed=3))


def test_distilled_source_trains_evaluates_and_serves(trained, bert, tmp_path):
    from intentrec.models.methods import build_method
    from intentrec.models.registry import build_backbone
    from intentrec.serving.recommend import recommend
    from intentrec.training import load_run, train

    data, folder = trained["data"], trained["result"].folder
    config = {"source": "distilled", "student": str(folder), "encoder": bert, "k": 3}
    result = train(
        data, "srgnn", {"embedding_dim": 16}, {"epochs": 2}, out=tmp_path / "run", method="llm4sbr",
        method_config=config, progress=False,
    )  # fmt: skip
    dataset = PreparedDataset(data)
    semantic = result.metrics["semantic"]
    assert semantic["source"] == "distilled" and semantic["student"] == str(folder)
    # every example of every split has its views (no LLM, no coverage gap)
    assert semantic["examples_used"] == {s: len(dataset.examples(s)) for s in ("train", "valid", "test")}
    assert semantic["features"]["long"]["teacher"]["model"] == "title-teacher"
    assert 0.0 <= result.test["HR@20"] <= 1.0

    # the stored views are the student's predictions for every example
    tables, student = distilled_views(data, folder, get_encoder(bert), views=("long", "short"), k=3)
    ids, values, offsets = all_examples(dataset)
    np.testing.assert_allclose(tables["short"].vectors, student.predict(values, offsets)["short"], atol=1e-6)
    assert tables["long"].example_ids.tolist() == ids.tolist()

    # a new session needs only titles; a dataset example's prefix gets exactly its stored features
    trained_run = load_run(tmp_path / "run")
    model = trained_run.model
    assert model.capabilities()["serve"] is None and model.needs().serves_new_sessions
    recs = recommend(model, dataset, dataset.item_ids()[:2], 3)
    assert len(recs.items) == 3
    test = dataset.examples("test")
    batch = SessionBatch.from_lists([test.prefix(1).tolist()], example_ids=[int(test.example_ids[1])])
    online = model.session_features(batch)
    for view in ("long", "short"):
        torch.testing.assert_close(online[view], model.feature(view, batch.example_ids))

    # the shuffled control is refused for new sessions, with its reason
    backbone = build_backbone("srgnn", dataset.num_items, {"embedding_dim": 16})
    shuffled = build_method("llm4sbr", backbone, {**config, "shuffle_texts": True})
    shuffled.prepare(dataset)
    assert "shuffled" in shuffled.capabilities()["serve"]


def test_mismatched_student_is_one_clear_error(trained, bert, tmp_path):
    from intentrec.training import train

    folder = trained["result"].folder
    other_bert = f"hf:{make_title_bert(tmp_path / 'other-bert', seed=2)}"
    other_data = write_dataset(tmp_path / "other", {**SESSIONS, "test": llm_sessions(3, 3)}, LLM_TITLES)
    cases = [
        (trained["data"], {"encoder": other_bert, "k": 3}, "another text encoder"),
        (other_data, {"encoder": bert, "k": 3}, "another dataset"),
        (trained["data"], {"encoder": bert, "k": 2}, "k=3, method.k is 2"),
        (trained["data"], {"encoder": bert, "k": 3, "normal": True}, "has no view"),
    ]
    for i, (data, extra, message) in enumerate(cases):
        with pytest.raises(ConfigError, match=message) as exc:
            train(
                data, "srgnn", {"embedding_dim": 16}, {"epochs": 1}, out=tmp_path / f"x{i}", method="llm4sbr",
                method_config={"source": "distilled", "student": str(folder), **extra}, progress=False,
            )  # fmt: skip
        assert f"method.student={folder}" in str(exc.value)
    from intentrec.models.methods.llm4sbr import LLM4SBRConfig

    with pytest.raises(ConfigError, match="needs student="):
        LLM4SBRConfig.build({"source": "distilled"})
    with pytest.raises(ConfigError, match="only read with source=distilled"):
        LLM4SBRConfig.build({"student": str(folder)})
    with pytest.raises(ConfigError, match="unknown key 'hiden'"):
        StudentConfig.build({"hiden": 3})
    with pytest.raises(Exception, match="not a student folder"):
        load_student(tmp_path)


def test_teacher_step_resumes_after_an_interruption(tmp_path):
    data = write_dataset(tmp_path / "ds", SESSIONS, LLM_TITLES)
    views = ["long", "short"]
    with AnswerStore(tmp_path / "answers.sqlite") as store:
        killed = TitleTeacher(fail_after=10)
        with pytest.raises(KeyboardInterrupt):
            run_teacher(data, llm=killed, views=views, sample=40, seed=1, store=store, chunk_size=4, progress=False)
        # chunks of 4 prompts are committed as they finish: the 8 of the two full chunks survive
        assert store.stats()["answers"] == 8
        resumed = TitleTeacher()
        result = run_teacher(data, llm=resumed, views=views, sample=40, seed=1, store=store, progress=False)
        assert not set(resumed.asked) & set(killed.asked[:8])  # stored answers are not asked again
        total = sum(r["unique_prompts"] for r in result.reports.values())
        assert len(resumed.asked) == result.generated == total - 8
        assert all(r["covered"] == r["examples"] == 40 for r in result.reports.values())
        again = TitleTeacher()
        result = run_teacher(data, llm=again, views=views, sample=40, seed=1, store=store, progress=False)
        assert again.asked == [] and result.generated == 0


def test_no_generate_without_answers_says_what_to_run(tmp_path, bert):
    from intentrec.errors import DataError

    data = write_dataset(tmp_path / "ds", SESSIONS, LLM_TITLES)
    with pytest.raises(DataError, match="0 of the 20 sampled train examples have a usable teacher answer"):
        distill(
            data, llm=TitleTeacher(), sample=20, seed=0, out=tmp_path / "s", encoder=bert, generate=False,
            store_path=tmp_path / "answers.sqlite", progress=False,
        )  # fmt: skip
    assert not (tmp_path / "s").exists() and not list(tmp_path.glob(".s.*"))


def test_finetune_student_serves_the_same_way(trained, tmp_path):
    """kind=finetune: a Sentence-Transformers encoder (here a tiny one) fine-tuned to the targets."""
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers >= 6 moved the modules; the old path warns there
        from sentence_transformers.sentence_transformer import modules as models
    except ImportError:
        from sentence_transformers import models

    bert_dir = tmp_path / "bert"
    make_title_bert(bert_dir)
    model = SentenceTransformer(modules=[models.Transformer(str(bert_dir)), models.Pooling(16)])
    model.save(str(tmp_path / "st"))
    encoder = f"st:{tmp_path / 'st'}"
    data = trained["data"]
    config = StudentConfig(kind="finetune", finetune_epochs=2, finetune_lr=1e-3, views=["short"])
    result = distill(
        data, llm=TitleTeacher(), sample=30, seed=0, out=tmp_path / "ft", encoder=encoder, config=config,
        store_path=tmp_path / "answers.sqlite", progress=False,
    )  # fmt: skip
    assert (tmp_path / "ft" / "encoder" / "modules.json").is_file()
    assert result.identity["kind"] == "finetune" and result.identity["views"] == ["short"]
    tables, student = distilled_views(data, tmp_path / "ft", get_encoder(encoder), views=("short",), k=3)
    dataset = PreparedDataset(data)
    n = sum(len(dataset.examples(s)) for s in ("train", "valid", "test"))
    assert tables["short"].vectors.shape == (n, 16)
    norms = np.linalg.norm(tables["short"].vectors, axis=1)
    np.testing.assert_allclose(norms, result.identity["target_norm"]["short"], rtol=1e-5)


def test_real_small_llm_end_to_end(tmp_path):
    """SmolLM2 answers both views for 6 train examples; a student is trained and LLM4SBR runs on it."""
    from tests.helpers.llm import require_smollm2

    require_smollm2()
    pytest.importorskip("sentence_transformers")
    from intentrec.semantic.llm.base import DecodingConfig
    from intentrec.training import train

    data = write_dataset(tmp_path / "ds", SESSIONS, LLM_TITLES)
    kwargs = dict(
        llm="smollm2", sample=6, seed=0, out=tmp_path / "student", store_path=tmp_path / "answers.sqlite",
        decoding=DecodingConfig(max_tokens=12), llm_options={"n_parallel": 4}, progress=False,
        config=StudentConfig(**FAST),
    )  # fmt: skip
    first = distill(data, **kwargs)
    ident = first.identity
    assert ident["teacher"]["model"] == "smollm2" and ident["generated_prompts"] > 0
    assert ident["examples"]["with_targets"] >= 2
    again = distill(data, **kwargs)  # all answers stored: nothing generated, the same student
    assert again.identity["generated_prompts"] == 0
    assert again.identity["held_out_cosine"] == ident["held_out_cosine"]
    result = train(
        data, "srgnn", {"embedding_dim": 16}, {"epochs": 1}, out=tmp_path / "run", method="llm4sbr",
        method_config={"source": "distilled", "student": str(first.folder)}, progress=False,
    )  # fmt: skip
    assert result.metrics["semantic"]["features"]["short"]["teacher"]["model"] == "smollm2"
    assert 0.0 <= result.test["HR@20"] <= 1.0
