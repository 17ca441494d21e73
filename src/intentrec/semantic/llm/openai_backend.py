"""Any OpenAI-compatible chat server (vLLM, SGLang, Ollama, ``llama_cpp.server``) via the ``openai`` client.

Requests run ``concurrency`` at a time in a thread pool (servers batch concurrent requests: vLLM and
SGLang continuously, ``llama_cpp.server`` with parallel slots). Failed requests (connection errors,
timeouts, 408/409/429 and 5xx) are retried with exponential backoff: ``backoff_s * 2**attempt``,
capped at ``backoff_max_s``. The client's own retries are switched off so the policy is ours alone.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from pydantic import Field

from intentrec.config import Config
from intentrec.errors import IntentrecError
from intentrec.semantic.llm.base import (
    BACKENDS,
    DecodingConfig,
    Generation,
    LLMBackend,
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


@BACKENDS.register("openai")
class OpenAIBackend(LLMBackend):
    def __init__(self, base_url: str, identity: dict[str, str], config: OpenAIConfig):
        try:
            import openai
        except ImportError:
            raise IntentrecError("the openai backend needs the 'openai' package: pip install 'intentrec[llm]'") from None
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
