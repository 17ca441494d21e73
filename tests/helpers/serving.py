"""Helpers of the serving tests: a tiny trained run, the server as a real process, a stand-in cold-start map,
and a real one over a deterministic stand-in text encoder (importing this module registers it)."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import torch

from tests.helpers.hash_encoder import register_hash_encoder
from tests.helpers.tinyrun import FAST_TRAINER

ROOT = Path(__file__).resolve().parents[2]
READY = re.compile(r"ready on (http://\S+)")
STANDIN = "python:tests.helpers.serving:standin_map"
#: the stand-in map has no text encoder: calibrated, it is served with text weight 0 (the placed rows' scores)
STANDIN_ARGS = ("--cold-start", STANDIN, "--cold-text-weight", "0")
HASH_ENCODER = "test-serve-hash"
#: a ridge map (intentrec.models.cold_start) fitted at start-up over the stand-in encoder HASH_ENCODER
HASH_MAP = "python:tests.helpers.serving:hash_map"


register_hash_encoder(HASH_ENCODER, 16)


def hash_map(model, dataset):
    """``--cold-start python:tests.helpers.serving:hash_map``: a map fitted as ``--cold-start fit`` fits one."""
    from intentrec.models.cold_start import fit_cold_start_map

    return fit_cold_start_map(model, dataset, HASH_ENCODER)


def train_tiny_run(data: Path, out: Path, model: str = "srgnn", **method) -> Path:
    """A real backbone (so a separate server process can load it) trained briefly on a tiny dataset."""
    from intentrec.training import train

    train(
        data,
        model,
        {"embedding_dim": 8},
        {**FAST_TRAINER, "epochs": 2},
        out=out,
        progress=False,
        method=method.pop("method", None),
        method_config=method or None,
    )
    return out


class StandInMap:
    """Cold-start stand-in: a text equal to a catalogue title gets that item's scoring row, any other
    text the mean row. So an added twin of item X scores exactly like X."""

    template = "title/1"

    def __init__(self, table: torch.Tensor, titles: list[str | None]):
        self.table = table.detach().float()
        self.by_title = {t: i for i, t in enumerate(titles) if t is not None}

    def rows(self, texts: list[str]) -> torch.Tensor:
        mean = self.table.mean(0)
        return torch.stack([self.table[self.by_title[t]] if t in self.by_title else mean for t in texts])


def standin_map(model, dataset) -> StandInMap:
    return StandInMap(model.scoring_table(), dataset.titles())


class Server:
    """``intentrec serve`` as a child process on a port the system chose; always stopped on exit."""

    def __init__(self, *args: str | Path, timeout: float = 180.0):
        self.args = [str(a) for a in args]
        self.timeout = timeout
        self.url = ""
        self.proc: subprocess.Popen | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []

    def start(self) -> Server:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "intentrec.cli.main", "serve", *self.args, "--port", "0", "--threads", "1",
             "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                raise RuntimeError(f"the server exited ({self.proc.wait()}):\n" + "".join(self.output))
            match = READY.search(line)
            if match:
                self.url = match.group(1)
                return self
        self.stop()
        raise RuntimeError("the server did not get ready in time:\n" + "".join(self.output))

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60.0)

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=20)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run_to_completion(*args: str | Path, timeout: float = 180.0) -> subprocess.CompletedProcess:
    """``intentrec serve ...`` expected to exit by itself (a refused start-up)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "intentrec.cli.main", "serve", *map(str, args), "--port", "0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def recommend(client: httpx.Client, session: list[str], **fields) -> dict:
    response = client.post("/v1/recommend", json={"session": session, **fields})
    assert response.status_code == 200, response.text
    return json.loads(response.content)
