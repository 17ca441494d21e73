import numpy as np
import pytest

from intentrec.errors import ConfigError

pytest.importorskip("faiss")

from intentrec.serving.index import FaissIndex  # noqa: E402


def _catalogue(n: int = 4000, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((n, d)).astype(np.float32)
    queries = (table[rng.integers(0, n, 32)] + 0.3 * rng.standard_normal((32, d))).astype(np.float32)
    return table, queries


def _recall(index: FaissIndex, table: np.ndarray, queries: np.ndarray, k: int = 10) -> float:
    truth = np.argsort(-(queries @ table.T), axis=1)[:, :k]
    found = index.search(queries, k)[1]
    return float(np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth, strict=True)]))


@pytest.mark.parametrize("kind", ["faiss-ivf", "faiss-hnsw"])
def test_a_wider_search_finds_more_of_the_exact_top_k(kind):
    table, queries = _catalogue()
    index = FaissIndex(table, kind)
    index.search_breadth = 1
    narrow = _recall(index, table, queries)
    index.search_breadth = 10_000  # IVF: every list (capped at nlist); HNSW: efSearch beyond the catalogue
    wide = _recall(index, table, queries)
    assert wide > narrow
    assert wide >= 0.99
    if kind == "faiss-ivf":
        assert index.search_breadth == index.index.nlist


def test_a_search_breadth_below_one_is_refused():
    table, _ = _catalogue(n=500)
    index = FaissIndex(table, "faiss-ivf")
    with pytest.raises(ConfigError, match="search breadth"):
        index.search_breadth = 0


def test_the_server_sets_the_search_breadth_it_is_given(tiny_run):
    from intentrec.serving.config import ServeConfig
    from intentrec.serving.engine import Engine

    engine = Engine.load([str(tiny_run)], ServeConfig(index="faiss-hnsw", faiss_breadth=7))
    try:
        assert engine.runs["srgnn"].index.search_breadth == 7
    finally:
        engine.close()
    with pytest.raises(ValueError, match="faiss_breadth"):
        ServeConfig(index="faiss-hnsw", faiss_breadth=0)
