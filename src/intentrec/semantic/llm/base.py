"""The LLM backend contract shared by llama.cpp, transformers and OpenAI-compatible servers."""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from intentrec.config import Config
from intentrec.registry import Registry

Message = dict[str, str]
Prompt = list[Message]
OnResult = Callable[[int, "Generation"], None]


class DecodingConfig(Config):
    """How answers are decoded. Part of every answer-store key, so change it deliberately.

    Defaults are greedy and short: the templates ask for one item name (or a few), and small models
    that are allowed to ramble loop or repeat the session back.
    """

    max_tokens: int = Field(48, ge=1, le=4096)
    temperature: float = Field(0.0, ge=0.0, le=5.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    #: CTRL-style penalty (positive logits divided, negative multiplied) on tokens seen in the last
    #: ``repeat_last_n`` tokens of prompt + answer; 1.0 disables it.
    repeat_penalty: float = Field(1.15, ge=1.0, le=3.0)
    repeat_last_n: int = Field(64, ge=0, le=4096)
    stop: list[str] = Field(default_factory=list)
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def key_dict(self) -> dict[str, Any]:
        """The canonical dict hashed into answer keys."""
        return self.model_dump(mode="json")


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float


class LLMBackend(abc.ABC):
    """A loaded model that answers chat prompts.

    ``generate`` returns one :class:`Generation` per prompt, in the order of ``prompts``; it may work
    on them in any order (sorted for prefix reuse, in parallel) and calls ``on_result(index,
    generation)`` from the calling thread as each one finishes, so a caller can persist it at once.
    """

    registry_name: str

    @abc.abstractmethod
    def identity(self) -> dict[str, str]:
        """``{"backend", "model", "model_sha256"}``: what makes two answers comparable."""

    @abc.abstractmethod
    def generate(
        self,
        prompts: Sequence[Prompt],
        decoding: DecodingConfig,
        on_result: OnResult | None = None,
    ) -> list[Generation]: ...

    def close(self) -> None:
        """Free the model (no-op by default)."""

    def __enter__(self) -> LLMBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


BACKENDS: Registry[LLMBackend] = Registry("LLM backend")


def check_prompts(prompts: Sequence[Prompt]) -> None:
    """Validate the chat-message shape (a programming error elsewhere would otherwise surface deep in C)."""
    from intentrec.errors import IntentrecError

    for i, messages in enumerate(prompts):
        if not isinstance(messages, list) or not messages:
            raise IntentrecError(f"prompt {i}: expected a non-empty list of chat messages")
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in (
                "system",
                "user",
                "assistant",
            ):
                raise IntentrecError(
                    f"prompt {i}: each message needs role system|user|assistant and string content, got {m!r}"
                )
