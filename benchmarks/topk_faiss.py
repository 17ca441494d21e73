"""Top-K search on a synthetic catalogue: exact (torch.topk over all scores) vs FAISS HNSW and IVF
(inner product), recall@K against the exact lists and search latency per batch of queries.

The catalogue is Gaussian item vectors with a popularity-like norm spread; queries are noisy copies
of random items (so the true neighbours are not all ties). Timed runs belong on a quiet machine.

    python benchmarks/topk_faiss.py                                   # 1M items, d=100, K=20
    python benchmarks/topk_faiss.py --items 20000 --queries 64        # a quick check
    python benchmarks/topk_faiss.py --markdown docs/results/topk-faiss.md
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


def synthetic(items: int, dim: int, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((items, dim), dtype=np.float32)
    table *= rng.lognormal(0.0, 0.25, size=(items, 1)).astype(np.float32)
    picks = rng.integers(0, items, queries)
    noise = rng.standard_normal((queries, dim), dtype=np.float32)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32, help="queries per search call (a served micro-batch)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch/FAISS threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        import faiss

        faiss.omp_set_num_threads(args.threads)
    table_np, queries_np = synthetic(args.items, args.dim, args.queries, args.seed)
    table, queries = torch.from_numpy(table_np), torch.from_numpy(queries_np)
    truth = exact_topk(table, queries, args.k, args.batch)
    rows = []
    per_batch = timed(lambda: exact_topk(table, queries[: args.batch], args.k, args.batch), args.repeats)
    rows.append(("exact (torch.topk)", 0.0, 1.0, per_batch))
    for kind in ("faiss-hnsw", "faiss-ivf"):
        start = time.perf_counter()
        index = FaissIndex(table_np, kind)
        build = time.perf_counter() - start
        found = np.concatenate(
            [index.search(queries_np[s : s + args.batch], args.k)[1] for s in range(0, args.queries, args.batch)]
        )
        per_batch = timed(lambda index=index: index.search(queries_np[: args.batch], args.k), args.repeats)
        rows.append((kind, build, recall(found, truth), per_batch))
    lines = [
        f"Top-{args.k} over {args.items:,} synthetic items (d={args.dim}), {args.queries} queries, "
        f"batches of {args.batch}",
        "",
        "| search | build (s) | recall@K vs exact | ms per batch | ms per query |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, build, rec, seconds in rows:
        lines.append(f"| {name} | {build:.1f} | {rec:.4f} | {1000 * seconds:.2f} | {1000 * seconds / args.batch:.3f} |")
    lines += ["", f"Machine: {machine()}", f"Command: `{command_line()}`", ""]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        write_markdown(args.markdown, text)


if __name__ == "__main__":
    main()
