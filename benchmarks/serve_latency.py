"""Latency and throughput of ``intentrec serve`` for one run, measured against a real server process
on 127.0.0.1 by a bounded async client: p50 / p99 per request and requests/s at each concurrency.

Each level sends at most ``--requests`` requests and runs at most ``--seconds`` seconds, after
``--warmup`` requests; sessions are drawn (seeded) from the run's own catalogue. Timed runs belong
on a quiet machine (the client shares the CPUs with the server; pin them apart with taskset if you can).

    python benchmarks/serve_latency.py runs/srgnn-s0
    python benchmarks/serve_latency.py runs/srgnn-s0 --concurrency 1 8 32 --requests 5000 --markdown docs/results/serve-latency.md
    python benchmarks/serve_latency.py runs/srgnn-s0 --serve-args "--index faiss-hnsw --batch-window-ms 1"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import command_line, machine, write_markdown  # noqa: E402

READY = re.compile(r"ready on (http://\S+)")


def catalogue_ids(run: Path) -> list[str]:
    from intentrec.data.dataset import PreparedDataset

    record = json.loads((run / "config.json").read_text(encoding="utf-8"))
    return PreparedDataset(record["dataset"]["path"]).item_ids()


def start_server(run: Path, extra: list[str], timeout: float) -> tuple[subprocess.Popen, str]:
    cmd = [
        sys.executable,
        "-m",
        "intentrec.cli.main",
        "serve",
        str(run),
        "--port",
        "0",
        "--log-level",
        "warning",
        *extra,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    for line in proc.stdout:
        match = READY.search(line)
        if match:
            return proc, match.group(1)
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise SystemExit(f"the server did not get ready: {' '.join(cmd)}")


async def level(url: str, bodies: list[bytes], concurrency: int, requests: int, seconds: float, warmup: int) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30.0) as client:
        for body in bodies[:warmup]:
            (await client.post("/v1/recommend", content=body, headers=headers)).raise_for_status()
        latencies: list[float] = []
        errors = 0
        next_index = 0
        stop_at = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal next_index, errors
            while next_index < requests and time.perf_counter() < stop_at:
                body = bodies[next_index % len(bodies)]
                next_index += 1
                start = time.perf_counter()
                response = await client.post("/v1/recommend", content=body, headers=headers)
                latencies.append(time.perf_counter() - start)
                errors += response.status_code != 200

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "rps": len(latencies) / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run folder written by intentrec train")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=2000, help="requests per level at most")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds per level at most")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--session-length", type=int, default=5, help="clicks per generated session")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serve-args", default="", help="extra intentrec serve options, quoted")
    parser.add_argument("--url", default=None, help="measure an already running server instead of starting one")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()

    ids = catalogue_ids(args.run)
    rng = np.random.default_rng(args.seed)
    bodies = [
        json.dumps({"session": [ids[i] for i in rng.integers(0, len(ids), args.session_length)], "k": args.k}).encode()
        for _ in range(1000)
    ]
    proc = None
    url = args.url
    if url is None:
        proc, url = start_server(args.run, shlex.split(args.serve_args), timeout=300)
    try:
        results = [
            asyncio.run(level(url, bodies, c, args.requests, args.seconds, args.warmup)) for c in args.concurrency
        ]
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    lines = [
        f"intentrec serve {args.run.name} {args.serve_args}".rstrip()
        + f": POST /v1/recommend, k={args.k}, sessions of {args.session_length} clicks",
        "",
        "| concurrency | requests | errors | p50 (ms) | p99 (ms) | requests/s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['concurrency']} | {r['requests']} | {r['errors']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
            f"| {r['rps']:.0f} |"
        )
    lines += [
        "",
        f"Machine: {machine()}, {os.cpu_count()} CPUs shared by client and server",
        f"Command: `{command_line()}`",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        write_markdown(args.markdown, text)


if __name__ == "__main__":
    main()
