"""A teacher double for the distillation tests, and a tiny BERT whose vocabulary covers the LLM titles."""

from __future__ import annotations

import re
from pathlib import Path

from intentrec.semantic.llm.base import Generation, LLMBackend
from tests.helpers.intents import make_tiny_bert
from tests.helpers.semantic import LLM_TITLES

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def title_vocab(titles: list[str] = LLM_TITLES) -> list[str]:
    words = sorted({w for t in titles for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    return SPECIALS + words + ["id"]


def make_title_bert(folder: Path, seed: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return make_tiny_bert(folder, seed=seed, vocab=title_vocab())


class TitleTeacher(LLMBackend):
    """Answers the long view with the first listed title and the short view with the last one.

    ``fail_after``: raise KeyboardInterrupt once that many prompts were answered (a killed run).
    ``identity``: the model the answers are stored under (default: a made-up one).
    """

    def __init__(self, fail_after: int | None = None, identity: dict[str, str] | None = None):
        self.fail_after = fail_after
        self.asked: list[str] = []
        self._identity = identity or {"backend": "scripted", "model": "title-teacher", "model_sha256": "7" * 64}

    def identity(self) -> dict[str, str]:
        return dict(self._identity)

    def generate(self, prompts, decoding, on_result=None):
        out = []
        for i, prompt in enumerate(prompts):
            if self.fail_after is not None and len(self.asked) >= self.fail_after:
                raise KeyboardInterrupt("simulated kill of the teacher step")
            text = prompt[-1]["content"]
            listed = [m.group(1) for m in re.finditer(r"^\d+\. (.*?) \[ID: [^\]]*\]$", text, flags=re.M)]
            answer = listed[0] if "long-term" in text else listed[-1]
            self.asked.append(text)
            g = Generation(text=answer, prompt_tokens=len(text.split()), completion_tokens=4, seconds=0.0)
            out.append(g)
            if on_result:
                on_result(i, g)
        return out
