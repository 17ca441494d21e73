"""Scoring latency of one served batch with items added through ``POST /v1/items``: the placed rows as
they are (``--cold-calibration none``, the server's scoring before calibration) against the calibrated
settings, in one process, for 0, 10 and 1,000 added items.

Times ``Engine.score`` (batch, forward pass, cold scores, top-K, lists) on seeded sessions of 5
clicks; the run's cold-start map is fitted once (``--cold-start fit``) and the added items (catalogue
titles with a suffix, so no text equals a trained item's) are encoded once, then given to each setting.

    python benchmarks/serve_cold_scoring.py runs/serve-bench/srgnn-beauty --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from intentrec.models.cold_start import ColdScoringConfig
from intentrec.serving.config import ServeConfig
from intentrec.serving.engine import Engine, Query, _cold_scorer, render_text
from intentrec.serving.items import AddedItem

SETTINGS = [("none", 0.0), ("moments", 1.0), ("moments", 0.5), ("quantiles", 1.0)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run folder")
    parser.add_argument("--sessions", type=int, default=32, help="sessions in the batch")
    parser.add_argument("--added", type=int, nargs="+", default=[0, 10, 1000], help="added items")
    parser.add_argument("--repeats", type=int, default=40, help="timed calls per cell (after 5 warm-up calls)")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as folder:
        cfg = ServeConfig(
            items_db=Path(folder) / "items.sqlite", cold_calibration="none", index="exact", threads=args.threads
        )
        engine = Engine.load([args.run], cfg)
        if engine.cold_problem is not None:
            print(f"items cannot be added: {engine.cold_problem}", file=sys.stderr)
            return 2
        run = next(iter(engine.runs.values()))
        n, most = engine.catalogue.num_trained, max(args.added)
        rng = np.random.default_rng(0)
        picked = rng.choice(n, most, replace=False)
        items = [
            AddedItem(i + 1, f"bench-{i}", f"{engine.catalogue.titles[c] or 'item'} (new edition)")
            for i, c in enumerate(picked)
        ]
        start = time.perf_counter()
        encoder = run.rows.text_encoder()
        texts = [render_text(item, run.rows.template) for item in items]
        with torch.inference_mode():
            vectors = torch.from_numpy(np.asarray(encoder.encode(texts, normalize=True), dtype=np.float32))
            rows = run.rows.rows_from_vectors(vectors).float()
        print(f"encoded {most} added items in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        engine.catalogue.append(items)
        with torch.inference_mode():
            base = run.model.scoring_table().detach().float()
            with_rows = torch.cat([base, rows])  # calibration none scores the added rows with the rest
        queries = [Query(tuple(int(i) for i in rng.integers(1, n + 1, 5)), (), args.k) for _ in range(args.sessions)]

        scorers = {}
        for calibration, weight in SETTINGS:
            scorer = None
            if calibration != "none":
                scorer = _cold_scorer(run, ColdScoringConfig(calibration=calibration, text_weight=weight))
                scorer.add(rows, vectors)
            scorers["none (before)" if scorer is None else f"{calibration}, text weight {weight:g}"] = scorer
        times: dict[tuple[str, int], list[float]] = {(name, m): [] for name in scorers for m in args.added}
        for m in args.added:
            engine.catalogue.size = n + m  # the engine scores the first m added items
            for round_ in range(5 + args.repeats):  # the settings interleaved: load drift hits all alike
                for name, scorer in scorers.items():
                    run.cold, run.table = scorer, (with_rows if scorer is None else base)
                    t0 = time.perf_counter()
                    engine.score(run, queries)
                    if round_ >= 5:
                        times[name, m].append((time.perf_counter() - t0) * 1000)
        print(f"| setting | {' | '.join(f'{m} added: median (p90) ms' for m in args.added)} |")
        print(f"|---|{'---:|' * len(args.added)}")
        for name in scorers:
            cells = []
            for m in args.added:
                cell = sorted(times[name, m])
                cells.append(f"{statistics.median(cell):.2f} ({cell[int(0.9 * (len(cell) - 1))]:.2f})")
            print(f"| {name} | {' | '.join(cells)} |", flush=True)
        engine.catalogue.size = n + most
        engine.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
