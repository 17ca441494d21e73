"""Catalogue embeddings and per-example intent vectors of a prepared dataset.

Files written into the dataset folder (all atomically), ``<enc>`` being the encoder's identity key:

``semantic/items.<enc>.npy``
    float32 [num_items, d]; row c is item index c+1. Text of an item: its title, or ``item <item_id>``
    when it has none (counted in the json). L2-normalised unless ``normalize=False``.
``semantic/items.<enc>.json``
    encoder identity, normalisation, sha256 of the item texts, counts — an existing file is reused
    only when all of these match.
``semantic/intents.<template>.<model sha256[:12]>.<enc>.k<k>.<split>.safetensors``
    ``example_ids`` int64 [N] (the dataset's example ids, in file order of the split(s));
    ``vectors`` float32 [N, d] — the localized intent (for multi-intent templates, the mean of the
    localized intents); ``has_intent`` uint8 [N]; for multi-intent templates also
    ``intent_vectors`` float32 [N, J, d] and ``intent_counts`` int64 [N]. Examples without a usable
    answer get zero vectors and ``has_intent = 0``. The safetensors metadata holds the provenance.
``...safetensors.json`` next to it: the coverage report.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from intentrec.data import schema
from intentrec.data.dataset import PreparedDataset
from intentrec.errors import DataError, IntentrecError
from intentrec.io import atomic_path, write_json
from intentrec.semantic.embedding_cache import CacheReport, encode_cached
from intentrec.semantic.encoders import TextEncoder
from intentrec.semantic.item_texts import DEFAULT_TEMPLATE, item_texts
from intentrec.semantic.localization import Method, localize
from intentrec.semantic.parsing import ParsedAnswer
from intentrec.semantic.prompts import get_template
from intentrec.semantic.store import AnswerStore, dataset_fingerprint

SEMANTIC_DIR = "semantic"
SPLIT_CHOICES = (*schema.SPLITS, "all")
_REPORT_IDS = 20  # example ids listed per coverage category


def catalogue_texts(dataset: PreparedDataset, template: str = DEFAULT_TEMPLATE) -> tuple[list[str], int]:
    """The text of each item by column under ``template`` (default: title, or ``item <id>``) and how
    many items had none."""
    return item_texts(dataset, template)


def catalogue_paths(dataset_dir: str | Path, encoder_key: str, template: str = DEFAULT_TEMPLATE) -> tuple[Path, Path]:
    folder = Path(dataset_dir) / SEMANTIC_DIR
    stem = (
        f"items.{encoder_key}" if template == DEFAULT_TEMPLATE else f"items.{template.replace('/', '-')}.{encoder_key}"
    )
    return folder / f"{stem}.npy", folder / f"{stem}.json"


@dataclass
class CatalogueEmbeddings:
    vectors: np.ndarray
    info: dict[str, Any]
    path: Path
    reused_file: bool
    cache: CacheReport | None = None
    seconds: float = 0.0


def _texts_sha256(texts: list[str]) -> str:
    return hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode("utf-8")).hexdigest()


def embed_catalogue(
    dataset_dir: str | Path,
    encoder: TextEncoder,
    *,
    normalize: bool = True,
    batch_size: int = 64,
    cache_root: str | Path | None = None,
    force: bool = False,
    template: str = DEFAULT_TEMPLATE,
) -> CatalogueEmbeddings:
    """Embeddings of every item's text (``template``, :mod:`intentrec.semantic.item_texts`), written to /
    reused from ``semantic/items[.<template>].<enc>.npy``."""
    dataset = PreparedDataset(dataset_dir)
    texts, untitled = catalogue_texts(dataset, template)
    key = encoder.identity_key()
    npy_path, json_path = catalogue_paths(dataset_dir, key, template)
    expected = {
        "encoder": encoder.identity(),
        "encoder_key": key,
        "normalize": normalize,
        "num_items": len(texts),
        "texts_sha256": _texts_sha256(texts),
    }
    if not force and npy_path.is_file() and json_path.is_file():
        try:
            info = json.loads(json_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            info = {}
        if all(info.get(k) == v for k, v in expected.items()):
            vectors = np.load(npy_path, allow_pickle=False)
            if vectors.shape[0] == len(texts):
                return CatalogueEmbeddings(vectors, info, npy_path, reused_file=True)
    start = time.perf_counter()
    vectors, report = encode_cached(encoder, texts, normalize=normalize, batch_size=batch_size, root=cache_root)
    seconds = time.perf_counter() - start
    info = {
        **expected,
        "dim": int(vectors.shape[1]),
        "untitled_items": untitled,
        "template": template,
        "text_rule": "title, or 'item <item_id>' when the item has no title"
        if template == DEFAULT_TEMPLATE
        else f"item text template {template} (intentrec.semantic.item_texts)",
        "row_order": "row c is item index c+1",
        "encoded_texts": report.encoded,
        "encode_seconds": round(seconds, 3),
    }
    with atomic_path(npy_path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, vectors.astype(np.float32), allow_pickle=False)
    write_json(json_path, info)
    return CatalogueEmbeddings(vectors, info, npy_path, reused_file=False, cache=report, seconds=seconds)


# ---------------------------------------------------------------------------------------------------
@dataclass
class Coverage:
    examples: int = 0
    with_intent: int = 0
    missing: int = 0  # no linked answer in the store
    stale: int = 0  # linked answer was produced by another template version
    empty: int = 0  # answer parsed to nothing
    garbage: int = 0  # answer with text but no usable item name
    by_split: dict[str, dict[str, int]] = field(default_factory=dict)
    missing_example_ids: list[int] = field(default_factory=list)
    unusable_example_ids: list[int] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        return self.with_intent / self.examples if self.examples else 0.0


@dataclass
class IntentResult:
    path: Path
    report_path: Path
    example_ids: np.ndarray
    vectors: np.ndarray
    has_intent: np.ndarray
    coverage: Coverage
    metadata: dict[str, Any]


def intents_path(
    dataset_dir: str | Path, template: str, model_sha256: str, encoder_key: str, k: int, split: str
) -> Path:
    name = f"intents.{template}.{model_sha256[:12]}.{encoder_key}.k{k}.{split}.safetensors"
    return Path(dataset_dir) / SEMANTIC_DIR / name


def _example_ids_and_splits(dataset: PreparedDataset, split: str) -> tuple[np.ndarray, np.ndarray]:
    if split not in SPLIT_CHOICES:
        raise IntentrecError(f"unknown split '{split}' (known: {', '.join(SPLIT_CHOICES)})")
    splits = schema.SPLITS if split == "all" else (split,)
    ids, names = [], []
    for s in splits:
        e = dataset.examples(s).example_ids
        ids.append(e)
        names.append(np.full(len(e), s, dtype=object))
    return np.concatenate(ids).astype(np.int64), np.concatenate(names)


def compute_intents(
    dataset_dir: str | Path,
    *,
    template: str,
    llm_identity: dict[str, str],
    encoder: TextEncoder,
    k: int = 3,
    split: str = "all",
    store: AnswerStore,
    method: Method = "auto",
    normalize: bool = True,
    batch_size: int = 64,
    cache_root: str | Path | None = None,
    out: str | Path | None = None,
) -> IntentResult:
    """Localized intent vectors for the examples of ``split`` from the answers in ``store``."""
    dataset = PreparedDataset(dataset_dir)
    prompt = get_template(template)
    fingerprint = dataset_fingerprint(dataset_dir)
    model_sha = llm_identity["model_sha256"]
    example_ids, example_splits = _example_ids_and_splits(dataset, split)
    catalogue = embed_catalogue(dataset_dir, encoder, normalize=normalize, batch_size=batch_size, cache_root=cache_root)

    links = store.linked_keys(fingerprint, template, model_sha, example_ids.tolist())
    records = store.get_many(list(links.values()))
    coverage = Coverage(examples=len(example_ids))
    per_split: dict[str, Counter] = {s: Counter() for s in dict.fromkeys(example_splits.tolist())}
    answer_texts: list[str] = []
    owners: list[int] = []  # row in example_ids of each answer text
    parsed_by_answer: dict[str, ParsedAnswer] = {}
    for row, (eid, esplit) in enumerate(zip(example_ids.tolist(), example_splits.tolist())):
        record = records.get(links.get(eid, ""))
        if record is None:
            status = "missing"
        elif record.template_version != prompt.version:
            status = "stale"
        else:
            parsed = parsed_by_answer.get(record.answer)
            if parsed is None:
                parsed = parsed_by_answer[record.answer] = prompt.parse(record.answer)
            status = "with_intent" if parsed.status == "ok" else parsed.status
            if parsed.status == "ok":
                answer_texts.extend(parsed.texts)
                owners.extend([row] * len(parsed.texts))
        per_split[esplit][status] += 1
        if status == "missing" and len(coverage.missing_example_ids) < _REPORT_IDS:
            coverage.missing_example_ids.append(eid)
        if status in ("stale", "empty", "garbage") and len(coverage.unusable_example_ids) < _REPORT_IDS:
            coverage.unusable_example_ids.append(eid)
    totals = sum(per_split.values(), Counter())
    for name in ("with_intent", "missing", "stale", "empty", "garbage"):
        setattr(coverage, name, int(totals[name]))
    coverage.by_split = {s: {**{n: 0 for n in ("with_intent", "missing")}, **dict(c)} for s, c in per_split.items()}

    dim = catalogue.vectors.shape[1]
    n = len(example_ids)
    owner = np.asarray(owners, dtype=np.int64)
    if answer_texts:
        # Encode and localize each distinct answer text once; many sessions get the same answer.
        distinct, inverse = np.unique(np.asarray(answer_texts, dtype=object), return_inverse=True)
        answer_vecs, _ = encode_cached(
            encoder, distinct.tolist(), normalize=normalize, batch_size=batch_size, root=cache_root
        )
        localized = localize(answer_vecs, catalogue.vectors, k, method=method)[inverse]
    else:
        localized = np.zeros((0, dim), dtype=np.float32)
    counts = np.bincount(owner, minlength=n).astype(np.int64)
    sums = np.zeros((n, dim), dtype=np.float64)
    np.add.at(sums, owner, localized)
    vectors = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
    has_intent = (counts > 0).astype(np.uint8)

    tensors: dict[str, np.ndarray] = {"example_ids": example_ids, "vectors": vectors, "has_intent": has_intent}
    if prompt.multi_intent:
        width = max(int(counts.max(initial=0)), 1)
        # Position of each text among its example's texts: texts of one example are contiguous.
        starts = np.concatenate([[0], np.cumsum(counts)])[owner] if len(owner) else owner
        slot = np.arange(len(owner)) - starts
        per_intent = np.zeros((n, width, dim), dtype=np.float32)
        per_intent[owner, slot] = localized
        tensors["intent_vectors"] = per_intent
        tensors["intent_counts"] = counts

    metadata = {
        "dataset_fingerprint": fingerprint,
        "template": template,
        "template_version": prompt.version,
        "llm": llm_identity,
        "encoder": encoder.identity(),
        "encoder_key": encoder.identity_key(),
        "normalize": normalize,
        "k": k,
        "split": split,
        "search": method,
        "catalogue": str(catalogue.path.name),
    }
    path = (
        Path(out)
        if out is not None
        else intents_path(dataset_dir, template, model_sha, encoder.identity_key(), k, split)
    )
    write_safetensors(path, tensors, metadata)
    report_path = path.with_name(path.name + ".json")
    write_json(
        report_path, {"file": path.name, **metadata, "coverage": {**asdict(coverage), "fraction": coverage.fraction}}
    )
    return IntentResult(path, report_path, example_ids, vectors, has_intent.astype(bool), coverage, metadata)


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, Any]) -> None:
    from safetensors.numpy import save_file

    meta = {
        key: json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
        for key, value in metadata.items()
    }
    with atomic_path(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp), metadata=meta)


def load_intents(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors and metadata of an intents file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise DataError("intents file not found", path=path)
    with safe_open(str(path), framework="numpy") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})  # noqa: SIM118 (safe_open is not a dict)
