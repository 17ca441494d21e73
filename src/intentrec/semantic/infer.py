"""The inference engine: ask an LLM about every example of a prepared dataset, resumably.

For one dataset split, template and model it

1. builds each selected example's prompt (``semantic.prompts``) and its answer key (``store.answer_key``:
   backend, model sha256, decoding, template version, prompt text);
2. de-duplicates identical prompts (prefix-augmented sessions repeat a lot) and drops those the answer
   store already has — those examples are linked to the stored answers at once;
3. sorts the remaining prompts by text, so that neighbours share long prefixes, and generates them in
   chunks; after every chunk the answers are written (``put_many``, one transaction, insert-or-ignore)
   and the chunk's examples are linked. A killed run loses at most the chunk in flight; a rerun
   generates only what is missing and never stores an answer twice.

Few-shot templates get the same ``max_examples`` demonstrations for every prompt (drawn with a fixed
seed from train-split examples, :func:`few_shot_rows`), so their shared prefix is reused by the
llama.cpp backend. The ``dmsrec`` template needs each example's candidate list, given as a parquet file
with columns ``example_id`` and ``candidates`` (item indices, best first), e.g. a backbone's top-50.

Two-call chains (``semsr-*-title`` after ``semsr-*-rationale``) take the first call's parsed answer per
example id (``rationales``); templates whose demonstrations show rationales take them per train example
id (``example_rationales``). ``intentrec.evaluation.llm_ranker`` runs those chains.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from intentrec.data.dataset import PreparedDataset
from intentrec.errors import ConfigError, DataError, IntentrecError
from intentrec.semantic.llm import get_llm, resolve_llm_identity
from intentrec.semantic.llm.base import DecodingConfig, Generation, LLMBackend
from intentrec.semantic.prompts import (
    FewShotExample,
    ItemText,
    PromptContext,
    PromptTemplate,
    get_template,
    prompt_text,
)
from intentrec.semantic.store import (
    AnswerRecord,
    AnswerStore,
    answer_key,
    canonical_json,
    dataset_fingerprint,
)

FEW_SHOT_SEED = 20240601


@dataclass
class InferReport:
    dataset: str
    split: str
    template: str
    template_version: str
    backend: str
    model: str
    model_sha256: str
    examples: int  # selected examples
    unique_prompts: int
    already_stored: int  # unique prompts answered before this run
    generated: int  # unique prompts answered by this run
    covered: int  # selected examples with a linked, stored answer
    seconds: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    status_counts: dict[str, int] = field(default_factory=dict)  # parse status of covered answers
    echoes: int = 0  # covered answers whose parsed text is a title of the example's own session
    missing_example_ids: list[int] = field(default_factory=list)

    @property
    def coverage(self) -> float:
        return self.covered / self.examples if self.examples else 1.0

    @property
    def prompts_per_second(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["coverage"] = round(self.coverage, 6)
        d["prompts_per_second"] = round(self.prompts_per_second, 4)
        d["missing_examples"] = len(self.missing_example_ids)
        d["missing_example_ids"] = self.missing_example_ids[:20]
        return d


@dataclass
class PromptPlan:
    """What a run would send: prompts by key, and which example uses which key."""

    example_ids: np.ndarray
    keys: list[str]  # per selected example
    messages: dict[str, list[dict[str, str]]]  # unique key -> chat messages
    texts: dict[str, str]  # unique key -> canonical prompt text
    session_titles: list[list[str]]  # per selected example, for echo detection


def select_rows(n: int, *, limit: int | None, sample: int | None, seed: int) -> np.ndarray:
    """Positions of the examples to use: all, the first ``limit``, or a seeded ``sample``."""
    if limit is not None and sample is not None:
        raise ConfigError("give either --limit or --sample, not both")
    if limit is not None:
        if limit < 0:
            raise ConfigError(f"--limit must be >= 0, got {limit}")
        return np.arange(min(limit, n))
    if sample is not None:
        if sample < 0:
            raise ConfigError(f"--sample must be >= 0, got {sample}")
        return np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False))
    return np.arange(n)


def load_candidates(path: str | Path) -> dict[int, np.ndarray]:
    """``example_id -> item indices`` from a parquet file with columns example_id, candidates."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise DataError("candidate file not found", path=path)
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - any parquet failure is the user's file
        raise DataError(f"cannot read parquet: {exc}", path=path) from None
    for col in ("example_id", "candidates"):
        if col not in table.column_names:
            raise DataError(f"missing column '{col}' (has: {', '.join(table.column_names)})", path=path)
    ids = table.column("example_id").to_pylist()
    cands = table.column("candidates").to_pylist()
    return {int(e): np.asarray(c, dtype=np.int64) for e, c in zip(ids, cands) if c is not None}


def few_shot_rows(ds: PreparedDataset, max_examples: int) -> np.ndarray:
    """Positions in the train split of the few-shot demonstrations: ``max_examples`` train examples
    with at least 2 clicks, drawn with the fixed seed ``FEW_SHOT_SEED`` (the same for every template
    and every run on this dataset)."""
    lengths = ds.examples("train").lengths
    eligible = np.flatnonzero(lengths >= 2)
    if len(eligible) == 0:
        raise DataError("few-shot templates need train examples with at least 2 items", path=ds.path)
    k = min(max_examples, len(eligible))
    return np.sort(np.random.default_rng(FEW_SHOT_SEED).choice(eligible, size=k, replace=False))


def _few_shot_examples(
    ds: PreparedDataset, template: PromptTemplate, item_text, rationales: dict[int, str] | None = None
) -> list[FewShotExample]:
    train = ds.examples("train")
    rationales = rationales or {}
    return [
        FewShotExample(
            session=[item_text(int(i)) for i in train.prefix(int(r))],
            target=item_text(int(train.targets[r])),
            rationale=rationales.get(int(train.example_ids[r])),
        )
        for r in few_shot_rows(ds, template.options.max_examples)
    ]


def plan_prompts(
    ds: PreparedDataset,
    template: PromptTemplate,
    identity: dict[str, str],
    decoding: DecodingConfig,
    *,
    split: str,
    rows: np.ndarray | None = None,
    candidates: dict[int, np.ndarray] | None = None,
    rationales: dict[int, str] | None = None,
    example_rationales: dict[int, str] | None = None,
) -> PromptPlan:
    examples = ds.examples(split)
    if rows is None:
        rows = np.arange(len(examples))
    texts_by_column = [ItemText(i, t) for i, t in zip(ds.item_ids(), ds.titles())]
    n_items = len(texts_by_column)

    def item_text(index: int) -> ItemText:
        return texts_by_column[index - 1]

    few_shot = _few_shot_examples(ds, template, item_text, example_rationales) if template.needs_examples else None
    if template.needs_candidates and candidates is None:
        raise ConfigError(f"template '{template.name}' needs candidate lists: pass --candidates FILE.parquet")
    if template.needs_rationale and rationales is None:
        raise ConfigError(
            f"template '{template.name}' is the second call of a chain and needs each example's rationale "
            "(run it through intentrec llm-rank)"
        )
    decoding_dict = decoding.key_dict()
    keys: list[str] = []
    messages: dict[str, list[dict[str, str]]] = {}
    texts: dict[str, str] = {}
    session_titles: list[list[str]] = []
    for r in rows:
        eid = int(examples.example_ids[r])
        prefix = examples.prefix(int(r))
        ctx_candidates = None
        if template.needs_candidates:
            cand = candidates.get(eid)  # type: ignore[union-attr]
            if cand is None or len(cand) == 0:
                raise DataError(f"no candidates for example {eid}", path="--candidates")
            bad = cand[(cand < 1) | (cand > n_items)]
            if len(bad):
                raise DataError(
                    f"example {eid}: candidate item index {int(bad[0])} is not in 1..{n_items}", path="--candidates"
                )
            ctx_candidates = [item_text(int(c)) for c in cand]
        rationale = None
        if template.needs_rationale:
            rationale = rationales.get(eid)  # type: ignore[union-attr]
            if not rationale:
                raise DataError(f"no rationale for example {eid}", path="rationales")
        session = [texts_by_column[i - 1] for i in prefix.tolist()]
        msgs = template.build(
            PromptContext(session=session, candidates=ctx_candidates, examples=few_shot, rationale=rationale)
        )
        text = prompt_text(msgs)
        key = answer_key(identity["backend"], identity["model_sha256"], decoding_dict, template.version, text)
        keys.append(key)
        if key not in messages:
            messages[key], texts[key] = msgs, text
        session_titles.append([t.title for t in session if t.title])
    return PromptPlan(np.asarray(examples.example_ids[rows], dtype=np.int64), keys, messages, texts, session_titles)


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def is_echo(answers: list[str], session_titles: list[str], min_chars: int = 12) -> bool:
    """Whether an answer repeats a title of the session it was asked about.

    Case and spacing are ignored; besides equality, an answer counts as an echo when it contains a
    session title or is contained in one (the model often copies a truncated title), provided the
    contained side has at least ``min_chars`` characters.
    """
    titles = [_normalise(t) for t in session_titles if t]
    for answer in answers:
        a = _normalise(answer)
        if not a:
            continue
        for t in titles:
            if a == t or (len(a) >= min_chars and a in t) or (len(t) >= min_chars and t in a):
                return True
    return False


def run_inference(
    dataset_dir: str | Path,
    *,
    template: str,
    llm: str | LLMBackend,
    split: str = "test",
    limit: int | None = None,
    sample: int | None = None,
    seed: int = 0,
    decoding: DecodingConfig | None = None,
    llm_options: dict[str, Any] | None = None,
    template_options: dict[str, Any] | None = None,
    candidates: dict[int, np.ndarray] | None = None,
    store: AnswerStore | None = None,
    chunk_size: int = 64,
    progress: bool = True,
    dry_run: bool = False,
    on_chunk: Callable[[int], None] | None = None,
    rows: np.ndarray | None = None,
    rationales: dict[int, str] | None = None,
    example_rationales: dict[int, str] | None = None,
) -> InferReport:
    """Generate (or reuse) an answer for every selected example; see the module docstring.

    ``rows`` (positions in the split) selects the examples explicitly, instead of ``limit``/``sample``.
    """
    if chunk_size < 1:
        raise ConfigError(f"chunk size must be >= 1, got {chunk_size}")
    started = time.perf_counter()
    decoding = decoding or DecodingConfig()
    ds = PreparedDataset(dataset_dir)
    tmpl = get_template(template, **(template_options or {}))
    identity = llm.identity() if isinstance(llm, LLMBackend) else resolve_llm_identity(llm, **(llm_options or {}))
    if rows is None:
        rows = select_rows(len(ds.examples(split)), limit=limit, sample=sample, seed=seed)
    elif limit is not None or sample is not None:
        raise ConfigError("give either explicit rows or --limit/--sample, not both")
    plan = plan_prompts(
        ds,
        tmpl,
        identity,
        decoding,
        split=split,
        rows=np.asarray(rows, dtype=np.int64),
        candidates=candidates,
        rationales=rationales,
        example_rationales=example_rationales,
    )
    fingerprint = dataset_fingerprint(dataset_dir)
    own_store = store is None
    store = store or AnswerStore()
    try:
        unique = list(plan.messages)
        missing = store.missing(unique)
        missing_set = set(missing)
        by_key: dict[str, list[int]] = {}
        for eid, key in zip(plan.example_ids.tolist(), plan.keys):
            by_key.setdefault(key, []).append(eid)

        def link(keys: list[str]) -> None:
            pairs = [(e, k) for k in keys for e in by_key[k]]
            store.link_examples(fingerprint, tmpl.name, identity["model_sha256"], pairs)

        link([k for k in unique if k not in missing_set])
        generated = prompt_tokens = completion_tokens = 0
        if missing and not dry_run:
            missing.sort(key=lambda k: plan.texts[k])
            backend = llm if isinstance(llm, LLMBackend) else get_llm(llm, **(llm_options or {}))
            try:
                _check_context(backend, missing, plan, decoding, by_key)
                generated, prompt_tokens, completion_tokens = _generate_missing(
                    backend, missing, plan, tmpl, identity, decoding, store, link, chunk_size, progress, on_chunk
                )
            finally:
                if backend is not llm:
                    backend.close()
        seconds = time.perf_counter() - started
        answers = store.answers_for_examples(
            fingerprint, tmpl.name, identity["model_sha256"], plan.example_ids.tolist()
        )
        status_counts: dict[str, int] = {}
        echoes = 0
        titles_by_eid = dict(zip(plan.example_ids.tolist(), plan.session_titles))
        for eid, rec in answers.items():
            parsed = tmpl.parse(rec.answer)
            status_counts[parsed.status] = status_counts.get(parsed.status, 0) + 1
            if parsed.status == "ok" and is_echo(parsed.texts, titles_by_eid[eid]):
                echoes += 1
        return InferReport(
            dataset=str(dataset_dir),
            split=split,
            template=tmpl.name,
            template_version=tmpl.version,
            backend=identity["backend"],
            model=identity["model"],
            model_sha256=identity["model_sha256"],
            examples=len(plan.example_ids),
            unique_prompts=len(unique),
            already_stored=len(unique) - len(missing_set),
            generated=generated,
            covered=len(answers),
            seconds=seconds,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            status_counts=status_counts,
            echoes=echoes,
            missing_example_ids=[e for e in plan.example_ids.tolist() if e not in answers],
        )
    finally:
        if own_store:
            store.close()


def _check_context(backend: LLMBackend, missing: list[str], plan, decoding: DecodingConfig, by_key) -> None:
    """Refuse, before the first call, prompts that cannot fit the backend's context with the answer:
    otherwise the run stops at the first such prompt after generating for minutes."""
    limit = backend.context_tokens()
    if limit is None:
        return
    lengths = [(backend.prompt_length(plan.messages[k]) or 0, k) for k in missing]
    too_long = [(n, k) for n, k in lengths if n + decoding.max_tokens > limit]
    if not too_long:
        return
    n, key = max(too_long)
    raise IntentrecError(
        f"{len(too_long)} of {len(missing)} prompts do not fit the {limit}-token context per sequence "
        f"with max_tokens={decoding.max_tokens}; the longest has {n} tokens (example {by_key[key][0]}). "
        "Raise the context (--llm-set n_ctx_per_seq=N for llama.cpp models) or shorten the prompts "
        "(--prompt-set max_session_items=N, max_title_words=N, max_examples=N)"
    )


def _generate_missing(backend, missing, plan, tmpl, identity, decoding, store, link, chunk_size, progress, on_chunk):
    from tqdm import tqdm

    decoding_json = canonical_json(decoding.key_dict())
    generated = prompt_tokens = completion_tokens = 0
    bar = tqdm(total=len(missing), unit="prompt", desc=f"infer {tmpl.name}", disable=not progress, file=sys.stderr)
    try:
        for start in range(0, len(missing), chunk_size):
            keys = missing[start : start + chunk_size]
            gens: list[Generation] = backend.generate(
                [plan.messages[k] for k in keys], decoding, on_result=lambda i, g: bar.update(1)
            )
            records = [
                AnswerRecord(
                    key=k,
                    backend=identity["backend"],
                    model=identity["model"],
                    model_sha256=identity["model_sha256"],
                    template=tmpl.name,
                    template_version=tmpl.version,
                    decoding_json=decoding_json,
                    prompt=plan.texts[k],
                    answer=g.text,
                    prompt_tokens=g.prompt_tokens,
                    completion_tokens=g.completion_tokens,
                    latency_s=g.seconds,
                )
                for k, g in zip(keys, gens)
            ]
            store.put_many(records)
            link(keys)
            generated += len(keys)
            prompt_tokens += sum(g.prompt_tokens for g in gens)
            completion_tokens += sum(g.completion_tokens for g in gens)
            if on_chunk is not None:
                on_chunk(generated)
    finally:
        bar.close()
    return generated, prompt_tokens, completion_tokens
