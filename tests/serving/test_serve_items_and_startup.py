"""Added items survive restarts and kill -9; a run that cannot serve is refused at start-up; the batcher; FAISS."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from intentrec.serving.batching import MicroBatcher
from intentrec.serving.config import ServeConfig
from intentrec.serving.engine import Engine, Query
from intentrec.serving.items import ItemStore
from tests.helpers.serving import STANDIN_ARGS, Server, recommend, run_to_completion, train_tiny_run


def test_items_survive_a_restart(tiny_run, tmp_path):
    db = tmp_path / "items.sqlite"
    with Server(tiny_run, "--items-db", db, *STANDIN_ARGS) as first, first.client() as c:
        assert c.post("/v1/items", json={"item_id": "kept", "title": "Item number 9"}).status_code == 201
        before = recommend(c, ["it2", "it3"], k=31)["items"]
    with Server(tiny_run, "--items-db", db, *STANDIN_ARGS) as second, second.client() as c:
        assert c.get("/v1/items/kept").json()["source"] == "added"
        assert recommend(c, ["it2", "it3"], k=31)["items"] == before
        assert c.get("/readyz").json()["items"] == 31


def test_every_acknowledged_item_survives_kill_9(tiny_run, tmp_path):
    db = tmp_path / "items.sqlite"
    acknowledged: list[str] = []
    enough = threading.Event()

    def add_forever(url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            for n in range(10_000):
                try:
                    response = c.post("/v1/items", json={"item_id": f"k{n}", "title": f"Item number {1 + n % 30}"})
                except httpx.HTTPError:
                    return  # the server is gone
                if response.status_code == 201:
                    acknowledged.append(f"k{n}")
                if len(acknowledged) >= 15:
                    enough.set()

    server = Server(tiny_run, "--items-db", db, *STANDIN_ARGS).start()
    try:
        adder = threading.Thread(target=add_forever, args=(server.url,))
        adder.start()
        assert enough.wait(timeout=120), "the server acknowledged too few items"
        server.kill9()  # while the adder is still adding
        adder.join(timeout=60)
    finally:
        server.stop()
    assert len(acknowledged) >= 15
    with Server(tiny_run, "--items-db", db, *STANDIN_ARGS) as restarted, restarted.client() as c:
        for item_id in acknowledged:
            assert c.get(f"/v1/items/{item_id}").status_code == 200, item_id
        ranked = {i["item_id"] for i in recommend(c, ["it3"], k=30 + len(acknowledged))["items"]}
        assert set(acknowledged) <= ranked


def test_a_run_that_cannot_serve_is_refused_at_start_up(tmp_path):
    pytest.importorskip("sentence_transformers")
    from tests.helpers.tinyrun import write_tiny_dataset

    data = write_tiny_dataset(tmp_path / "data")
    run = train_tiny_run(data, tmp_path / "shuffled", method="llm4sbr", source="titles", shuffle_texts=True)
    result = run_to_completion(run)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "cannot serve new sessions" in result.stderr
    assert "shuffled-texts control" in result.stderr  # the model's own reason (capabilities()["serve"])


def test_items_store_commits_before_returning(tmp_path):
    store = ItemStore(tmp_path / "db.sqlite")
    first = store.add("a", "Title A", None, ["x"])
    with pytest.raises(KeyError):
        store.add("a", "again", None, [])
    other = ItemStore(tmp_path / "db.sqlite")  # another connection (another worker) sees it at once
    assert [(i.item_id, i.categories) for i in other.since(0)] == [("a", ("x",))]
    assert other.since(first.seq) == []
    store.close()
    other.close()


def test_batcher_scores_waiting_requests_in_one_call():
    calls: list[int] = []
    gate = threading.Event()

    def fn(queries):
        calls.append(len(queries))
        if len(calls) == 1:
            gate.wait(timeout=30)  # the first batch holds the worker while the others queue up
        return [q * 10 for q in queries]

    async def scenario():
        batcher = MicroBatcher(fn, ThreadPoolExecutor(max_workers=1), max_batch=4, window=0.0)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(0))
        while not calls:
            await asyncio.sleep(0.001)
        rest = [asyncio.ensure_future(batcher.submit(q)) for q in range(1, 7)]
        await asyncio.sleep(0.05)
        gate.set()
        results = await asyncio.gather(first, *rest)
        await batcher.stop()
        return results

    assert asyncio.run(scenario()) == [q * 10 for q in range(7)]
    assert calls == [1, 4, 2]  # the six waiting requests went in batches of at most max_batch


def test_faiss_index_returns_the_exact_top_k_on_a_small_catalogue(tiny_run):
    exact = Engine.load([str(tiny_run)], ServeConfig(index="exact"))
    hnsw = Engine.load([str(tiny_run)], ServeConfig(index="faiss-hnsw"))
    ivf = Engine.load([str(tiny_run)], ServeConfig(index="faiss-ivf"))
    queries = [Query((3, 4), (), 10), Query((7,), (6,), 5), Query((1, 2, 3), (0, 1, 2), 8)]
    want = exact.score(exact.runs["srgnn"], queries)
    for engine in (hnsw, ivf):
        got = engine.score(engine.runs["srgnn"], queries)
        for g, w in zip(got, want, strict=True):
            assert [c for c, _ in g] == [c for c, _ in w]
            np.testing.assert_allclose([s for _, s in g], [s for _, s in w], rtol=1e-4, atol=1e-5)
    for engine in (exact, hnsw, ivf):
        engine.close()


def test_faiss_is_refused_for_a_model_that_does_not_score_by_inner_product(tmp_path):
    from intentrec.errors import IntentrecError
    from tests.helpers.tinyrun import write_tiny_dataset

    run = train_tiny_run(write_tiny_dataset(tmp_path / "data"), tmp_path / "tagnn", model="tagnn")
    with pytest.raises(IntentrecError, match="not an inner product"):
        Engine.load([str(run)], ServeConfig(index="faiss-hnsw"))
