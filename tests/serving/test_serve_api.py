"""``intentrec serve`` as a real process on a tiny trained run: recommendations, validation, items, metrics."""

from __future__ import annotations

import asyncio
import json
import math

import httpx
import pytest

from intentrec.serving.recommend import recommend as cli_recommend
from intentrec.training import load_run
from tests.helpers.serving import STANDIN_ARGS, Server, recommend

MAX_SESSION = 20


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    db = tmp_path_factory.mktemp("items") / "items.sqlite"
    args = [tiny_run, "--items-db", db, *STANDIN_ARGS, "--max-session", MAX_SESSION, "--max-body-bytes", 4096]
    with Server(*args) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def trained(tiny_run):
    return load_run(tiny_run)


def same_ranking(a: list[dict], b: list[dict], tol: float = 1e-5) -> bool:
    """Equal lists of (id, score), where items whose scores tie within ``tol`` may swap places."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if not math.isclose(x["score"], y["score"], rel_tol=tol, abs_tol=tol):
            return False
        if x["item_id"] != y["item_id"] and not any(
            z["item_id"] == x["item_id"] and math.isclose(z["score"], x["score"], abs_tol=tol) for z in b
        ):
            return False
    return True


@pytest.mark.parametrize("exclude_seen", [False, True])
@pytest.mark.parametrize("session", [["it3"], ["it3", "it4"], ["it10", "it11", "it12", "it10", "it2"]])
def test_ranking_equals_intentrec_recommend(client, trained, session, exclude_seen):
    got = recommend(client, session, k=7, exclude_seen=exclude_seen)
    want = cli_recommend(
        trained.model, trained.dataset, session, 7, max_length=trained.trainer.max_length, exclude_seen=exclude_seen
    )
    assert got["model"] == "srgnn" and got["unknown"] == [] and got["not_in_model"] == []
    assert [i["item_id"] for i in got["items"]] == [r.item_id for r in want.items]
    assert [i["title"] for i in got["items"]] == [r.title for r in want.items]
    assert [i["score"] for i in got["items"]] == pytest.approx([r.score for r in want.items], rel=1e-6, abs=1e-7)
    if exclude_seen:
        assert not set(session) & {i["item_id"] for i in got["items"]}


def test_unknown_ids_are_reported_or_rejected(client):
    lenient = recommend(client, ["it3", "nope", "ünï-😀", "it4"], k=5)
    assert lenient["unknown"] == ["nope", "ünï-😀"]
    assert [i["item_id"] for i in lenient["items"]] == [
        i["item_id"] for i in recommend(client, ["it3", "it4"], k=5)["items"]
    ]
    strict = client.post("/v1/recommend", json={"session": ["it3", "nope"], "strict": True})
    assert strict.status_code == 422
    assert strict.json()["detail"][0]["loc"] == ["body", "session", 1] and "nope" in strict.json()["detail"][0]["msg"]
    none_known = client.post("/v1/recommend", json={"session": ["nope"]})
    assert none_known.status_code == 422 and none_known.json()["detail"][0]["loc"] == ["body", "session"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"session": []}, ["body", "session"]),
        ({"session": ["it1"] * (MAX_SESSION + 1)}, ["body", "session"]),
        ({"session": ["it1"], "k": 0}, ["body", "k"]),
        ({"session": ["it1"], "k": -3}, ["body", "k"]),
        ({"session": ["it1"], "k": 31}, ["body", "k"]),  # the catalogue has 30 items (plus any added ones)
        ({"session": ["it1"], "k": 5000}, ["body", "k"]),
        ({"session": ["it1"], "k": "ten"}, ["body", "k"]),
        ({"session": "it1"}, ["body", "session"]),
        ({"session": [3]}, ["body", "session", 0]),
        ({"session": [""]}, ["body", "session", 0]),
        ({"session": ["it1"], "model": "other"}, ["body", "model"]),
        ({"session": ["it1"], "colour": "red"}, ["body", "colour"]),
        ({"k": 3}, ["body", "session"]),
    ],
)
def test_invalid_requests_name_the_field(client, body, field):
    response = client.post("/v1/recommend", json=body)
    assert response.status_code == 422, response.text
    assert field in [e["loc"] for e in response.json()["detail"]]


def test_malformed_bodies_get_a_clear_4xx(client):
    broken = client.post("/v1/recommend", content=b'{"session": ["it1"', headers={"content-type": "application/json"})
    assert broken.status_code == 422 and broken.json()["detail"][0]["type"] == "json_invalid"
    surrogate = client.post(
        "/v1/recommend", content=b'{"session": ["\\ud800"]}', headers={"content-type": "application/json"}
    )
    assert surrogate.status_code == 422 and "unicode" in surrogate.json()["detail"][0]["msg"].lower()
    huge = client.post("/v1/recommend", json={"session": ["x" * 200] * 40})
    assert huge.status_code == 413 and "too large" in huge.json()["detail"]

    def chunks():  # no Content-Length: the limit is counted while reading
        yield b'{"session": ["it1"], "pad": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}'

    chunked = client.post("/v1/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413


def test_items_get_post_and_a_new_item_is_ranked_at_once(client):
    assert client.get("/v1/items/it5").json() == {
        "item_id": "it5", "title": "Item number 5", "description": None, "categories": [], "source": "catalogue",
    }  # fmt: skip
    missing = client.get("/v1/items/never-added")
    assert missing.status_code == 404 and "never-added" in missing.json()["detail"]
    # the stand-in map gives a text equal to item 5's title item 5's row: the twin must score like it
    # (calibrated, text weight 0, against the stand-in's rows of the trained items' texts, i.e. their own rows)
    twin = {"item_id": "twin/5 ü", "title": "Item number 5", "description": "same text", "categories": ["a"]}
    added = client.post("/v1/items", json=twin)
    assert added.status_code == 201 and added.json() == {**twin, "source": "added"}
    assert client.get("/v1/items/twin%2F5%20%C3%BC").json()["source"] == "added"
    assert client.post("/v1/items", json=twin).status_code == 409
    assert client.post("/v1/items", json={"item_id": "it5", "title": "x"}).status_code == 409
    assert client.post("/v1/items", json={"item_id": "t", "title": ""}).status_code == 422
    ranked = {i["item_id"]: i["score"] for i in recommend(client, ["it3", "it4"], k=31)["items"]}
    assert len(ranked) == 31 and ranked["twin/5 ü"] == pytest.approx(ranked["it5"], rel=1e-6)
    with_new = recommend(client, ["it3", "twin/5 ü"], k=31, exclude_seen=True)
    assert with_new["not_in_model"] == ["twin/5 ü"]
    assert "twin/5 ü" not in {i["item_id"] for i in with_new["items"]} and len(with_new["items"]) == 29


def test_health_readiness_and_schema(client):
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["models"] == ["srgnn"]
    schema = client.get("/openapi.json").json()
    assert {"/v1/recommend", "/v1/items", "/v1/items/{item_id}", "/healthz", "/readyz", "/metrics"} <= set(
        schema["paths"]
    )
    assert client.get("/docs").status_code == 200


def test_metrics_count_requests_latency_and_errors(client):
    recommend(client, ["it3"], k=2)
    client.post("/v1/recommend", json={"session": []})
    client.get("/v1/items/none-such")
    text = client.get("/metrics").text
    assert 'intentrec_http_requests_total{method="POST",route="/v1/recommend",status="200"}' in text
    assert 'intentrec_http_requests_total{method="POST",route="/v1/recommend",status="422"}' in text
    assert 'intentrec_http_requests_total{method="GET",route="/v1/items/{item_id}",status="404"}' in text
    assert 'intentrec_http_request_duration_seconds_bucket{le="0.01",route="/v1/recommend"}' in text
    assert 'intentrec_http_errors_total{kind="client",route="/v1/recommend"}' in text
    assert 'intentrec_batch_size_count{model="srgnn"}' in text
    assert "intentrec_catalogue_items " in text


def test_micro_batched_requests_give_the_single_request_results(tiny_run, client):
    sessions = [[f"it{1 + (i * 7) % 30}", f"it{1 + (i * 3) % 30}"][: 1 + i % 2] for i in range(24)]
    single = [recommend(client, s, k=10, exclude_seen=bool(i % 3 == 0))["items"] for i, s in enumerate(sessions)]

    async def together(url: str) -> list[dict]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            responses = await asyncio.gather(
                *(c.post("/v1/recommend", json={"session": s, "k": 10, "exclude_seen": i % 3 == 0})
                  for i, s in enumerate(sessions))
            )  # fmt: skip
        return [json.loads(r.content)["items"] for r in responses]

    # a long window and a batch cap below the request count: several multi-request batches
    with Server(tiny_run, "--batch-window-ms", 200, "--max-batch", 8) as batching:
        batched = asyncio.run(together(batching.url))
        with batching.client() as c:
            metrics = c.get("/metrics").text
    assert all(same_ranking(a, b) for a, b in zip(batched, single, strict=True))
    count = next(line for line in metrics.splitlines() if line.startswith('intentrec_batch_size_count{model="srgnn"}'))
    assert float(count.split()[-1]) <= len(sessions)
