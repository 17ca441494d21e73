"""The OpenAI-compatible backend against a real ``llama_cpp.server`` (SmolLM2) on a loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from intentrec.semantic.llm import get_llm
from intentrec.semantic.llm.base import DecodingConfig
from intentrec.semantic.llm.cpu_variants import backend_path_env
from intentrec.semantic.llm.models import ensure_shipped_model
from tests.helpers.llm import PROMPTS, require_smollm2

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_smollm2()
    pytest.importorskip("uvicorn")
    pytest.importorskip("sse_starlette")
    pytest.importorskip("starlette_context")
    pytest.importorskip("pydantic_settings")
    os.environ.setdefault("INTENTREC_HOME", str(tmp_path_factory.mktemp("home")))
    model = ensure_shipped_model("smollm2")
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--model_alias",
        "smollm2",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "2048",
        "--n_threads",
        "1",
    ]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=backend_path_env())
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(url + "/models", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"llama_cpp.server did not start: {log.read_text()[-2000:]}")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_generates_through_a_real_server(server):
    llm = get_llm(server + "#smollm2", concurrency=2, timeout_s=120)
    seen = []
    gens = llm.generate(PROMPTS[:4], DecodingConfig(max_tokens=12, stop=["\n"]), on_result=lambda i, g: seen.append(i))
    assert sorted(seen) == [0, 1, 2, 3]
    assert all(g.text.strip() and g.prompt_tokens > 10 and 0 < g.completion_tokens <= 12 for g in gens)
    assert all("\n" not in g.text for g in gens)
    again = llm.generate(PROMPTS[:1], DecodingConfig(max_tokens=12, stop=["\n"]))
    assert again[0].text == gens[0].text  # greedy through the server is repeatable
    assert llm.identity()["backend"] == "openai" and llm.identity()["model"] == "smollm2"
    llm.close()
