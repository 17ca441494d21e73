"""Catalogue embedding speed: items per second of each encoder on the first N Beauty titles.

    .venv/bin/python benchmarks/item_embedding_speed.py --specs minilm mpnet llm:smollm2:mean --n 2000 --threads 2

For each spec it loads the encoder and embeds 8 warm-up titles (reported as load seconds), then
embeds the first ``--n`` titles of ``items.csv`` (``--items``, default the Beauty 2014 5-core
catalogue under the data root) in batches of ``--batch-size``, normalised, without the embedding
cache. It prints wall-clock items/s and items per CPU-second of this process (all its threads; a
server behind an ``openai:`` spec is not counted), with the load average before and after, since a
shared machine makes the wall-clock figure noisy. An item without a title is embedded as
``item <item_id>``, as ``intentrec embed`` does.

``--threads`` sets torch's intra-op threads and ``n_threads`` of the ``llm:`` specs.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--specs", nargs="+", default=["minilm", "llm:smollm2:mean"], help="encoder specs")
    p.add_argument("--n", type=int, default=2000, help="how many titles (from the top of items.csv)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--items", type=Path, default=None, help="items.csv with item_id,title")
    return p.parse_args()


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    args = _args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import pandas as pd
    import torch

    from intentrec.paths import data_root
    from intentrec.semantic.encoders import get_encoder

    torch.set_num_threads(args.threads)
    items_csv = args.items or data_root() / "amazon/beauty-2014-5core/items.csv"
    frame = pd.read_csv(items_csv, dtype=str, keep_default_na=False).head(args.n)
    texts = [t if t.strip() else f"item {i}" for i, t in zip(frame["item_id"], frame["title"])]
    words = sum(len(t.split()) for t in texts) / max(len(texts), 1)
    print(f"{len(texts)} titles from {items_csv.name} ({words:.1f} words on average), {args.threads} threads")
    print("| spec | dim | load s | items/s (wall) | items per CPU-second | load average before → after |")
    print("|---|---|---|---|---|---|")
    for spec in args.specs:
        options = {"n_threads": args.threads} if spec.startswith("llm:") else {}
        before = os.getloadavg()[0]
        t0 = time.perf_counter()
        encoder = get_encoder(spec, **options)
        encoder.encode(texts[:8], normalize=True, batch_size=args.batch_size)
        load_s = time.perf_counter() - t0
        cpu0, t1 = _cpu_seconds(), time.perf_counter()
        vectors = encoder.encode(texts, normalize=True, batch_size=args.batch_size)
        wall, cpu = time.perf_counter() - t1, _cpu_seconds() - cpu0
        after = os.getloadavg()[0]
        print(
            f"| `{spec}` | {vectors.shape[1]} | {load_s:.1f} | {len(texts) / wall:.1f} | "
            f"{len(texts) / max(cpu, 1e-9):.1f} | {before:.1f} → {after:.1f} |",
            flush=True,
        )
        close = getattr(encoder, "close", None)
        if close is not None:
            close()
        del encoder
    return 0


if __name__ == "__main__":
    sys.exit(main())
