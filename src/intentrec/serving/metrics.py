"""Prometheus metrics and the request-size limit, as plain ASGI middleware (no per-request task).

One registry per app (not prometheus_client's global one), so several apps in one process stay apart.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

ROUTES = ("/v1/recommend", "/v1/items", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json")
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def route_label(path: str) -> str:
    """A bounded label: the route's template, never the raw path (ids would explode the series)."""
    if path.startswith("/v1/items/"):
        return "/v1/items/{item_id}"
    return path if path in ROUTES else "other"


class Metrics:
    """The series of one app."""

    def __init__(self) -> None:
        disable_created_metrics()  # the *_created series only double what scrapers need to store
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "intentrec_http_requests", "HTTP requests by route, method and status", ("route", "method", "status"),
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "intentrec_http_request_duration_seconds", "time from request to the last response byte", ("route",),
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.errors = Counter(
            "intentrec_http_errors", "responses with status 4xx (client) or 5xx (server)", ("route", "kind"),
            registry=self.registry,
        )  # fmt: skip
        self.batch_size = Histogram(
            "intentrec_batch_size", "requests scored in one forward pass", ("model",),
            buckets=BATCH_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.items = Gauge("intentrec_catalogue_items", "items that can be recommended", registry=self.registry)
        self.added = Counter("intentrec_items_added", "items added through POST /v1/items", registry=self.registry)


class ObserveMiddleware:
    """Counts and times every HTTP request, and refuses bodies over ``max_body`` bytes with 413."""

    def __init__(self, app: Any, metrics: Metrics, max_body: int):
        self.app = app
        self.metrics = metrics
        self.max_body = max_body

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        route = route_label(scope["path"])
        status = 500

        async def send_observed(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            length = _content_length(scope)
            if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
                # a chunked body: read it (up to the limit) before the app does, then replay it
                body = await _read_limited(receive, self.max_body)
                if body is None:
                    status = 413
                    await _too_large(send, self.max_body)
                    return
                receive = _replay(body, receive)
            elif length is not None and length > self.max_body:
                status = 413
                await _too_large(send, self.max_body)
                return
            await self.app(scope, receive, send_observed)
        finally:
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
            if status >= 500:
                self.metrics.errors.labels(route, "server").inc()
            elif status >= 400:
                self.metrics.errors.labels(route, "client").inc()


def _content_length(scope: dict) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _read_limited(receive: Any, limit: int) -> bytes | None:
    """The whole body, or None once it exceeds ``limit`` bytes (or the client went away)."""
    parts, seen = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen > limit:
            return None
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replayed() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _too_large(send: Any, limit: int) -> None:
    body = b'{"detail":"request body too large (limit %d bytes)"}' % limit
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
