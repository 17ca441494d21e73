"""Approximate top-K over an inner-product item table with FAISS (HNSW or IVF).

Exact top-K is ``torch.topk`` over the model's own scores (in the engine); this index is for
catalogues too large to score in full per request, and only for models whose scores rank like
``session · table`` (checked at start-up, see ``engine.inner_product_problem``).
"""

from __future__ import annotations

import math

import numpy as np

from intentrec.errors import ConfigError


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ConfigError(
            "a FAISS index needs the faiss-cpu package: pip install 'intentrec[serve]' (or use --index exact)"
        ) from None
    return faiss


class FaissIndex:
    """Inner-product index over item rows; ``add`` appends rows (items added while serving).

    Not thread-safe: the server calls ``search`` and ``add`` from its one model thread.
    """

    def __init__(self, table: np.ndarray, kind: str, *, hnsw_m: int = 32, ef_search: int = 128, nprobe: int = 16):
        faiss = _faiss()
        table = np.ascontiguousarray(table, dtype=np.float32)
        n, d = table.shape
        self.kind = kind
        if kind == "faiss-hnsw":
            self.index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = 80
            self.index.hnsw.efSearch = ef_search
        elif kind == "faiss-ivf":
            nlist = max(1, min(int(4 * math.sqrt(n)), n // 39 or 1))  # FAISS wants ≥ 39 points per list
            quantizer = faiss.IndexFlatIP(d)
            self.index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            sample = table if n <= 256 * nlist else table[np.random.default_rng(0).choice(n, 256 * nlist, False)]
            self.index.train(sample)
            self.index.nprobe = min(nprobe, nlist)
            self._quantizer = quantizer  # the IVF index does not own it
        else:
            raise ConfigError(f"unknown FAISS index '{kind}' (known: faiss-hnsw, faiss-ivf)")
        self.index.add(table)

    @property
    def search_breadth(self) -> int:
        """HNSW ``efSearch`` or IVF ``nprobe``: how much of the index a search visits."""
        return int(self.index.hnsw.efSearch if self.kind == "faiss-hnsw" else self.index.nprobe)

    @search_breadth.setter
    def search_breadth(self, value: int) -> None:
        if value < 1:
            raise ConfigError(f"the search breadth (efSearch / nprobe) must be ≥ 1, got {value}")
        if self.kind == "faiss-hnsw":
            self.index.hnsw.efSearch = int(value)
        else:
            self.index.nprobe = min(int(value), int(self.index.nlist))

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def add(self, rows: np.ndarray) -> None:
        self.index.add(np.ascontiguousarray(rows, dtype=np.float32))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(inner products, columns) ``[B, k]``; column −1 where fewer than k were found."""
        k = max(1, min(k, self.size))
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
