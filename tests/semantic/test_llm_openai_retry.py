"""OpenAI-compatible backend against a tiny loopback HTTP server that fails the first requests."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("openai")

from intentrec.errors import IntentrecError
from intentrec.semantic.llm import get_llm, resolve_llm_identity
from intentrec.semantic.llm.base import DecodingConfig


class FlakyServer:
    """Answers POST /v1/chat/completions; the first ``fail_first`` requests get HTTP 503."""

    def __init__(self, fail_first: int, status: int = 503):
        self.fail_first = fail_first
        self.status = status
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append(body)
                    n = len(outer.requests)
                if n <= outer.fail_first:
                    payload, code = {"error": {"message": "busy"}}, outer.status
                else:
                    content = "echo: " + body["messages"][-1]["content"]
                    payload, code = (
                        {
                            "id": f"c{n}",
                            "object": "chat.completion",
                            "created": 0,
                            "model": body["model"],
                            "choices": [
                                {
                                    "index": 0,
                                    "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": content},
                                }
                            ],
                            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
                        },
                        200,
                    )
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _prompts(n):
    return [[{"role": "user", "content": f"q{i}"}] for i in range(n)]


def test_retries_with_exponential_backoff_then_succeeds():
    with FlakyServer(fail_first=3) as server:
        llm = get_llm(server.url + "#tiny", concurrency=1, max_retries=5, backoff_s=0.5, backoff_max_s=1.5)
        sleeps: list[float] = []
        llm.sleep = sleeps.append
        gens = llm.generate(_prompts(2), DecodingConfig(max_tokens=5, stop=["\n"]))
    assert [g.text for g in gens] == ["echo: q0", "echo: q1"]
    assert [(g.prompt_tokens, g.completion_tokens) for g in gens] == [(7, 3), (7, 3)]
    assert sleeps == [0.5, 1.0, 1.5]  # 0.5 * 2**k, capped at 1.5
    assert llm.retries == 3 and len(server.requests) == 5
    first = server.requests[0]
    assert first["model"] == "tiny" and first["max_tokens"] == 5 and first["stop"] == ["\n"]
    assert first["repeat_penalty"] == 1.15 and first["temperature"] == 0.0


def test_gives_up_after_max_retries_with_a_clear_error():
    with FlakyServer(fail_first=100) as server:
        llm = get_llm(server.url, model="tiny", concurrency=2, max_retries=2, backoff_s=0.0)
        with pytest.raises(IntentrecError, match="after 3 attempt"):
            llm.generate(_prompts(1), DecodingConfig())
    assert len(server.requests) == 3


def test_client_errors_are_not_retried():
    with FlakyServer(fail_first=1, status=400) as server:
        llm = get_llm(server.url + "#tiny", max_retries=5, backoff_s=0.0)
        with pytest.raises(IntentrecError, match="after 1 attempt"):
            llm.generate(_prompts(1), DecodingConfig())
    assert len(server.requests) == 1


def test_concurrent_results_keep_prompt_order_and_report_each():
    with FlakyServer(fail_first=0) as server:
        llm = get_llm(server.url + "#tiny", concurrency=4)
        seen = []
        gens = llm.generate(_prompts(10), DecodingConfig(), on_result=lambda i, g: seen.append((i, g.text)))
    assert [g.text for g in gens] == [f"echo: q{i}" for i in range(10)]
    assert sorted(seen) == [(i, f"echo: q{i}") for i in range(10)]


def test_identity_needs_a_model_name_and_can_be_pinned():
    with pytest.raises(IntentrecError, match="model name"):
        resolve_llm_identity("http://127.0.0.1:9/v1")
    a = resolve_llm_identity("http://127.0.0.1:9/v1#m")
    assert a["backend"] == "openai" and a["model"] == "m" and len(a["model_sha256"]) == 64
    assert resolve_llm_identity("http://other:1/v1", model="m") == a  # the URL does not change the identity
    assert resolve_llm_identity("http://x/v1#m", model_sha256="ab" * 32)["model_sha256"] == "ab" * 32
