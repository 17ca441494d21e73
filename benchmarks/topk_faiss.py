"""Top-K search on a synthetic catalogue: exact (torch.topk over all scores) vs FAISS HNSW and IVF
(inner product), recall@K against the exact lists vs search latency, swept over each index's search
breadth (HNSW ``efSearch``, IVF ``nprobe``), with a PNG of the trade-off.

Two catalogues (``--catalogues``):

* ``gaussian``: i.i.d. Gaussian item vectors with a popularity-like norm spread, queries noisy copies
  of random items. No structure at all: the hardest case for any approximate index.
* ``clustered``: items around ``--clusters`` Gaussian centres (within-cluster spread 0.5 of the
  centres'), as trained item tables are (items of one category lie together); same norms and queries.

Timed runs belong on a quiet machine; the ready index is timed, its build separately.

    python benchmarks/topk_faiss.py                                   # 1M items, d=100, K=20
    python benchmarks/topk_faiss.py --items 20000 --queries 64        # a quick check
    python benchmarks/topk_faiss.py --markdown docs/results/topk-faiss.md --png docs/results/topk-faiss.png
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import command_line, machine, write_markdown  # noqa: E402

from intentrec.serving.index import FaissIndex  # noqa: E402


def synthetic(kind: str, items: int, dim: int, queries: int, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "clustered":
        centres = rng.standard_normal((clusters, dim), dtype=np.float32)
        table = centres[rng.integers(0, clusters, items)]
        table += 0.5 * rng.standard_normal((items, dim), dtype=np.float32)
    else:
        table = rng.standard_normal((items, dim), dtype=np.float32)
    table *= rng.lognormal(0.0, 0.25, size=(items, 1)).astype(np.float32)
    picks = rng.integers(0, items, queries)
    noise = 0.5 * rng.standard_normal((queries, dim), dtype=np.float32)
    return table, (table[picks] + noise).astype(np.float32)


def exact_topk(table: torch.Tensor, queries: torch.Tensor, k: int, batch: int) -> np.ndarray:
    out = []
    for start in range(0, queries.shape[0], batch):
        out.append(torch.topk(queries[start : start + batch] @ table.T, k).indices)
    return torch.cat(out).numpy()


def timed(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


BREADTHS = {"faiss-hnsw": (16, 32, 64, 128, 256, 512), "faiss-ivf": (1, 2, 4, 8, 16, 32, 64, 128)}


def measure_catalogue(kind: str, args) -> list[dict]:
    table_np, queries_np = synthetic(kind, args.items, args.dim, args.queries, args.clusters, args.seed)
    table, queries = torch.from_numpy(table_np), torch.from_numpy(queries_np)
    truth = exact_topk(table, queries, args.k, args.batch)
    exact = timed(lambda: exact_topk(table, queries[: args.batch], args.k, args.batch), args.repeats)
    rows = [{"catalogue": kind, "search": "exact (torch.topk)", "breadth": "", "build_s": 0.0, "recall": 1.0,
             "ms_batch": 1000 * exact}]  # fmt: skip
    for index_kind in ("faiss-hnsw", "faiss-ivf"):
        start = time.perf_counter()
        index = FaissIndex(table_np, index_kind)
        build = time.perf_counter() - start
        print(f"{kind}: {index_kind} built in {build:.1f} s", flush=True)
        for breadth in BREADTHS[index_kind]:
            index.search_breadth = breadth
            found = np.concatenate(
                [index.search(queries_np[s : s + args.batch], args.k)[1] for s in range(0, args.queries, args.batch)]
            )
            seconds = timed(lambda index=index: index.search(queries_np[: args.batch], args.k), args.repeats)
            rows.append({"catalogue": kind, "search": index_kind, "breadth": f"{'efSearch' if index_kind == 'faiss-hnsw' else 'nprobe'} {index.search_breadth}",
                         "build_s": build, "recall": recall(found, truth), "ms_batch": 1000 * seconds})  # fmt: skip
            print(
                f"  {rows[-1]['breadth']}: recall {rows[-1]['recall']:.4f}, {rows[-1]['ms_batch']:.2f} ms/batch",
                flush=True,
            )
        del index
    return rows


def plot(rows: list[dict], path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({r["catalogue"] for r in rows})
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4.2), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        for search, marker in (("faiss-hnsw", "o-"), ("faiss-ivf", "s-")):
            part = [r for r in rows if r["catalogue"] == kind and r["search"] == search]
            ax.plot([r["ms_batch"] / args.batch for r in part], [r["recall"] for r in part], marker, label=search)
        exact = next(r for r in rows if r["catalogue"] == kind and r["breadth"] == "")
        ax.axvline(exact["ms_batch"] / args.batch, color="grey", ls="--", label="exact")
        ax.set_xscale("log")
        ax.set_xlabel(f"ms per query (batches of {args.batch})")
        ax.set_ylabel(f"recall@{args.k} vs exact")
        ax.set_title(f"{kind}, {args.items:,} items, d={args.dim}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32, help="queries per search call (a served micro-batch)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--catalogues", nargs="+", choices=["gaussian", "clustered"], default=["clustered", "gaussian"])
    parser.add_argument("--clusters", type=int, default=1000, help="centres of the clustered catalogue")
    parser.add_argument("--threads", type=int, default=None, help="torch/FAISS threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    parser.add_argument("--png", type=Path, default=None, help="also plot recall vs latency here")
    args = parser.parse_args()
    for name in ("items", "dim", "queries", "k", "batch", "repeats", "clusters"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be ≥ 1")
    if args.k > args.items:
        parser.error("--k must not exceed --items")
    if args.threads:
        torch.set_num_threads(args.threads)
        import faiss

        faiss.omp_set_num_threads(args.threads)
    rows = []
    for kind in args.catalogues:
        rows += measure_catalogue(kind, args)
    lines = [
        f"Top-{args.k} over {args.items:,} synthetic items (d={args.dim}), {args.queries} queries, "
        f"batches of {args.batch}; torch/FAISS threads: {args.threads or torch.get_num_threads()}. "
        "HNSW: M 32, efConstruction 80; IVF-Flat: nlist 4√n, trained on ≤ 256 points per list.",
        "",
        "| catalogue | search | breadth | build (s) | recall@K vs exact | ms per batch | ms per query |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['catalogue']} | {r['search']} | {r['breadth']} | {r['build_s']:.1f} | {r['recall']:.4f} | "
            f"{r['ms_batch']:.2f} | {r['ms_batch'] / args.batch:.3f} |"
        )
    lines += ["", f"Machine: {machine()}", f"Command: `{command_line()}`", ""]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        write_markdown(args.markdown, text)
    if args.png:
        plot(rows, args.png, args)


if __name__ == "__main__":
    main()
