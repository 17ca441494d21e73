"""Property-based fuzzing of the running server from its own OpenAPI schema (schemathesis): no 5xx,
and every documented response matches its schema. Valid and invalid requests for every operation,
bounded and derandomized (hypothesis' fixed seed), so a run is the same every time."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402

from tests.helpers.serving import STANDIN_ARGS, Server  # noqa: E402

EXAMPLES = 25  # per operation and mode: 6 operations × 2 modes × 25 requests


@pytest.fixture(scope="module")
def fuzz_server(tiny_run, tmp_path_factory):
    db = tmp_path_factory.mktemp("fuzz") / "items.sqlite"
    with Server(tiny_run, "--items-db", db, *STANDIN_ARGS, "--max-session", 50) as srv:
        yield srv


def operations(url: str):
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=lambda m: m.value)
def test_no_server_errors_and_documented_responses(fuzz_server, mode):
    ops = operations(fuzz_server.url)
    assert {op.path for op in ops} >= {"/v1/recommend", "/v1/items", "/v1/items/{item_id}", "/metrics"}
    if mode == schemathesis.GenerationMode.NEGATIVE:  # only what has inputs can be given invalid ones
        ops = [op for op in ops if op.method.upper() == "POST"]
    calls = 0
    for op in ops:

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        def check(case):
            nonlocal calls
            calls += 1
            case.call_and_validate(base_url=fuzz_server.url, checks=[not_a_server_error, response_schema_conformance])

        check()
    assert calls >= len(ops)
