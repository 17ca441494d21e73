"""The LLM backend contract shared by llama.cpp, transformers and OpenAI-compatible servers.

Backends register into :data:`BACKENDS` (``@BACKENDS.register("name")``), and the registry alone
decides which backend a ``--llm`` spec names: each backend class says which specs it
:meth:`~LLMBackend.claims`, parses a claimed spec (:meth:`~LLMBackend.parse_spec`), names the model
without loading it (:meth:`~LLMBackend.spec_identity`) and loads it (:meth:`~LLMBackend.from_spec`).
:func:`choose_backend` asks every registered backend, highest ``spec_priority`` first.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import Field

from intentrec.config import Config
from intentrec.errors import ConfigError
from intentrec.registry import Registry, import_modules

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
class LLMSpec:
    """A ``--llm`` spec parsed by the backend that claimed it."""

    backend: str  # registry name of that backend: llamacpp | transformers | openai | ...
    target: str  # shipped name, file/folder path, or base URL
    model: str | None = None  # served model name (openai)
    shipped: bool = False


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

    #: Backends that claim a spec are asked in this order, highest first (ties: by registry name).
    #: Prefix forms (``hf:``, ``http://``) outrank the ``.gguf`` suffix, so ``hf:dir.gguf`` is hf's.
    spec_priority: ClassVar[int] = 0

    # -- choosing and building from a spec (class side; see choose_backend) ---------------------
    @classmethod
    def claims(cls, spec: str) -> bool:
        """Whether ``spec`` (stripped, non-empty) names a model of this backend. Cheap and
        syntactic: no file access, no optional imports (those belong in :meth:`parse_spec`)."""
        return False

    @classmethod
    def spec_forms(cls) -> list[str]:
        """The spec forms this backend claims, in words, for the error on an unknown spec."""
        return []

    @classmethod
    def parse_spec(cls, spec: str, opts: dict[str, Any]) -> LLMSpec:
        """Check a claimed spec (files exist, ...) and split it into an :class:`LLMSpec`."""
        return LLMSpec(cls.registry_name, spec)

    @classmethod
    def spec_identity(cls, spec: LLMSpec, opts: dict[str, Any]) -> dict[str, str]:
        """``{"backend", "model", "model_sha256"}`` for a parsed spec, without loading the model."""
        raise NotImplementedError(f"{cls.__name__} does not implement spec_identity")

    @classmethod
    def from_spec(cls, spec: LLMSpec, opts: dict[str, Any], *, text: str) -> LLMBackend:
        """Load the model of a parsed spec with backend options ``opts`` (``text``: the spec as
        given, for messages). A missing optional package is an ``IntentrecError`` saying what to
        install, raised here and not at import, so the backend stays listed without it."""
        raise NotImplementedError(f"{cls.__name__} does not implement from_spec")

    # -- a loaded model -------------------------------------------------------------------------
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

    def prompt_length(self, prompt: Prompt) -> int | None:
        """Tokens of ``prompt`` as this backend feeds it, or None where it cannot tell before generating."""
        return None

    def context_tokens(self) -> int | None:
        """The most tokens (prompt + answer) one sequence may hold, or None where it is not known here."""
        return None

    def close(self) -> None:  # noqa: B027 - an optional hook, not abstract: most backends free nothing
        """Free the model (no-op by default)."""

    def __enter__(self) -> LLMBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


BACKENDS: Registry[LLMBackend] = Registry("LLM backend")

# Modules that register backends on import; listed so that the registry is complete on first use.
# None of them imports its optional package (llama_cpp, transformers, openai) at module level.
_BACKEND_MODULES = ("llamacpp", "hf", "openai_backend")


def load_all() -> None:
    import_modules("intentrec.semantic.llm", _BACKEND_MODULES)


def _join(forms: list[str]) -> str:
    return ", ".join(forms[:-1]) + " or " + forms[-1] if len(forms) > 1 else "".join(forms)


def known_spec_forms() -> str:
    """Every registered backend's spec forms in words: "a known model (...), a .gguf file or ..."."""
    load_all()
    return _join([form for name in BACKENDS.names() for form in BACKENDS.get(name).spec_forms()])


def choose_backend(spec: str) -> type[LLMBackend]:
    """The registered backend class that claims ``spec`` (highest ``spec_priority`` first)."""
    load_all()
    spec = (spec or "").strip()
    if not spec:
        raise ConfigError(f"empty --llm; give {known_spec_forms()}")
    order = sorted(BACKENDS.names(), key=lambda name: (-BACKENDS.get(name).spec_priority, name))
    for name in order:
        cls = BACKENDS.get(name)
        if cls.claims(spec):
            return cls
    raise ConfigError(f"--llm {spec!r} is not {known_spec_forms()} (backends: {', '.join(BACKENDS.names())})")


def check_prompts(prompts: Sequence[Prompt]) -> None:
    """Validate the chat-message shape (a programming error elsewhere would otherwise surface deep in C)."""
    from intentrec.errors import IntentrecError

    for i, messages in enumerate(prompts):
        if not isinstance(messages, list) or not messages:
            raise IntentrecError(f"prompt {i}: expected a non-empty list of chat messages")
        for m in messages:
            if (
                not isinstance(m, dict)
                or not isinstance(m.get("content"), str)
                or m.get("role")
                not in (
                    "system",
                    "user",
                    "assistant",
                )
            ):
                raise IntentrecError(
                    f"prompt {i}: each message needs role system|user|assistant and string content, got {m!r}"
                )
