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
import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

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


class Connection:
    """One HTTP/1.1 keep-alive connection, one request at a time (what each client worker holds).

    A few lines of asyncio streams instead of a general client: at concurrency 32 httpx's pool
    spent ~3.6 ms of client CPU per request (it scans every pooled connection per request), so on
    two shared cores the client, not the server, set the throughput.
    """

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        status = int(status_line.split(b" ", 2)[1])
        length, chunked, close = None, False, False
        while (line := await self.reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value
            elif name == b"connection":
                close = value == b"close"
        if chunked:
            parts = []
            while size := int((await self.reader.readline()).split(b";")[0], 16):
                parts.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            while await self.reader.readline() not in (b"\r\n", b""):
                pass
            data = b"".join(parts)
        else:
            data = await self.reader.readexactly(length or 0)
        if close:
            await self.close()
        return status, data

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


async def level(url: str, bodies: list[bytes], concurrency: int, requests: int, seconds: float, warmup: int) -> dict:
    """``concurrency`` workers, each with its own keep-alive connection, send requests back to back."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None, url
    connections = [Connection(parts.hostname, parts.port) for _ in range(concurrency)]
    try:
        for i, body in enumerate(bodies[:warmup]):
            status, data = await connections[i % concurrency].post("/v1/recommend", body)
            if status != 200:
                raise SystemExit(f"warm-up request failed with {status}: {data[:300]!r}")
        latencies: list[float] = []
        errors = 0
        next_index = 0
        stop_at = time.perf_counter() + seconds

        async def worker(connection: Connection) -> None:
            nonlocal next_index, errors
            while next_index < requests and time.perf_counter() < stop_at:
                body = bodies[next_index % len(bodies)]
                next_index += 1
                start = time.perf_counter()
                status, _ = await connection.post("/v1/recommend", body)
                latencies.append(time.perf_counter() - start)
                errors += status != 200

        start = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in connections))
        wall = time.perf_counter() - start
    finally:
        for connection in connections:
            await connection.close()
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
