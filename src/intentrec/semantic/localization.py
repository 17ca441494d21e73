"""Intent localization: snap a free-text LLM answer onto the item catalogue.

An LLM answer ("red nail polish") is embedded with the same text encoder as the catalogue titles. Its
``k`` most cosine-similar catalogue items are combined into one vector, each weighted by its
similarity normalised to sum to 1::

    w_j = max(s_j, 0) / sum_i max(s_i, 0)          intent = sum_j w_j * catalogue[top_j]

``k = 0`` returns the answer embedding itself.

Negative similarities: they are clamped to 0 before normalising (an item pointing away from the
answer should not pull the intent towards itself with a negative weight that flips its direction).
If all ``k`` similarities are ≤ 0 the weights fall back to uniform ``1/k``.

Ties: the exact search orders items by similarity, then by catalogue row (lower row first), so the
result does not depend on sort stability. FAISS orders ties its own way; the combined vector only
differs when tied items have different vectors.

Two defects of the LLM4SBR authors' ``Intent_Localization.py`` that we deliberately do NOT copy:

1. The weighted sum is divided by ``k`` (``sum(emb * sim) / 5``) instead of by the sum of the
   similarities, so the intent's scale shrinks with lower similarities and with larger ``k``.
2. It zips the top-k embeddings with ``similarities.flatten()`` — the similarities of catalogue items
   0…k−1, not those of the top-k items — so the weights belong to unrelated items.

(It also passes embeddings of long texts through a freshly, randomly initialised ``nn.Linear`` to
fix their width; we encode with a fixed encoder and truncate instead.)
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from intentrec.errors import ConfigError

Method = Literal["auto", "exact", "faiss"]

#: ``method="auto"`` switches to FAISS from this catalogue size on.
FAISS_MIN_CATALOGUE = 100_000
_EPS = 1e-12


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, _EPS)


def _check(answers: np.ndarray, catalogue: np.ndarray, k: int) -> None:
    if answers.ndim != 2 or catalogue.ndim != 2:
        raise ConfigError("localization expects 2-D arrays [m, d] and [n, d]")
    if answers.shape[1] != catalogue.shape[1]:
        raise ConfigError(
            f"answer embeddings have width {answers.shape[1]} but catalogue embeddings have width "
            f"{catalogue.shape[1]}: they must come from the same encoder"
        )
    if k < 0 or k > catalogue.shape[0]:
        raise ConfigError(f"k must be between 0 and the catalogue size {catalogue.shape[0]}, got {k}")


def _topk_rows(sims: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of each row of ``sims`` [c, n], ordered by (similarity desc, column asc)."""
    values, idx = torch.topk(sims, k, dim=1)
    kth = values[:, -1:]
    # torch.topk breaks ties arbitrarily. Where items tie with the k-th value beyond the k slots,
    # redo those (rare) rows so the lowest columns win and the result is deterministic.
    tied_rows = torch.nonzero((sims >= kth).sum(dim=1) > k).flatten()
    if len(tied_rows):
        sub, sub_kth = sims[tied_rows], kth[tied_rows]
        above = sub > sub_kth
        equal = sub == sub_kth
        need_equal = k - above.sum(dim=1, keepdim=True)
        chosen = above | (equal & (torch.cumsum(equal.to(torch.int32), dim=1) <= need_equal))
        idx[tied_rows] = torch.nonzero(chosen)[:, 1].reshape(len(tied_rows), k)
    # Order the k chosen items by column, then stably by similarity: ties keep the lower column first.
    idx = torch.sort(idx, dim=1).values
    chosen_sims = torch.gather(sims, 1, idx)
    order = torch.sort(chosen_sims, dim=1, descending=True, stable=True).indices
    return torch.gather(chosen_sims, 1, order), torch.gather(idx, 1, order)


def topk_exact(
    answers_unit: np.ndarray, catalogue_unit: np.ndarray, k: int, *, chunk_rows: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k by chunked matrix products (inputs already L2-normalised)."""
    m = answers_unit.shape[0]
    sims_out = np.empty((m, k), dtype=np.float32)
    idx_out = np.empty((m, k), dtype=np.int64)
    catalogue_t = torch.from_numpy(np.ascontiguousarray(catalogue_unit, dtype=np.float32))
    with torch.no_grad():
        for start in range(0, m, chunk_rows):
            block = torch.from_numpy(np.ascontiguousarray(answers_unit[start : start + chunk_rows]))
            s, i = _topk_rows(block @ catalogue_t.T, k)
            sims_out[start : start + len(block)] = s.numpy()
            idx_out[start : start + len(block)] = i.numpy()
    return sims_out, idx_out


def topk_faiss(answers_unit: np.ndarray, catalogue_unit: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product search with a FAISS ``IndexFlatIP`` (inputs already L2-normalised)."""
    try:
        import faiss
    except ImportError:
        raise ConfigError(
            "FAISS search was requested but faiss-cpu is not installed (pip install 'intentrec[semantic]')"
        ) from None
    index = faiss.IndexFlatIP(catalogue_unit.shape[1])
    index.add(np.ascontiguousarray(catalogue_unit, dtype=np.float32))
    sims, idx = index.search(np.ascontiguousarray(answers_unit, dtype=np.float32), k)
    return sims.astype(np.float32), idx.astype(np.int64)


def similarity_weights(sims: np.ndarray) -> np.ndarray:
    """Clamp at 0 and normalise each row to sum 1; rows with no positive similarity become uniform."""
    clamped = np.maximum(np.asarray(sims, dtype=np.float64), 0.0)
    totals = clamped.sum(axis=1, keepdims=True)
    k = sims.shape[1]
    uniform = np.full_like(clamped, 1.0 / max(k, 1))
    weights = np.where(totals > 0, clamped / np.where(totals > 0, totals, 1.0), uniform)
    return weights.astype(np.float32)


def resolve_method(method: Method, catalogue_size: int) -> Literal["exact", "faiss"]:
    if method == "exact" or method == "faiss":
        return method
    if method != "auto":
        raise ConfigError(f"unknown search method '{method}' (known: auto, exact, faiss)")
    if catalogue_size >= FAISS_MIN_CATALOGUE:
        try:
            import faiss  # noqa: F401

            return "faiss"
        except ImportError:
            return "exact"
    return "exact"


def top_k_items(
    answers: np.ndarray,
    catalogue: np.ndarray,
    k: int,
    *,
    method: Method = "auto",
    unit_catalogue: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities [m, k] and catalogue rows [m, k] of each answer's k nearest items.

    ``unit_catalogue``: the catalogue already L2-normalised, when a caller searches it again and again
    (a server: normalising 12k × 384 floats per request costs more than the search).
    """
    answers = np.asarray(answers, dtype=np.float32)
    catalogue = np.asarray(catalogue, dtype=np.float32)
    _check(answers, catalogue, k)
    if k == 0 or answers.shape[0] == 0:
        return np.zeros((answers.shape[0], k), np.float32), np.zeros((answers.shape[0], k), np.int64)
    a, c = l2_normalise(answers), l2_normalise(catalogue) if unit_catalogue is None else unit_catalogue
    if resolve_method(method, catalogue.shape[0]) == "faiss":
        return topk_faiss(a, c, k)
    return topk_exact(a, c, k)


def localize(
    answers: np.ndarray,
    catalogue: np.ndarray,
    k: int,
    *,
    method: Method = "auto",
    chunk_rows: int = 8192,
    unit_catalogue: np.ndarray | None = None,
) -> np.ndarray:
    """Intent vectors [m, d]: similarity-weighted mean of each answer's top-k catalogue vectors.

    The catalogue vectors are combined as given (normalised or not, as the caller stored them);
    similarity is always cosine.
    """
    answers = np.asarray(answers, dtype=np.float32)
    catalogue = np.asarray(catalogue, dtype=np.float32)
    _check(answers, catalogue, k)
    if k == 0:
        return answers.copy()
    sims, idx = top_k_items(answers, catalogue, k, method=method, unit_catalogue=unit_catalogue)
    weights = similarity_weights(sims)
    out = np.empty_like(answers)
    for start in range(0, len(answers), chunk_rows):
        rows = slice(start, start + chunk_rows)
        out[rows] = np.einsum("mk,mkd->md", weights[rows], catalogue[idx[rows]])
    return out
