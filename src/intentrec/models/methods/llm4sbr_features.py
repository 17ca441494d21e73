"""Per-example view vectors for the methods: where the text of each view comes from.

Two sources (``source`` in the method configs; every result records which one was used):

``llm``
    The LLM's answers from the answer store, parsed, encoded and localized by
    :func:`intentrec.semantic.intents.compute_intents` (one file per prompt template). Examples
    without an answer are *missing*; methods refuse them unless told to use the covered subset.
``titles``
    No generation: the view text is the session's own titles. Each item title is encoded once (the
    catalogue embeddings) and a view vector is the mean of the unit title vectors of the view's
    items, re-normalised, then localized like an LLM answer. Views: ``long`` = every click of the
    prefix, ``short`` = the last ``short_window`` (3) clicks. Encoding the concatenated titles as one
    string instead would cost ~176k × 2 encoder passes on Beauty (measured 41–54 texts/s on this
    2-core CPU, i.e. about two hours); the mean of title vectors costs one pass over 12k titles.

Files (atomic, reused while the dataset, encoder and k match) live in ``DATASET/semantic/``::

    views.titles-<view>.<encoder-key>.k<k>.safetensors   example_ids int64 [N], vectors float32 [N, d]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from intentrec.data.dataset import PreparedDataset, all_examples
from intentrec.errors import DataError
from intentrec.models.features import FeatureTable
from intentrec.semantic.encoders import TextEncoder
from intentrec.semantic.intents import (
    SEMANTIC_DIR,
    compute_intents,
    embed_catalogue,
    intents_path,
    load_intents,
    write_safetensors,
)
from intentrec.semantic.localization import l2_normalise, localize
from intentrec.semantic.store import dataset_fingerprint

TITLE_VIEWS = ("long", "short")
#: values gathered per chunk when averaging title vectors (bounds memory to ~chunk × d floats)
_CHUNK_VALUES = 262_144


def window_means(item_vectors: np.ndarray, values: np.ndarray, offsets: np.ndarray, window: int | None) -> np.ndarray:
    """Mean of ``item_vectors[item − 1]`` over each sequence (or its last ``window`` items), [N, d]."""
    n = len(offsets) - 1
    ends = offsets[1:]
    starts = offsets[:-1] if window is None else np.maximum(offsets[:-1], ends - window)
    lengths = ends - starts
    table = torch.from_numpy(np.ascontiguousarray(item_vectors, dtype=np.float32))
    out = torch.zeros((n, table.shape[1]), dtype=torch.float32)
    # Process whole sequences per chunk, vectorised: gather the chunk's items, index_add by owner.
    first = 0
    while first < n:
        budget = np.searchsorted(np.cumsum(lengths[first:]), _CHUNK_VALUES, side="right")
        last = min(n, first + max(int(budget), 1))
        lens = lengths[first:last]
        owner = np.repeat(np.arange(first, last), lens)
        pos = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
        items = values[np.repeat(starts[first:last], lens) + pos]
        out.index_add_(0, torch.from_numpy(owner), table[torch.from_numpy(items - 1)])
        first = last
    out /= torch.from_numpy(np.maximum(lengths, 1).astype(np.float32)).unsqueeze(1)
    return out.numpy()


def _title_view_path(dataset_dir: Path, view: str, encoder_key: str, k: int) -> Path:
    return dataset_dir / SEMANTIC_DIR / f"views.titles-{view}.{encoder_key}.k{k}.safetensors"


def title_views(
    dataset_dir: str | Path,
    encoder: TextEncoder,
    *,
    views: tuple[str, ...] = TITLE_VIEWS,
    k: int = 3,
    short_window: int = 3,
    batch_size: int = 64,
    catalogue: np.ndarray | None = None,
) -> dict[str, FeatureTable]:
    """The ``titles`` source: one FeatureTable per requested view, every example present.

    ``catalogue``: the unit title vectors of ``encoder`` when the caller already has them.
    """
    dataset_dir = Path(dataset_dir)
    dataset = PreparedDataset(dataset_dir)
    unknown = sorted(set(views) - set(TITLE_VIEWS))
    if unknown:
        raise DataError(f"unknown title view(s) {unknown} (known: {', '.join(TITLE_VIEWS)})")
    fingerprint = dataset_fingerprint(dataset_dir)
    key = encoder.identity_key()
    tables: dict[str, FeatureTable] = {}
    for view in views:
        window = None if view == "long" else short_window
        meta: dict[str, Any] = {
            "source": "titles",
            "view": view,
            "rule": "mean of the unit title vectors of "
            + ("every click of the prefix" if window is None else f"the last {window} clicks")
            + f", re-normalised, localized with k={k}",
            "dataset_fingerprint": fingerprint,
            "encoder_key": key,
            "k": k,
            "window": window,
        }
        path = _title_view_path(dataset_dir, view, key, k)
        cached = load_if_current(path, meta)
        if cached is None:
            if catalogue is None:
                catalogue = embed_catalogue(dataset_dir, encoder, normalize=True, batch_size=batch_size).vectors
            ids, values, offsets = all_examples(dataset)
            raw = l2_normalise(window_means(catalogue, values, offsets, window))
            vectors = localize(raw, catalogue, k, method="exact") if k else raw
            write_safetensors(path, {"example_ids": ids, "vectors": vectors.astype(np.float32)}, meta)
            cached = (ids, vectors)
        ids, vectors = cached
        tables[view] = FeatureTable(ids, vectors, np.ones(len(ids), bool), info={**meta, "file": path.name})
    return tables


def load_if_current(path: Path, meta: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        tensors, stored = load_intents(path)
    except Exception:  # a damaged cache file is rebuilt, never trusted
        return None
    expected = {k: (v if isinstance(v, str) else json.dumps(v, sort_keys=True)) for k, v in meta.items()}
    if any(stored.get(k) != v for k, v in expected.items()):
        return None
    return tensors["example_ids"], tensors["vectors"]


def llm_view(
    dataset_dir: str | Path,
    *,
    template: str,
    llm_identity: dict[str, str],
    encoder: TextEncoder,
    k: int = 3,
    store_path: str | Path | None = None,
    name: str | None = None,
) -> FeatureTable:
    """The ``llm`` source for one prompt template: localized answer vectors from the store.

    Uses the intents file written by ``intentrec intents`` when it is there and current, otherwise
    computes it from the answer store (cheap: answers are only parsed, encoded and localized).
    """
    from intentrec.semantic.store import AnswerStore

    dataset_dir = Path(dataset_dir)
    path = intents_path(dataset_dir, template, llm_identity["model_sha256"], encoder.identity_key(), k, "all")
    tensors = meta = None
    if path.is_file():
        tensors, meta = load_intents(path)
        if meta.get("dataset_fingerprint") != dataset_fingerprint(dataset_dir):
            tensors = None
    if tensors is None:
        with AnswerStore(store_path) as store:
            compute_intents(
                dataset_dir,
                template=template,
                llm_identity=llm_identity,
                encoder=encoder,
                k=k,
                split="all",
                store=store,
            )
        tensors, meta = load_intents(path)
    report_path = path.with_name(path.name + ".json")
    coverage = json.loads(report_path.read_text(encoding="utf-8")).get("coverage", {}) if report_path.is_file() else {}
    info = {
        "source": "llm",
        "view": name or template,
        "template": template,
        "llm": llm_identity,
        "encoder_key": encoder.identity_key(),
        "k": k,
        "file": path.name,
        "coverage": {
            key: coverage.get(key)
            for key in ("examples", "with_intent", "missing", "stale", "empty", "garbage", "fraction")
        },
    }
    counts = tensors.get("intent_counts")
    vectors = tensors["intent_vectors"] if counts is not None else tensors["vectors"]
    return FeatureTable(tensors["example_ids"], vectors, tensors["has_intent"].astype(bool), info=info, counts=counts)
