"""Any OpenAI-compatible chat server (vLLM, SGLang, Ollama, ``llama_cpp.server``) via the ``openai`` client.

Requests run ``concurrency`` at a time in a thread pool (servers batch concurrent requests: vLLM and
SGLang continuously, ``llama_cpp.server`` with parallel slots). Failed requests (connection errors,
timeouts, 408/409/429 and 5xx) are retried with exponential backoff: ``backoff_s * 2**attempt``,
capped at ``backoff_max_s``. The client's own retries are switched off so the policy is ours alone.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any

from pydantic import Field

from intentrec.config import Config
from intentrec.errors import ConfigError, IntentrecError
from intentrec.semantic.llm.base import (
    BACKENDS,
    DecodingConfig,
    Generation,
    LLMBackend,
    LLMSpec,
    OnResult,
    Prompt,
    check_prompts,
)


class OpenAIConfig(Config):
    model: str | None = None  # the served model name
    model_sha256: str | None = None  # pin the served weights' identity (default: hash of the name)
    api_key: str | None = None  # default: $OPENAI_API_KEY, else "EMPTY" (local servers ignore it)
    concurrency: int = Field(8, ge=1, le=512)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(5, ge=0, le=50)
    backoff_s: float = Field(0.5, ge=0)
    backoff_max_s: float = Field(30.0, ge=0)
    #: Send ``repeat_penalty`` (llama.cpp) and ``repetition_penalty`` (vLLM, SGLang) as extra body
    #: fields; switch off for servers that reject unknown fields (the OpenAI API itself).
    send_repeat_penalty: bool = True


_RETRY_STATUS = {408, 409, 429}


def _retryable(exc: BaseException) -> bool:
    import openai

    if isinstance(exc, (openai.APIConnectionError, openai.APITimeoutError)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in _RETRY_STATUS or exc.status_code >= 500
    return False


def _openai_identity(model: str | None, opts: dict[str, Any]) -> dict[str, str]:
    if not model:
        raise ConfigError("an OpenAI-compatible --llm URL needs the served model name: URL#MODEL or the 'model' option")
    # A server does not tell which weights it serves; the name stands in for them unless the user
    # pins the weights' sha256 (e.g. of the GGUF that llama_cpp.server loaded).
    sha = opts.get("model_sha256") or hashlib.sha256(f"openai-model:{model}".encode()).hexdigest()
    return {"backend": "openai", "model": str(model), "model_sha256": str(sha)}


@BACKENDS.register("openai")
class OpenAIBackend(LLMBackend):
    """Specs: an ``http(s)://`` base URL; the model name after ``#`` or as the ``model`` option."""

    spec_priority = 10  # a prefix form: ``http://h/v1#m.gguf`` names a served model

    @classmethod
    def claims(cls, spec: str) -> bool:
        return spec.startswith(("http://", "https://"))

    @classmethod
    def spec_forms(cls) -> list[str]:
        return ["an http(s):// URL"]

    @classmethod
    def parse_spec(cls, spec: str, opts: dict[str, Any]) -> LLMSpec:
        url, _, fragment = spec.partition("#")
        model = opts.get("model") or fragment or None
        return LLMSpec(cls.registry_name, url.rstrip("/"), model=model)

    @classmethod
    def spec_identity(cls, spec: LLMSpec, opts: dict[str, Any]) -> dict[str, str]:
        return _openai_identity(spec.model, opts)

    @classmethod
    def from_spec(cls, spec: LLMSpec, opts: dict[str, Any], *, text: str) -> OpenAIBackend:
        values = dict(opts)
        if spec.model:
            values["model"] = spec.model
        config = OpenAIConfig.build(values, where=f"openai options for {text}")
        return cls(spec.target, _openai_identity(config.model, values), config)

    def __init__(self, base_url: str, identity: dict[str, str], config: OpenAIConfig):
        try:
            import openai
        except ImportError:
            raise IntentrecError(
                "the openai backend needs the 'openai' package: pip install 'intentrec[llm]'"
            ) from None
        if not config.model:
            raise IntentrecError(f"{base_url}: no model name given (use URL#MODEL or the 'model' option)")
        self.base_url = base_url
        self.config = config
        self._identity = dict(identity)
        self._client = openai.OpenAI(
            base_url=base_url,
            api_key=config.api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
            timeout=config.timeout_s,
            max_retries=0,
        )
        self.sleep = time.sleep  # replaced in tests
        self.retries = 0  # total retries so far (for reports and tests)

    def identity(self) -> dict[str, str]:
        return dict(self._identity)

    def _request(self, messages: Prompt, decoding: DecodingConfig) -> Generation:
        import openai

        extra = {}
        if self.config.send_repeat_penalty and decoding.repeat_penalty != 1.0:
            extra = {"repeat_penalty": decoding.repeat_penalty, "repetition_penalty": decoding.repeat_penalty}
        started = time.perf_counter()
        attempt = 0
        while True:
            try:
                resp = self._client.chat.completions.create(
                    model=self.config.model,
                    messages=messages,
                    max_tokens=decoding.max_tokens,
                    temperature=decoding.temperature,
                    top_p=decoding.top_p,
                    seed=decoding.seed,
                    stop=list(decoding.stop) or None,
                    extra_body=extra or None,
                )
                break
            except Exception as exc:
                if not _retryable(exc) or attempt >= self.config.max_retries:
                    if isinstance(exc, openai.OpenAIError):
                        raise IntentrecError(
                            f"{self.base_url}: request failed after {attempt + 1} attempt(s): {exc}"
                        ) from None
                    raise
                self.retries += 1
                self.sleep(min(self.config.backoff_max_s, self.config.backoff_s * 2**attempt))
                attempt += 1
        choice = resp.choices[0] if resp.choices else None
        text = (choice.message.content if choice and choice.message else None) or ""
        usage = resp.usage
        return Generation(
            text=text,
            prompt_tokens=int(usage.prompt_tokens) if usage else 0,
            completion_tokens=int(usage.completion_tokens) if usage else 0,
            seconds=time.perf_counter() - started,
        )

    def generate(
        self,
        prompts: Sequence[Prompt],
        decoding: DecodingConfig,
        on_result: OnResult | None = None,
    ) -> list[Generation]:
        check_prompts(prompts)
        results: list[Generation | None] = [None] * len(prompts)
        # Submit lazily so that at most `concurrency` requests are in flight and an error stops the rest.
        with ThreadPoolExecutor(max_workers=self.config.concurrency) as pool:
            todo = iter(range(len(prompts)))
            running = {}
            try:
                while True:
                    while len(running) < self.config.concurrency:
                        i = next(todo, None)
                        if i is None:
                            break
                        running[pool.submit(self._request, prompts[i], decoding)] = i
                    if not running:
                        break
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for fut in done:
                        i = running.pop(fut)
                        results[i] = fut.result()
                        if on_result is not None:
                            on_result(i, results[i])
            except BaseException:
                for fut in running:
                    fut.cancel()
                raise
        return results  # type: ignore[return-value]

    def close(self) -> None:
        self._client.close()
