"""The FastAPI app of ``intentrec serve`` over a loaded :class:`~intentrec.serving.engine.Engine`.

Handlers do only what a request needs: map its ids through the precomputed lookup, hand one query
to the model's micro-batcher, and write the response with orjson (no response-model validation).
"""

import asyncio
import contextlib
import gc
import logging
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from intentrec import __version__
from intentrec.errors import IntentrecError
from intentrec.serving.batching import MicroBatcher
from intentrec.serving.config import ServeConfig
from intentrec.serving.engine import Engine, Query, item_of
from intentrec.serving.metrics import Metrics, ObserveMiddleware
from intentrec.serving.schemas import ErrorOut, Health, ItemIn, ItemOut, RecommendResponse, recommend_request_model

log = logging.getLogger("intentrec.serve")

DESCRIPTION = """Next-item recommendations for sessions given as item ids, from runs trained with
`intentrec train`. Items known only by their text can be added (`POST /v1/items`) and are ranked at
once, through the run's cold-start map. See docs/serving.md."""


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def _invalid(field: list[str | int], message: str, value: Any) -> Response:
    """A 422 in FastAPI's own validation-error shape, naming the field."""
    return _json({"detail": [{"type": "value_error", "loc": ["body", *field], "msg": message, "input": value}]}, 422)


def create_app(engine: Engine, cfg: ServeConfig, *, announce: str | None = None, freeze_gc: bool = False) -> FastAPI:
    """The app; ``announce`` is printed to stdout once the batchers run (the CLI's "ready" line).

    ``freeze_gc``: once started, move every object alive (modules, models, catalogue: ~250k objects)
    out of the garbage collector's reach (``gc.freeze``), so that its full collections, which a
    busy server triggers every few seconds, scan only what was made since instead of stalling every
    request in flight for tens to hundreds of milliseconds. For a process that only serves (the CLI
    and ``app_from_env`` set it); objects frozen are never collected as cyclic garbage.
    """
    metrics = Metrics()
    batchers: dict[str, MicroBatcher] = {}
    refresher: list[asyncio.Task] = []
    RecommendRequest = recommend_request_model(cfg.max_session, cfg.max_k, list(engine.runs))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        for name, run in engine.runs.items():
            batcher = MicroBatcher(
                lambda queries, run=run: engine.score(run, queries),
                engine.executor,
                max_batch=cfg.max_batch,
                window=cfg.batch_window_ms / 1000,
                on_batch=metrics.batch_size.labels(name).observe,
            )
            batcher.start()
            batchers[name] = batcher
        if engine.store is not None and engine.cold_problem is None and cfg.items_refresh_s > 0:
            refresher.append(asyncio.get_running_loop().create_task(_refresh()))
        metrics.items.set(engine.catalogue.size)
        if freeze_gc:
            gc.collect()
            gc.freeze()
        if announce:
            sys.stdout.write(announce + "\n")
            sys.stdout.flush()
        try:
            yield
        finally:
            for task in refresher:
                task.cancel()
            for batcher in batchers.values():
                await batcher.stop()

    async def _refresh() -> None:
        """Pick up items other workers added (same SQLite file); one sync at a time, in the model thread."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(cfg.items_refresh_s)
            try:
                await loop.run_in_executor(engine.executor, engine.sync_items)
                metrics.items.set(engine.catalogue.size)
            except Exception:  # noqa: BLE001 - a failed sync is retried at the next tick
                log.exception("syncing added items failed")

    app = FastAPI(
        title="intentrec",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        responses={413: {"model": ErrorOut, "description": "request body too large"}},
    )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        errors = [
            {"type": e.get("type", "value_error"), "loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")),
             "input": _safe_input(e.get("input"))}
            for e in exc.errors()
        ]  # fmt: skip
        return _json({"detail": errors}, 422)

    @app.post(
        "/v1/recommend",
        response_model=RecommendResponse,
        summary="Top-k next items for a session",
        responses={422: {"description": "invalid request; each error names its field (loc)"}},
    )
    async def recommend(body: RecommendRequest) -> Response:  # type: ignore[valid-type]
        name = body.model.value if body.model is not None else engine.default
        catalogue = engine.catalogue
        size, trained = catalogue.size, catalogue.num_trained
        history: list[int] = []
        seen: list[int] = []
        unknown: list[tuple[int, str]] = []
        not_in_model: list[str] = []
        for pos, item_id in enumerate(body.session):
            col = catalogue.column(item_id, size)
            if col is None:
                unknown.append((pos, item_id))
                continue
            seen.append(col)
            if col < trained:
                history.append(col + 1)
            else:
                not_in_model.append(item_id)
        if unknown and body.strict:
            return _json(
                {"detail": [
                    {"type": "value_error", "loc": ["body", "session", pos], "msg": f"unknown item id {item_id!r}",
                     "input": item_id}
                    for pos, item_id in unknown
                ]},
                422,
            )  # fmt: skip
        if not history:
            return _invalid(["session"], "none of the session's item ids is known to the model", body.session)
        if body.k > size:
            return _invalid(["k"], f"k is larger than the catalogue ({size} items)", body.k)
        exclude = tuple(dict.fromkeys(seen)) if body.exclude_seen else ()
        ranked = await batchers[name].submit(Query(tuple(history), exclude, body.k))
        ids, titles = catalogue.ids, catalogue.titles
        return _json(
            {
                "model": name,
                "items": [{"item_id": ids[c], "title": titles[c], "score": s} for c, s in ranked],
                "unknown": [item_id for _, item_id in unknown],
                "not_in_model": not_in_model,
            }
        )

    @app.get(
        "/v1/items/{item_id:path}",
        response_model=ItemOut,
        summary="One item of the catalogue, trained or added",
        responses={404: {"model": ErrorOut}},
    )
    async def get_item(item_id: str) -> Response:
        item = item_of(engine.catalogue, item_id)
        if item is None:
            return _json({"detail": f"unknown item id {item_id!r}"}, 404)
        return _json(item.to_dict())

    @app.post(
        "/v1/items",
        response_model=ItemOut,
        status_code=201,
        summary="Add an item known only by its text; it is ranked at once and kept across restarts",
        responses={409: {"model": ErrorOut, "description": "the id exists, or this server cannot add items"}},
    )
    async def add_item(body: ItemIn) -> Response:
        problem = engine.cold_problem
        if problem is not None:
            return _json({"detail": f"items cannot be added: {problem}"}, 409)
        if body.item_id in engine.catalogue.lookup:
            return _json({"detail": f"item {body.item_id!r} exists already"}, 409)
        loop = asyncio.get_running_loop()
        try:
            stored = await loop.run_in_executor(
                engine.executor, engine.add_item, body.item_id, body.title, body.description, list(body.categories)
            )
        except KeyError:
            return _json({"detail": f"item {body.item_id!r} exists already"}, 409)
        except IntentrecError as exc:
            return _json({"detail": f"the item could not be embedded: {exc}"}, 422)
        metrics.added.inc()
        metrics.items.set(engine.catalogue.size)
        out = item_of(engine.catalogue, stored.item_id)
        assert out is not None
        return _json(out.to_dict(), 201)

    @app.get("/healthz", response_model=Health, summary="Liveness: the process answers")
    async def healthz() -> Response:
        return _json({"status": "ok", "models": list(engine.runs), "items": engine.catalogue.size, "reasons": []})

    @app.get(
        "/readyz",
        response_model=Health,
        summary="Readiness: every model's batcher runs",
        responses={503: {"model": Health, "description": "not ready, with the reasons"}},
    )
    async def readyz() -> Response:
        reasons = [f"model '{name}' is not running" for name in engine.runs if not _running(batchers, name)]
        body = {"status": "ready" if not reasons else "not ready", "models": list(engine.runs),
                "items": engine.catalogue.size, "reasons": reasons}  # fmt: skip
        return _json(body, 200 if not reasons else 503)

    @app.get(
        "/metrics",
        summary="Prometheus metrics (text format)",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}},
    )
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(ObserveMiddleware, metrics=metrics, max_body=cfg.max_body_bytes)
    app.state.engine = engine
    app.state.metrics = metrics
    return app


def _running(batchers: dict[str, MicroBatcher], name: str) -> bool:
    batcher = batchers.get(name)
    return batcher is not None and batcher.running


def _safe_input(value: Any) -> Any:
    """The offending input, echoed back only if it is small plain JSON (never a huge body or bytes)."""
    try:
        text = orjson.dumps(value)
    except TypeError:
        return None
    return value if len(text) <= 1000 else None


def app_from_env() -> FastAPI:
    """An app for an ASGI process manager (``uvicorn --factory``, gunicorn's uvicorn worker), from the
    settings file named by ``INTENTREC_SERVE_CONFIG`` (YAML/JSON: ``runs:`` plus ServeConfig keys)."""
    from intentrec.config import load_config_file

    path = os.environ.get("INTENTREC_SERVE_CONFIG")
    if not path:
        raise IntentrecError("set INTENTREC_SERVE_CONFIG to a YAML/JSON file with 'runs:' and serve settings")
    values = dict(load_config_file(path))
    runs = values.pop("runs", None)
    if not runs or not isinstance(runs, list):
        raise IntentrecError(f"{path}: 'runs' must be a list of run folders (or NAME=RUN)")
    cfg = ServeConfig.build(values, where=f"serve settings in {path}")
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return create_app(Engine.load([str(r) for r in runs], cfg), cfg, freeze_gc=True)
