"""The LLM as the recommender (``intentrec.evaluation.llm_ranker``, ``intentrec llm-rank``).

Exact ranks by cosine (ties against the target), unusable answers at the worst rank and counted,
the two-call chains with a scripted LLM (the second call sees the first's rationale; a rerun makes no
call), FSCoT's example rationales, ``intentrec evaluate --sample``, and one end-to-end run of every
baseline with the real SmolLM2.
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar

import numpy as np
import pytest
from typer.testing import CliRunner

from intentrec.cli.main import app, main
from intentrec.config import Config
from intentrec.data.dataset import PreparedDataset
from intentrec.evaluation import rank_examples
from intentrec.evaluation.llm_ranker import (
    BASELINES,
    EXAMPLE_RATIONALE_TEMPLATE,
    cosine_ranks,
    llm_ranking,
    parsed_answers,
    rank_titles,
    sampled_example_ids,
    sampled_rows,
)
from intentrec.semantic.encoders import TextEncoder
from intentrec.semantic.infer import few_shot_rows, select_rows
from intentrec.semantic.llm.base import DecodingConfig, Generation, LLMBackend
from intentrec.semantic.store import AnswerRecord, AnswerStore, dataset_fingerprint
from tests.helpers.llm import require_smollm2
from tests.helpers.semantic import LLM_TITLES, SESSIONS, TITLES, llm_sessions, write_dataset

N_ITEMS = len(TITLES)  # 8; item 7 has no title, so its text is "item B0000000007"
ITEM_TEXTS = [t or f"item B{i:09d}" for i, t in enumerate(TITLES, 1)]


class OneHotEncoder(TextEncoder):
    """Item text c -> unit vector e_c; any other text -> e_N (orthogonal to every item). Counts texts."""

    config_class: ClassVar[type[Config]] = Config
    dim = N_ITEMS + 1

    def __init__(self) -> None:
        self.encoded: list[str] = []

    def encode(self, texts, *, normalize=False, batch_size=64):
        self.encoded.extend(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for r, text in enumerate(texts):
            out[r, ITEM_TEXTS.index(text) if text in ITEM_TEXTS else N_ITEMS] = 1.0
        return out

    def identity(self) -> dict[str, Any]:
        return {"backend": "test-one-hot", "model": "one-hot", "dim": self.dim}


_LAST_ITEM = re.compile(r"^\d+\. .*?\[ID: B0*(\d+)\]$", re.M)
_RATIONALE = re.compile(r"What the user is looking for: the user wants item (\d+) next\.")


class ChainLLM(LLMBackend):
    """A scripted model. Rationale calls say which item comes next (last + 1), except after item 4
    (an unusable "???"); title calls of a chain answer the item their rationale names; one-call
    prompts answer item last + 1 directly. Item 7 (no title) is answered with "!!!"."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def identity(self):
        return {"backend": "scripted", "model": "chain", "model_sha256": "1" * 64}

    def generate(self, prompts, decoding, on_result=None):
        out = []
        for i, messages in enumerate(prompts):
            user = messages[-1]["content"]
            self.prompts.append(user)
            g = Generation(self.answer(user), prompt_tokens=10, completion_tokens=3, seconds=0.01)
            out.append(g)
            if on_result:
                on_result(i, g)
        return out

    @staticmethod
    def title(k: int) -> str:
        return "!!!" if k == 7 else TITLES[k - 1]

    def answer(self, user: str) -> str:
        tail = user.rsplit("Session:\n", 1)[1]  # the session asked about, after any examples
        last = int(_LAST_ITEM.findall(tail)[-1])
        if "explain what the user is looking for" in tail:
            return "???" if last == 4 else f"Reasoning: the user wants item {last + 1} next."
        if "What the user is looking for:" in tail:
            seen = _RATIONALE.search(tail)
            return self.title(int(seen.group(1))) if seen else "no rationale"
        return f"Answer: {self.title(last + 1)}"


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("INTENTREC_HOME", str(tmp_path / "home"))


@pytest.fixture
def dataset(tmp_path):
    return write_dataset(tmp_path / "ds", SESSIONS)


@pytest.fixture
def store(tmp_path):
    with AnswerStore(tmp_path / "answers.sqlite") as s:
        yield s


def _targets(dataset):
    return PreparedDataset(dataset).examples("test").targets.tolist()


# -- exact ranks --------------------------------------------------------------------------------
def test_cosine_ranks_are_exact_and_ties_count_against_the_target():
    catalogue = np.eye(4, dtype=np.float32)[[0, 1, 1, 2]]  # rows 1 and 2 are the same vector
    query = np.eye(4, dtype=np.float32)[[0, 1, 1, 0, 3]]
    ranks = cosine_ranks(query, np.array([0, 1, 2, 3, 0]), catalogue)
    # e0 -> row 0 alone at 1; e1 -> rows 1 and 2 tie at the top: rank 2 for either; e0 vs row 3
    # (score 0, tied with rows 1-3): worst; a query orthogonal to everything: all tie, worst
    assert ranks.tolist() == [1, 2, 2, 4, 4]
    rng = np.random.default_rng(0)
    items = rng.normal(size=(300, 16)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    vecs = items[rng.integers(0, 300, 50)] + 0.5 * rng.normal(size=(50, 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    targets = rng.integers(0, 300, 50)
    scores = vecs @ items.T
    brute = (scores >= scores[np.arange(50), targets][:, None]).sum(1)
    assert cosine_ranks(vecs, targets, items).tolist() == brute.tolist()


def test_rank_titles_encodes_each_title_once_and_puts_missing_ones_last(tmp_path):
    encoder = OneHotEncoder()
    catalogue = encoder.encode(ITEM_TEXTS, normalize=True)
    encoder.encoded.clear()
    titles = [TITLES[1], None, TITLES[1], "something else", TITLES[7]]
    ranks = rank_titles(titles, np.array([1, 0, 3, 2, 7]), catalogue, encoder, cache_root=tmp_path / "emb")
    assert ranks.tolist() == [1, N_ITEMS, N_ITEMS, N_ITEMS, 1]
    assert sorted(encoder.encoded) == sorted({TITLES[1], "something else", TITLES[7]})


def test_parsed_answers_says_missing_stale_and_unparseable(dataset, store):
    fp = dataset_fingerprint(dataset)
    ids = PreparedDataset(dataset).examples("test").example_ids[:3].tolist()
    base = dict(backend="b", model="m", model_sha256="2" * 64, template="semsr-fs", decoding_json="{}", prompt="p")
    store.put_many(
        [
            AnswerRecord(key="old", template_version="1", answer="Answer: Mascara", **base),
            AnswerRecord(key="bad", template_version="2", answer="!!!", **base),
        ]
    )
    store.link_examples(fp, "semsr-fs", "2" * 64, [(ids[0], "old"), (ids[1], "bad")])
    got = parsed_answers(store, fp, "semsr-fs", "2" * 64, ids)
    assert got.statuses == ["stale", "garbage", "missing"] and got.texts == [None, None, None]


# -- the baselines with a scripted LLM ------------------------------------------------------------
def _run(dataset, store, baseline, llm, encoder, **kw):
    return llm_ranking(
        dataset, baseline=baseline, llm=llm, encoder=encoder, sample=None, store=store, progress=False, **kw
    )


def test_fs_ranks_every_example_exactly_and_counts_the_unusable(dataset, store):
    llm = ChainLLM()
    report = _run(dataset, store, "fs", llm, OneHotEncoder(), ks=(1, 5))
    # answer = item last+1: right unless the session jumps; [4,5,6] -> item 7 -> "!!!" (garbage)
    # targets: 2 3 8 | 2 5 | 5 6 7 8 | 2 3 8 ; answers: 2 3 4 | 2 3 | 5 6 !!! 8 | 2 3 4
    expected = [1, 1, 8, 1, 8, 1, 1, 8, 1, 1, 1, 8]
    assert report["counts"] == {
        "examples": 12, "ranked": 11, "missing": 0, "stale": 0, "empty": 0, "garbage": 1, "no_rationale": 0,
        "unranked": 1,
    }  # fmt: skip
    assert report["metrics"]["HR@1"] == pytest.approx(np.mean([r <= 1 for r in expected]))
    assert report["metrics"]["MRR@5"] == pytest.approx(np.mean([1 / r if r <= 5 else 0 for r in expected]))
    assert report["worst_rank"] == N_ITEMS and report["generated"] == 7  # 7 distinct prefixes
    assert all(p.startswith("Example 1.") for p in llm.prompts)
    ds = PreparedDataset(dataset)
    assert report["few_shot"]["example_ids"] == ds.examples("train").example_ids[few_shot_rows(ds, 3)].tolist()
    assert report["sample"]["example_ids"] == ds.examples("test").example_ids.tolist()
    answered = [2, 3, 4, 2, 3, 5, 6, 8, 2, 3, 4]  # the items named by the 11 usable answers
    shots = {int(t) for t in ds.examples("train").targets[few_shot_rows(ds, 3)]}  # items 3, 4, 7: 5 copies
    assert report["answers"] == {
        "distinct_titles": 6,
        "most_common_title_share": round(3 / 11, 4),
        "copied_example_answer": sum(a in shots for a in answered),  # = 5
    }


def test_answer_diversity_counts_repeats_and_copied_example_answers():
    from intentrec.evaluation.llm_ranker import answer_diversity

    got = answer_diversity(["Gel, 8 oz", "gel,  8 OZ", None, "Soap", "Gel, 8 oz"], ["Gel, 8 oz", "Brush"])
    assert got == {"distinct_titles": 2, "most_common_title_share": 0.75, "copied_example_answer": 3}
    assert answer_diversity([None, None], []) == {
        "distinct_titles": 0,
        "most_common_title_share": 0.0,
        "copied_example_answer": 0,
    }


def test_zcot_second_call_sees_the_rationale_and_a_rerun_makes_no_call(dataset, store):
    llm = ChainLLM()
    report = _run(dataset, store, "zcot", llm, OneHotEncoder(), ks=(1,))
    rationale_prompts = [p for p in llm.prompts if "explain what the user" in p]
    title_prompts = [p for p in llm.prompts if "What the user is looking for:" in p]
    assert len(rationale_prompts) == 7 and len(title_prompts) == 6  # [4] got "???": no second call
    assert all(_RATIONALE.search(p) for p in title_prompts)  # the first call's parsed rationale
    assert report["generated"] == 13 and [s["template"] for s in report["steps"]] == list(BASELINES["zcot"])
    assert report["counts"]["no_rationale"] == 1 and report["counts"]["garbage"] == 1
    assert report["counts"]["ranked"] == 10 and report["counts"]["rationales"] == {"garbage": 1, "ok": 11}
    assert report["metrics"]["HR@1"] == pytest.approx(7 / 12)

    again = ChainLLM()
    rerun = _run(dataset, store, "zcot", again, OneHotEncoder(), ks=(1,))
    assert again.prompts == [] and rerun["generated"] == 0 and rerun["already_stored"] == 13
    assert rerun["metrics"] == report["metrics"] and rerun["counts"] == report["counts"]
    assert store.stats()["answers"] == 13


def test_fscot_shows_worked_examples_with_rationales_from_the_same_model(dataset, store):
    llm = ChainLLM()
    report = _run(dataset, store, "fscot", llm, OneHotEncoder(), ks=(1,))
    ds = PreparedDataset(dataset)
    shot_ids = ds.examples("train").example_ids[few_shot_rows(ds, 3)].tolist()
    assert report["few_shot"]["example_ids"] == shot_ids and report["few_shot"]["with_rationale"] == 3
    assert [s["template"] for s in report["steps"]] == [EXAMPLE_RATIONALE_TEMPLATE, *BASELINES["fscot"]]
    assert report["steps"][0]["split"] == "train" and report["steps"][0]["generated"] == 3
    example_calls = llm.prompts[:3]
    assert not any("Example 1." in p for p in example_calls)  # the examples' rationales are zero-shot
    later = llm.prompts[3:]
    assert len(later) == 13 and all("Example 1." in p for p in later)
    # train few-shot sessions [1,2], [1,2,3], [5,6]: their rationales and, in title prompts, targets
    titles = [p for p in later if "Predict the title" in p]
    assert all("the user wants item 3 next.\nAnswer: " + TITLES[2] in p for p in titles)
    fp = dataset_fingerprint(dataset)
    linked = store.answers_for_examples(fp, EXAMPLE_RATIONALE_TEMPLATE, "1" * 64, shot_ids)
    assert sorted(linked) == sorted(shot_ids)
    assert report["counts"]["ranked"] == 10 and report["metrics"]["HR@1"] == pytest.approx(7 / 12)
    assert _run(dataset, store, "fscot", ChainLLM(), OneHotEncoder())["generated"] == 0


def test_sample_is_the_rows_of_infer_and_bad_input_is_refused(dataset, store):
    rows = sampled_rows(dataset, sample=5, seed=3)
    assert rows.tolist() == select_rows(12, limit=None, sample=5, seed=3).tolist()
    ids = sampled_example_ids(dataset, sample=5, seed=3)
    report = llm_ranking(
        dataset, baseline="fs", llm=ChainLLM(), encoder=OneHotEncoder(), sample=5, seed=3, store=store, progress=False
    )
    assert report["sample"]["example_ids"] == ids.tolist() and report["counts"]["examples"] == 5
    assert report["evaluate_same_sample"] == "intentrec evaluate RUN --split test --sample 5 --seed 3"
    from intentrec.errors import ConfigError

    with pytest.raises(ConfigError, match="fs, zcot, fscot"):
        llm_ranking(dataset, baseline="cot", llm=ChainLLM(), encoder=OneHotEncoder(), store=store)
    with pytest.raises(ConfigError, match="max_exampels"):
        llm_ranking(dataset, llm=ChainLLM(), encoder=OneHotEncoder(), store=store, template_options={"max_exampels": 2})


# -- a trained run on the same sample ------------------------------------------------------------
def test_evaluate_sample_scores_a_trained_run_on_the_same_examples(tmp_path):
    from intentrec.training import load_run
    from tests.helpers.tinyrun import TEST_BACKBONE, write_tiny_dataset

    data = write_tiny_dataset(tmp_path / "tiny")
    run = tmp_path / "run"
    runner = CliRunner()
    fast = ["--set", "epochs=1", "--set", "num_threads=1", "--set", "model.embedding_dim=8"]
    result = runner.invoke(app, ["train", str(data), "--model", TEST_BACKBONE, "--out", str(run), *fast])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["evaluate", str(run), "--sample", "7", "--seed", "2", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    ids = sampled_example_ids(data, sample=7, seed=2)
    assert report["examples"] == 7 and report["sample"]["example_ids"] == ids.tolist()
    trained = load_run(run)
    subset = trained.dataset.examples("test").subset(sampled_rows(data, sample=7, seed=2))
    cfg = trained.trainer
    ranked = rank_examples(trained.model, subset, batch_size=cfg.eval_batch_size, max_length=cfg.max_length)
    assert report["metrics"] == ranked.metrics(cfg.ks)
    full = json.loads(runner.invoke(app, ["evaluate", str(run), "--json"]).output)
    assert "sample" not in full and full["examples"] > 7


def test_cli_help_and_usage_errors():
    runner = CliRunner()
    result = runner.invoke(app, ["llm-rank", "--help"])
    assert result.exit_code == 0 and "--baseline" in result.output and "intentrec evaluate RUN" in result.output
    result = runner.invoke(app, ["llm-rank", "x", "--baseline", "cot"])
    assert result.exit_code == 2


# -- the real SmolLM2 --------------------------------------------------------------------------
def test_every_baseline_end_to_end_with_smollm2(tmp_path, monkeypatch, capsys):
    require_smollm2()
    from intentrec.semantic.llm import get_llm

    data = write_dataset(tmp_path / "tiny", {"train": llm_sessions(3, 4), "test": llm_sessions(4, 5)}, LLM_TITLES)
    store_path = tmp_path / "answers.sqlite"
    title, rationale = DecodingConfig(max_tokens=16), DecodingConfig(max_tokens=32)
    fp = dataset_fingerprint(data)
    reports = {}
    with get_llm("smollm2", n_parallel=1) as llm, AnswerStore(store_path) as store:
        for baseline in BASELINES:
            report = llm_ranking(
                data, baseline=baseline, llm=llm, encoder="minilm", sample=2, seed=0, store=store,
                decoding=title, rationale_decoding=rationale, progress=False,
            )  # fmt: skip
            reports[baseline] = report
            assert report["num_items"] == len(LLM_TITLES) and report["counts"]["examples"] == 2
            assert report["generated"] > 0 and report["prompts_per_second"] > 0
            assert all(0.0 <= v <= 1.0 for v in report["metrics"].values())
            assert report["counts"]["ranked"] + report["counts"]["unranked"] == 2
            ids = report["sample"]["example_ids"]
            first = store.answers_for_examples(fp, report["templates"][0], llm.identity()["model_sha256"], ids)
            assert sorted(first) == sorted(ids) and all(r.model == "smollm2" for r in first.values())
        shots = reports["fscot"]["few_shot"]["example_ids"]
        linked = store.answers_for_examples(fp, EXAMPLE_RATIONALE_TEMPLATE, llm.identity()["model_sha256"], shots)
        assert sorted(linked) == sorted(shots)
    # the command, same settings and store: everything is stored, nothing is generated
    argv = ["intentrec", "llm-rank", str(data), "--baseline", "zcot", "--llm", "smollm2", "--sample", "2"]
    argv += ["--store", str(store_path), "--set", "max_tokens=16", "--rationale-set", "max_tokens=32", "--json"]
    monkeypatch.setattr("sys.argv", argv)
    main()
    out = json.loads(capsys.readouterr().out)
    assert out["generated"] == 0 and out["metrics"] == reports["zcot"]["metrics"]
