"""The micro-batcher's window and hand-back, and the server's garbage-collector freeze."""

from __future__ import annotations

import asyncio
import gc
import time
from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient

from intentrec.serving.app import create_app
from intentrec.serving.batching import MicroBatcher
from intentrec.serving.config import ServeConfig
from intentrec.serving.engine import Engine


def _recording(calls: list[list[int]]):
    def fn(queries):
        calls.append(list(queries))
        return [q * 10 for q in queries]

    return fn


def _run(scenario):
    return asyncio.run(scenario())


def test_requests_within_the_window_join_the_first():
    calls: list[list[int]] = []

    async def scenario():
        batcher = MicroBatcher(_recording(calls), ThreadPoolExecutor(max_workers=1), max_batch=8, window=0.2)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.02)
        second = asyncio.ensure_future(batcher.submit(2))
        results = await asyncio.gather(first, second)
        await batcher.stop()
        return results

    assert _run(scenario) == [10, 20]
    assert calls == [[1, 2]]


def test_a_full_batch_does_not_wait_for_the_window():
    calls: list[list[int]] = []

    async def scenario():
        batcher = MicroBatcher(_recording(calls), ThreadPoolExecutor(max_workers=1), max_batch=3, window=30.0)
        batcher.start()
        start = time.perf_counter()
        results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(q) for q in range(3))), 10)
        took = time.perf_counter() - start
        await batcher.stop()
        return results, took

    results, took = _run(scenario)
    assert results == [0, 10, 20]
    assert took < 5  # not the 30 s window
    assert calls == [[0, 1, 2]]


def test_a_lone_request_waits_at_most_the_window():
    calls: list[list[int]] = []

    async def scenario():
        batcher = MicroBatcher(_recording(calls), ThreadPoolExecutor(max_workers=1), max_batch=64, window=0.05)
        batcher.start()
        start = time.perf_counter()
        result = await batcher.submit(7)
        took = time.perf_counter() - start
        again = await batcher.submit(8)  # the batcher goes back to waiting for a first request
        await batcher.stop()
        return result, again, took

    result, again, took = _run(scenario)
    assert (result, again) == (70, 80)
    assert 0.04 <= took < 5
    assert calls == [[7], [8]]


def test_a_failed_batch_fails_each_request_and_cancelled_ones_are_skipped():
    calls: list[list[int]] = []

    def fn(queries):
        calls.append(list(queries))
        if 0 in queries:
            raise ValueError("boom")
        return [q * 10 for q in queries]

    async def scenario():
        batcher = MicroBatcher(fn, ThreadPoolExecutor(max_workers=1), max_batch=8, window=0.05)
        batcher.start()
        failing = [asyncio.ensure_future(batcher.submit(q)) for q in (0, 1)]
        outcomes = await asyncio.gather(*failing, return_exceptions=True)
        gone = asyncio.ensure_future(batcher.submit(2))
        kept = asyncio.ensure_future(batcher.submit(3))
        await asyncio.sleep(0)
        gone.cancel()
        result = await kept
        await batcher.stop()
        return outcomes, result

    outcomes, result = _run(scenario)
    assert [type(o) for o in outcomes] == [ValueError, ValueError]
    assert result == 30
    assert calls == [[0, 1], [3]]


def test_the_serving_process_freezes_its_start_up_objects(tiny_run):
    engine = Engine.load([str(tiny_run)], ServeConfig(cold_start="off", threads=1))
    try:
        gc.unfreeze()
        with TestClient(create_app(engine, engine.cfg)) as client:  # a library user's app: nothing frozen
            assert client.get("/readyz").status_code == 200
            assert gc.get_freeze_count() == 0
        with TestClient(create_app(engine, engine.cfg, freeze_gc=True)) as client:
            assert client.post("/v1/recommend", json={"session": ["it2"], "k": 3}).status_code == 200
            assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        engine.close()
