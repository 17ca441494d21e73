"""``intentrec serve``: the HTTP recommendation service (FastAPI on uvicorn)."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import typer

from intentrec.errors import ConfigError

SERVE_HELP = """Serve next-item recommendations over HTTP for one or more trained runs.

Each RUN is a run folder (its name is the folder's) or NAME=RUN. Runs must share one item catalogue;
the first is the default model of POST /v1/recommend. Every model is loaded and checked once at
start-up: a run that cannot serve new sessions is refused then, with its reason.

Endpoints: POST /v1/recommend, GET /v1/items/{id}, POST /v1/items (with --items-db), GET /healthz,
/readyz, /metrics (Prometheus); the OpenAPI schema is at /docs. See docs/serving.md.

[bold]Examples[/bold]

  intentrec serve runs/srgnn-s0

  intentrec serve srgnn=runs/srgnn-s0 niser=runs/niser-s0 --port 8080 --items-db serve/items.sqlite

  intentrec serve runs/srgnn-s0 --index faiss-hnsw --max-batch 32 --batch-window-ms 1

  curl -s localhost:8000/v1/recommend -H 'content-type: application/json' -d '{"session": ["B0001"], "k": 5}'
"""


def _listen(host: str, port: int) -> socket.socket:
    """Bind before uvicorn starts, so --port 0 can print the port the system chose."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from None
    sock.set_inheritable(True)
    return sock


def serve_command(
    runs: list[str] = typer.Argument(..., help="Run folders (RUN or NAME=RUN); the first is the default model."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", help="Port to listen on (0: any free port; the ready line says which)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto."),
    index: str = typer.Option(
        "auto",
        "--index",
        help="Top-K search: exact (torch.topk), faiss-hnsw, faiss-ivf, or auto (FAISS above --faiss-above items).",
    ),
    faiss_breadth: int | None = typer.Option(
        None,
        "--faiss-breadth",
        help="FAISS search breadth: HNSW efSearch / IVF nprobe (default 128 / 16); wider = higher recall, slower.",
    ),
    faiss_above: int = typer.Option(
        1_000_000, "--faiss-above", help="--index auto: catalogues larger than this use FAISS HNSW."
    ),
    max_batch: int = typer.Option(64, "--max-batch", help="Most requests scored in one forward pass."),
    batch_window_ms: float = typer.Option(0.5, "--batch-window-ms", help="How long a batch waits for more requests."),
    max_session: int = typer.Option(200, "--max-session", help="Longest session a request may give."),
    max_k: int = typer.Option(1000, "--max-k", help="Largest k a request may ask for."),
    max_body_bytes: int = typer.Option(65_536, "--max-body-bytes", help="Larger request bodies get 413."),
    items_db: Path | None = typer.Option(
        None, "--items-db", help="SQLite file of added items (POST /v1/items); kept across restarts."
    ),
    cold_start: str = typer.Option(
        "fit",
        "--cold-start",
        help="Map of added items' texts to item rows: fit (at start-up), off, a saved map file, or python:MODULE:FACTORY.",
    ),
    encoder: str | None = typer.Option(
        None,
        "--encoder",
        help="Text encoder of a cold-start map fitted at start-up (default: the model's own, else minilm).",
    ),
    cold_calibration: str = typer.Option(
        "moments",
        "--cold-calibration",
        help="Added items' scores vs the trained items', per session, as intentrec evaluate --cold-start: moments "
        "(their mean and deviation), quantiles, or none (the placed rows' scores as they are).",
    ),
    cold_text_weight: float | None = typer.Option(
        None,
        "--cold-text-weight",
        help="Weight of the session–item text cosine in added items' calibrated scores, the rest the placed row's "
        "score (default: 1 with a calibration, 0 with none).",
    ),
    items_refresh_s: float = typer.Option(
        2.0, "--items-refresh-s", help="Pick up other workers' added items this often (0: never)."
    ),
    threads: int | None = typer.Option(None, "--threads", help="Torch threads of the model worker."),
    log_level: str = typer.Option("info", "--log-level", help="critical, error, warning, info or debug."),
) -> None:
    import uvicorn

    from intentrec.serving.app import create_app
    from intentrec.serving.config import ServeConfig
    from intentrec.serving.engine import Engine

    cfg = ServeConfig.build(
        {
            "host": host, "port": port, "device": device, "index": index, "faiss_breadth": faiss_breadth,
            "faiss_above": faiss_above,
            "max_batch": max_batch, "batch_window_ms": batch_window_ms, "max_session": max_session, "max_k": max_k,
            "max_body_bytes": max_body_bytes, "items_db": items_db, "cold_start": cold_start, "encoder": encoder,
            "cold_calibration": cold_calibration, "cold_text_weight": cold_text_weight,
            "items_refresh_s": items_refresh_s, "threads": threads, "log_level": log_level,
        },
        where="intentrec serve options",
    )  # fmt: skip
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine = Engine.load(runs, cfg)
    sock = _listen(cfg.host, cfg.port)
    bound = sock.getsockname()
    shown_host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    app = create_app(
        engine,
        cfg,
        announce=f"intentrec serve: ready on http://{shown_host}:{bound[1]} (models: {', '.join(engine.runs)})",
        freeze_gc=True,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app, loop="auto", http="auto", log_level=cfg.log_level, access_log=False,
            timeout_graceful_shutdown=5, server_header=False,
        )
    )  # fmt: skip
    try:
        server.run(sockets=[sock])
    finally:
        engine.close()


def register(app: typer.Typer) -> None:
    app.command("serve", help=SERVE_HELP)(serve_command)
