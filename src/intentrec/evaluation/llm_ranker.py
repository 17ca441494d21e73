"""The LLM as the recommender: SemSR's FS-LLM, ZCoT-LLM and FSCoT-LLM baselines, scored exactly.

An LLM reads a session and writes the title of the product it expects next. That title is encoded
with the same text encoder as every catalogue item's text (``intents.embed_catalogue``, unit vectors)
and **all** items are ranked by cosine similarity to it. The target's rank counts every item scoring
greater than or equal to it (``metrics.target_ranks``: ties count against the target), so HR/MRR/NDCG@K
are exact full-ranking numbers, comparable with every trained model scored on the same examples.

Baselines (templates in ``semantic.prompts``):

``fs``     one call, ``semsr-fs``: a few solved train sessions (session, next title), then the session.
``zcot``   two calls: ``semsr-zcot-rationale`` (what the user is looking for, and why), then
           ``semsr-zcot-title`` (the next title, given the session and that rationale).
``fscot``  ZCoT with worked examples: the same few-shot train sessions as ``fs`` are shown with their
           rationales (``semsr-fscot-rationale``), then with rationale and next title
           (``semsr-fscot-title``). The examples' rationales are generated once by the same LLM with
           the zero-shot rationale template ``semsr-zcot-rationale`` on those train examples — the
           model explains each example without seeing its answer, exactly as it must at test time —
           and kept in the answer store like every other answer.

Every call goes through ``semantic.infer.run_inference``: answers are keyed, stored, de-duplicated
and linked to their examples, so an interrupted run resumes and a finished one makes no new calls.
The second call of a chain is asked only for examples whose first answer parsed to a rationale.

The examples are the seeded sample ``intentrec infer --sample N --seed S`` uses
(``semantic.infer.select_rows``); the report lists their ids, and ``intentrec evaluate RUN --sample N
--seed S`` scores a trained run on the same rows. Examples without a usable title (no answer, an answer
of an older template version, an unparseable answer, or no usable rationale for the second call) get
the worst rank, the number of items, and are counted by reason.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from intentrec.data.dataset import PreparedDataset
from intentrec.errors import ConfigError, IntentrecError
from intentrec.evaluation.metrics import metrics_from_ranks, target_ranks
from intentrec.semantic.encoders import TextEncoder
from intentrec.semantic.llm.base import DecodingConfig, Generation, LLMBackend
from intentrec.semantic.store import AnswerStore

#: baseline -> the templates it calls, in order (the last one answers with the title)
BASELINES: dict[str, tuple[str, ...]] = {
    "fs": ("semsr-fs",),
    "zcot": ("semsr-zcot-rationale", "semsr-zcot-title"),
    "fscot": ("semsr-fscot-rationale", "semsr-fscot-title"),
}
#: the template that writes the few-shot examples' rationales for ``fscot``
EXAMPLE_RATIONALE_TEMPLATE = "semsr-zcot-rationale"
DEFAULT_LLM_KS: tuple[int, ...] = (5, 10, 20, 50, 100)
#: rationale calls may write two sentences: more room than a title's 48 tokens
RATIONALE_MAX_TOKENS = 96
#: reasons an example gets the worst rank
UNRANKED_REASONS: tuple[str, ...] = ("missing", "stale", "empty", "garbage", "no_rationale")
_SCORE_BUDGET = 1 << 24  # score-matrix entries per chunk (64 MB of float32)


# ----------------------------------------------------------------------------------------------
# ranking
def cosine_ranks(vectors: np.ndarray, target_columns: np.ndarray, catalogue: np.ndarray) -> np.ndarray:
    """1-based rank of each target column among all catalogue rows by the dot product with its vector.

    ``vectors`` [m, d] and ``catalogue`` [n, d] are unit vectors (so dot = cosine); every item scoring
    greater than or equal to the target counts (ties against it). Exact: the full [chunk, n] score
    rows are computed in chunks, never a top-K approximation.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    catalogue = np.asarray(catalogue, dtype=np.float32)
    targets = np.asarray(target_columns, dtype=np.int64)
    if vectors.ndim != 2 or catalogue.ndim != 2 or vectors.shape[1] != catalogue.shape[1]:
        raise ConfigError(
            f"title vectors {vectors.shape} and catalogue vectors {catalogue.shape} must come from the same encoder"
        )
    if len(vectors) != len(targets):
        raise ConfigError(f"{len(vectors)} title vectors for {len(targets)} targets")
    n = catalogue.shape[0]
    if len(targets) and (targets.min() < 0 or targets.max() >= n):
        raise ConfigError(f"target columns must lie in 0..{n - 1}")
    items = torch.from_numpy(catalogue)
    chunk = max(1, _SCORE_BUDGET // max(n, 1))
    out = np.empty(len(targets), dtype=np.int64)
    with torch.no_grad():
        for start in range(0, len(targets), chunk):
            scores = torch.from_numpy(vectors[start : start + chunk]) @ items.T
            out[start : start + chunk] = target_ranks(scores, torch.from_numpy(targets[start : start + chunk])).numpy()
    return out


def rank_titles(
    titles: Sequence[str | None],
    target_columns: np.ndarray,
    catalogue: np.ndarray,
    encoder: TextEncoder,
    *,
    cache_root: str | Path | None = None,
) -> np.ndarray:
    """Exact rank of each example's target given its generated title; ``None`` = the worst rank.

    Each distinct title is encoded once, unit-normalised, through the embedding cache.
    """
    from intentrec.semantic.embedding_cache import encode_cached

    targets = np.asarray(target_columns, dtype=np.int64)
    if len(titles) != len(targets):
        raise ConfigError(f"{len(titles)} titles for {len(targets)} targets")
    ranks = np.full(len(targets), catalogue.shape[0], dtype=np.int64)
    usable = [i for i, t in enumerate(titles) if t]
    if usable:
        distinct = sorted({titles[i] for i in usable})  # type: ignore[type-var]
        vecs, _ = encode_cached(encoder, distinct, normalize=True, root=cache_root)
        row = {t: r for r, t in enumerate(distinct)}
        picked = vecs[[row[titles[i]] for i in usable]]
        ranks[usable] = cosine_ranks(picked, targets[usable], catalogue)
    return ranks


# ----------------------------------------------------------------------------------------------
# answers
@dataclass
class Outcome:
    """Per-example outcome of a template's answers: the parsed text (``None`` if unusable) and why."""

    texts: list[str | None]
    statuses: list[str]  # ok | missing | stale | empty | garbage


def parsed_answers(
    store: AnswerStore, fingerprint: str, template: str, model_sha256: str, example_ids: Sequence[int], **options: Any
) -> Outcome:
    """The first parsed text of each example's linked answer under ``template`` (current version)."""
    from intentrec.semantic.prompts import get_template

    tmpl = get_template(template, **options)
    records = store.answers_for_examples(fingerprint, template, model_sha256, list(example_ids))
    texts: list[str | None] = []
    statuses: list[str] = []
    for eid in example_ids:
        record = records.get(int(eid))
        if record is None:
            text, status = None, "missing"
        elif record.template_version != tmpl.version:
            text, status = None, "stale"
        else:
            parsed = tmpl.parse(record.answer)
            text, status = (parsed.texts[0], "ok") if parsed.status == "ok" else (None, parsed.status)
        texts.append(text)
        statuses.append(status)
    return Outcome(texts, statuses)


class _LazyLLM(LLMBackend):
    """A backend named by a spec, loaded on the first prompt that is not already stored: a rerun
    whose answers are all stored never loads the model, and a chain loads it once."""

    def __init__(self, spec: str, options: dict[str, Any]):
        from intentrec.semantic.llm import resolve_llm_identity

        self.spec, self.options = spec, options
        self._identity = resolve_llm_identity(spec, **options)
        self._backend: LLMBackend | None = None

    def identity(self) -> dict[str, str]:
        return self._identity

    def _loaded(self) -> LLMBackend:
        if self._backend is None:
            from intentrec.semantic.llm import get_llm

            self._backend = get_llm(self.spec, **self.options)
        return self._backend

    def generate(self, prompts, decoding, on_result=None) -> list[Generation]:
        return self._loaded().generate(prompts, decoding, on_result)

    def prompt_length(self, prompt) -> int | None:
        return self._loaded().prompt_length(prompt)

    def context_tokens(self) -> int | None:
        return self._loaded().context_tokens()

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None


# ----------------------------------------------------------------------------------------------
# the sample
def sampled_rows(
    dataset_dir: str | Path, *, split: str = "test", sample: int | None = None, seed: int = 0, limit: int | None = None
) -> np.ndarray:
    """Positions in ``split`` of the examples ``intentrec infer --sample N --seed S`` (or ``--limit``)
    uses; all of them when neither is given."""
    from intentrec.semantic.infer import select_rows

    return select_rows(len(PreparedDataset(dataset_dir).examples(split)), limit=limit, sample=sample, seed=seed)


def sampled_example_ids(
    dataset_dir: str | Path, *, split: str = "test", sample: int | None = None, seed: int = 0, limit: int | None = None
) -> np.ndarray:
    """The example ids of :func:`sampled_rows`, int64 in file order."""
    rows = sampled_rows(dataset_dir, split=split, sample=sample, seed=seed, limit=limit)
    return np.asarray(PreparedDataset(dataset_dir).examples(split).example_ids[rows], dtype=np.int64)


# ----------------------------------------------------------------------------------------------
def llm_ranking(
    dataset_dir: str | Path,
    *,
    baseline: str = "fs",
    llm: str | LLMBackend = "qwen0.5b",
    encoder: str | TextEncoder = "minilm",
    split: str = "test",
    sample: int | None = 500,
    seed: int = 0,
    limit: int | None = None,
    ks: Sequence[int] = DEFAULT_LLM_KS,
    store: AnswerStore | str | Path | None = None,
    decoding: DecodingConfig | None = None,
    rationale_decoding: DecodingConfig | None = None,
    llm_options: dict[str, Any] | None = None,
    template_options: dict[str, Any] | None = None,
    chunk_size: int = 64,
    progress: bool = True,
    cache_root: str | Path | None = None,
) -> dict[str, Any]:
    """Generate (or reuse) the baseline's answers for the sampled examples and score them exactly.

    ``decoding`` applies to title calls (default: ``DecodingConfig()``), ``rationale_decoding`` to
    rationale calls (default: the same with ``max_tokens`` = :data:`RATIONALE_MAX_TOKENS`). Returns a
    JSON-ready report: metrics, counts by outcome, the sample (with its example ids), the few-shot
    examples, every call's generation report, seconds and prompts per second.
    """
    from intentrec.semantic.encoders import get_encoder
    from intentrec.semantic.infer import few_shot_rows, run_inference
    from intentrec.semantic.intents import embed_catalogue
    from intentrec.semantic.prompts import get_template
    from intentrec.semantic.store import dataset_fingerprint

    if baseline not in BASELINES:
        raise ConfigError(f"unknown LLM baseline '{baseline}' (known: {', '.join(BASELINES)})")
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ConfigError(f"cutoffs must be positive integers, got {list(ks)}")
    started = time.perf_counter()
    decoding = decoding or DecodingConfig()
    rationale_decoding = rationale_decoding or DecodingConfig(
        **{**decoding.key_dict(), "max_tokens": RATIONALE_MAX_TOKENS}
    )
    template_options = dict(template_options or {})
    for name in {t for ts in BASELINES.values() for t in ts}:
        get_template(name, **template_options)  # unknown options fail before anything is generated
    ds = PreparedDataset(dataset_dir)
    examples = ds.examples(split)
    rows = sampled_rows(dataset_dir, split=split, sample=sample, seed=seed, limit=limit)
    if len(rows) == 0:
        raise IntentrecError(f"the {split} split of {dataset_dir} has no examples to rank")
    example_ids = [int(e) for e in examples.example_ids[rows]]
    target_columns = examples.targets[rows].astype(np.int64) - 1
    fingerprint = dataset_fingerprint(dataset_dir)
    text_encoder = get_encoder(encoder) if isinstance(encoder, str) else encoder

    backend = llm if isinstance(llm, LLMBackend) else _LazyLLM(llm, dict(llm_options or {}))
    identity = backend.identity()
    own_store = not isinstance(store, AnswerStore)
    answer_store = store if isinstance(store, AnswerStore) else AnswerStore(store)
    steps: list[dict[str, Any]] = []

    def call(
        template: str, rows_: np.ndarray, step_decoding: DecodingConfig, *, step_split: str = split, **kw: Any
    ) -> None:
        report = run_inference(
            dataset_dir,
            template=template,
            llm=backend,
            split=step_split,
            rows=rows_,
            decoding=step_decoding,
            template_options=template_options,
            store=answer_store,
            chunk_size=chunk_size,
            progress=progress,
            **kw,
        )
        steps.append(
            {
                "template": template,
                "template_version": report.template_version,
                "split": report.split,
                "examples": report.examples,
                "unique_prompts": report.unique_prompts,
                "already_stored": report.already_stored,
                "generated": report.generated,
                "covered": report.covered,
                "seconds": round(report.seconds, 3),
                "prompts_per_second": round(report.prompts_per_second, 4),
                "prompt_tokens": report.prompt_tokens,
                "completion_tokens": report.completion_tokens,
                "status_counts": report.status_counts,
            }
        )

    def parsed(template: str, ids: Sequence[int]) -> Outcome:
        return parsed_answers(answer_store, fingerprint, template, identity["model_sha256"], ids, **template_options)

    few_shot: dict[str, Any] | None = None
    shot_answers: list[str] = []  # the few-shot examples' next titles (fs, fscot)
    try:
        templates = BASELINES[baseline]
        example_rationales: dict[int, str] | None = None
        if baseline in ("fs", "fscot"):
            max_examples = get_template(templates[0], **template_options).options.max_examples
            shot_rows = few_shot_rows(ds, max_examples)
            train = ds.examples("train")
            shot_ids = [int(e) for e in train.example_ids[shot_rows]]
            few_shot = {"split": "train", "example_ids": shot_ids}
            item_titles = ds.titles()
            shot_answers = [item_titles[int(t) - 1] or "" for t in train.targets[shot_rows]]
            if baseline == "fscot":
                call(EXAMPLE_RATIONALE_TEMPLATE, shot_rows, rationale_decoding, step_split="train")
                got = parsed(EXAMPLE_RATIONALE_TEMPLATE, shot_ids)
                example_rationales = {e: t for e, t in zip(shot_ids, got.texts) if t}
                few_shot.update(
                    rationale_template=EXAMPLE_RATIONALE_TEMPLATE,
                    with_rationale=len(example_rationales),
                    rationale_statuses=dict(zip(map(str, shot_ids), got.statuses)),
                )
                if not example_rationales:
                    raise IntentrecError(
                        f"none of the {len(shot_ids)} few-shot examples got a usable rationale from "
                        f"{identity['model']}; FSCoT needs at least one"
                    )
        rationale_statuses: list[str] | None = None
        if len(templates) == 1:
            call(templates[0], rows, decoding)
        else:
            first, second = templates
            call(first, rows, rationale_decoding, example_rationales=example_rationales)
            got = parsed(first, example_ids)
            rationale_statuses = got.statuses
            rationales = {e: t for e, t in zip(example_ids, got.texts) if t}
            keep = np.asarray([r for r, e in zip(rows.tolist(), example_ids) if e in rationales], dtype=np.int64)
            if len(keep):
                call(second, keep, decoding, rationales=rationales, example_rationales=example_rationales)
        generation_seconds = time.perf_counter() - started
        final = parsed(templates[-1], example_ids)
    finally:
        if backend is not llm:
            backend.close()
        if own_store:
            answer_store.close()

    statuses = list(final.statuses)
    if rationale_statuses is not None:  # no usable rationale: the second call was never asked
        statuses = ["no_rationale" if r != "ok" else s for s, r in zip(statuses, rationale_statuses)]
    titles = [t if s == "ok" else None for t, s in zip(final.texts, statuses)]

    rank_start = time.perf_counter()
    catalogue = embed_catalogue(dataset_dir, text_encoder, normalize=True, cache_root=cache_root)
    ranks = rank_titles(titles, target_columns, catalogue.vectors, text_encoder, cache_root=cache_root)
    ranking_seconds = time.perf_counter() - rank_start

    counts = {"examples": len(example_ids), "ranked": statuses.count("ok")}
    counts.update({reason: statuses.count(reason) for reason in UNRANKED_REASONS})
    counts["unranked"] = counts["examples"] - counts["ranked"]
    if rationale_statuses is not None:
        counts["rationales"] = {s: rationale_statuses.count(s) for s in sorted(set(rationale_statuses))}
    answers = answer_diversity(titles, shot_answers)
    generated = sum(s["generated"] for s in steps)
    step_seconds = sum(s["seconds"] for s in steps)
    sample_info = {
        "split": split,
        "sample": sample,
        "seed": seed,
        "limit": limit,
        "examples": len(example_ids),
        "rule": "intentrec.semantic.infer.select_rows: the rows of intentrec infer --sample N --seed S",
        "example_ids": example_ids,
    }
    return {
        "baseline": baseline,
        "templates": list(BASELINES[baseline]),
        "dataset": str(dataset_dir),
        "dataset_fingerprint": fingerprint,
        "split": split,
        "llm": identity,
        "encoder": {
            "spec": encoder if isinstance(encoder, str) else None,
            "key": text_encoder.identity_key(),
            "identity": text_encoder.identity(),
        },
        "num_items": int(catalogue.vectors.shape[0]),
        "worst_rank": int(catalogue.vectors.shape[0]),
        "ks": list(ks),
        "metrics": metrics_from_ranks(ranks, ks),
        "counts": counts,
        "answers": answers,
        "sample": sample_info,
        "few_shot": few_shot,
        "decoding": {"title": decoding.key_dict(), "rationale": rationale_decoding.key_dict()},
        "steps": steps,
        "generated": generated,
        "already_stored": sum(s["already_stored"] for s in steps),
        "seconds": round(time.perf_counter() - started, 3),
        "generation_seconds": round(generation_seconds, 3),
        "ranking_seconds": round(ranking_seconds, 3),
        "prompts_per_second": round(generated / step_seconds, 4) if generated and step_seconds > 0 else 0.0,
        "evaluate_same_sample": _evaluate_hint(split, sample, seed, limit),
    }


def answer_diversity(titles: Sequence[str | None], example_answers: Sequence[str]) -> dict[str, Any]:
    """How varied the usable answers are: a small LLM often repeats one title, or copies the answer of
    a few-shot example, for most sessions (titles compared case- and space-insensitively)."""

    def norm(text: str) -> str:
        return " ".join(text.lower().split())

    used = [norm(t) for t in titles if t]
    shots = {norm(t) for t in example_answers if t}
    top = Counter(used).most_common(1)
    return {
        "distinct_titles": len(set(used)),
        "most_common_title_share": round(top[0][1] / len(used), 4) if top else 0.0,
        "copied_example_answer": sum(t in shots for t in used),
    }


def _evaluate_hint(split: str, sample: int | None, seed: int, limit: int | None) -> str:
    if limit is not None:
        return f"the first {limit} {split} examples (intentrec evaluate has no --limit; use --sample)"
    if sample is None:
        return f"intentrec evaluate RUN --split {split}"
    return f"intentrec evaluate RUN --split {split} --sample {sample} --seed {seed}"


__all__ = [
    "BASELINES",
    "DEFAULT_LLM_KS",
    "EXAMPLE_RATIONALE_TEMPLATE",
    "cosine_ranks",
    "llm_ranking",
    "parsed_answers",
    "rank_titles",
    "sampled_example_ids",
    "sampled_rows",
]
