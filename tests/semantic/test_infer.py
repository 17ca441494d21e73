"""The inference engine with a scripted backend: de-duplication, resume, links, selection.

The ``intentrec infer`` command is tested in tests/cli/test_cli_infer.py.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from intentrec.errors import ConfigError, IntentrecError
from intentrec.semantic.infer import (
    is_echo,
    load_candidates,
    run_inference,
    select_rows,
)
from intentrec.semantic.llm.base import DecodingConfig, Generation, LLMBackend
from intentrec.semantic.store import AnswerStore, dataset_fingerprint
from tests.helpers.semantic import SESSIONS, write_dataset


class ScriptedLLM(LLMBackend):
    """Answers with a digest of the prompt; can fail after a number of prompts (a simulated crash)."""

    def __init__(self, fail_after: int | None = None):
        self.calls: list[list[str]] = []
        self.fail_after = fail_after
        self.answered = 0

    def identity(self):
        return {"backend": "scripted", "model": "scripted", "model_sha256": "0" * 64}

    def generate(self, prompts, decoding, on_result=None):
        self.calls.append([p[-1]["content"] for p in prompts])
        out = []
        for i, p in enumerate(prompts):
            if self.fail_after is not None and self.answered >= self.fail_after:
                raise KeyboardInterrupt("simulated crash")
            last_line = p[-1]["content"].split("The user clicked these items, oldest first:\n")[-1].split("\n")
            g = Generation(
                text=f"answer to {last_line[0][:30]} ({len(last_line)})",
                prompt_tokens=10,
                completion_tokens=3,
                seconds=0.01,
            )
            self.answered += 1
            out.append(g)
            if on_result:
                on_result(i, g)
        return out


@pytest.fixture
def dataset(tmp_path):
    return write_dataset(tmp_path / "ds", SESSIONS)


@pytest.fixture
def store(tmp_path):
    with AnswerStore(tmp_path / "answers.sqlite") as s:
        yield s


def example_ids_of(dataset) -> list[int]:
    from intentrec.data.dataset import PreparedDataset

    return PreparedDataset(dataset).examples("test").example_ids.tolist()


def _expected_unique(sessions):
    prefixes = {tuple(seq[:t]) for seq in sessions for t in range(1, len(seq))}
    return len(prefixes)


def test_deduplicates_and_links_every_example(dataset, store):
    llm = ScriptedLLM()
    report = run_inference(dataset, template="llm4sbr-short", llm=llm, store=store, progress=False, chunk_size=3)
    n_examples = sum(len(s) - 1 for s in SESSIONS["test"])  # 3 + 2 + 4 + 3 = 12
    n_unique = _expected_unique(SESSIONS["test"])  # [1],[1,2],[1,2,3],[4],[4,5],[4,5,6],[4,5,6,7] = 7
    assert (report.examples, report.unique_prompts) == (12, 7) == (n_examples, n_unique)
    assert report.generated == 7 and report.already_stored == 0 and report.covered == 12
    assert sum(len(c) for c in llm.calls) == 7  # each distinct prompt asked once
    assert [len(c) for c in llm.calls] == [3, 3, 1]  # chunks of 3
    assert store.stats()["answers"] == 7
    ids = example_ids_of(dataset)
    answers = store.answers_for_examples(dataset_fingerprint(dataset), "llm4sbr-short", "0" * 64, ids)
    assert sorted(answers) == ids
    # test examples in order: [1] [1,2] [1,2,3] | [1] [1,2] | [4] … [4,5,6,7] | [1] [1,2] [1,2,3]
    same_prefix = [(0, 3), (0, 9), (1, 4), (1, 10), (2, 11)]
    assert all(answers[ids[a]].key == answers[ids[b]].key for a, b in same_prefix)
    assert answers[ids[0]].key != answers[ids[1]].key


def test_second_run_generates_nothing(dataset, store):
    run_inference(dataset, template="llm4sbr-short", llm=ScriptedLLM(), store=store, progress=False)
    again = ScriptedLLM()
    report = run_inference(dataset, template="llm4sbr-short", llm=again, store=store, progress=False)
    assert again.calls == [] and report.generated == 0 and report.already_stored == 7 and report.coverage == 1.0


def test_crash_loses_only_the_chunk_in_flight_and_resume_completes(dataset, store, tmp_path):
    crashing = ScriptedLLM(fail_after=5)  # dies inside the second chunk of 3
    with pytest.raises(KeyboardInterrupt):
        run_inference(dataset, template="llm4sbr-short", llm=crashing, store=store, progress=False, chunk_size=3)
    assert store.stats()["answers"] == 3  # first chunk committed, second lost
    resumed = ScriptedLLM()
    report = run_inference(dataset, template="llm4sbr-short", llm=resumed, store=store, progress=False, chunk_size=3)
    assert sum(len(c) for c in resumed.calls) == 4 and report.already_stored == 3 and report.covered == 12
    with AnswerStore(tmp_path / "clean.sqlite") as clean:
        run_inference(dataset, template="llm4sbr-short", llm=ScriptedLLM(), store=clean, progress=False)

        def dump(s):
            fp = dataset_fingerprint(dataset)
            got = s.answers_for_examples(fp, "llm4sbr-short", "0" * 64, example_ids_of(dataset))
            return {e: (r.key, r.answer) for e, r in got.items()}

        assert len(dump(store)) == 12
        assert dump(store) == dump(clean)
        assert store.stats()["answers"] == clean.stats()["answers"] == 7


def test_limit_sample_and_split_selection(dataset, store):
    assert select_rows(10, limit=3, sample=None, seed=0).tolist() == [0, 1, 2]
    a = select_rows(100, limit=None, sample=5, seed=1)
    assert (
        len(a) == 5
        and a.tolist() == sorted(set(a.tolist()))
        and select_rows(100, limit=None, sample=5, seed=1).tolist() == a.tolist()
    )
    with pytest.raises(ConfigError):
        select_rows(10, limit=1, sample=1, seed=0)
    report = run_inference(
        dataset, template="llm4sbr-short", llm=ScriptedLLM(), store=store, progress=False, split="train", limit=4
    )
    assert report.examples == 4 and report.split == "train" and report.unique_prompts == 4


def test_dry_run_counts_without_a_backend(dataset, store):
    report = run_inference(
        dataset,
        template="llm4sbr-long",
        llm="http://127.0.0.1:9/v1#nothing-listens",
        store=store,
        progress=False,
        dry_run=True,
    )
    assert (report.examples, report.unique_prompts, report.generated, report.covered) == (12, 7, 0, 0)
    assert report.backend == "openai" and len(report.missing_example_ids) == 12


def test_dmsrec_needs_candidates_and_uses_them(dataset, store, tmp_path):
    with pytest.raises(ConfigError, match="--candidates"):
        run_inference(dataset, template="dmsrec", llm=ScriptedLLM(), store=store, progress=False)
    path = tmp_path / "cands.parquet"
    ids = example_ids_of(dataset)
    pq.write_table(pa.table({"example_id": ids, "candidates": [[8, 7, 6]] * 11 + [[99]]}), path)
    with pytest.raises(IntentrecError, match=f"example {ids[-1]}.*99"):
        run_inference(
            dataset, template="dmsrec", llm=ScriptedLLM(), store=store, progress=False, candidates=load_candidates(path)
        )
    pq.write_table(pa.table({"example_id": ids, "candidates": [[8, 7, 6]] * 12}), path)
    llm = ScriptedLLM()
    report = run_inference(
        dataset, template="dmsrec", llm=llm, store=store, progress=False, candidates=load_candidates(path)
    )
    assert report.covered == 12 and "Vitamin C Serum" in llm.calls[0][0]
    with pytest.raises(IntentrecError, match="missing column 'candidates'"):
        pq.write_table(pa.table({"example_id": [1]}), path)
        load_candidates(path)


def test_few_shot_examples_are_shared_by_all_prompts(dataset, store):
    llm = ScriptedLLM()
    run_inference(dataset, template="semsr-fs", llm=llm, store=store, progress=False)
    prompts = [p for c in llm.calls for p in c]
    heads = {p.split("Session:\n")[1] for p in prompts}  # the first demonstration's session
    assert len(prompts) == 7 and len(heads) == 1 and all(p.startswith("Example 1.") for p in prompts)


def test_is_echo():
    titles = ["Argan Oil Shampoo for Dry Hair", "Rosewater Facial Toner 8 oz"]
    assert is_echo(["argan oil shampoo  for dry hair"], titles)
    assert is_echo(["Argan Oil Shampoo"], titles)  # a truncated copy
    assert not is_echo(["Shampoo"], titles)  # too short to call it a copy
    assert not is_echo(["Volumizing Mascara"], titles)


def test_decoding_changes_the_key(dataset, store):
    run_inference(dataset, template="llm4sbr-short", llm=ScriptedLLM(), store=store, progress=False)
    report = run_inference(
        dataset,
        template="llm4sbr-short",
        llm=ScriptedLLM(),
        store=store,
        progress=False,
        decoding=DecodingConfig(max_tokens=8),
    )
    assert report.generated == 7 and store.stats()["answers"] == 14
