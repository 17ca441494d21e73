"""Versioned prompt templates for the LLM stage (our own wording), registered by name.

A template turns a :class:`PromptContext` (a session as item texts, optional candidate items and
few-shot examples) into chat messages, and parses the model's answer back into item names.

Rules shared by every template (see docs/semantic.md):

* **Long sessions** keep only the ``max_session_items`` most recent items (default 20), still numbered
  from 1 in click order; the prompt does not mention the dropped ones.
* **Titles** are cut to a token budget without a tokenizer: at most ``max_title_words`` whitespace
  words (≈1.3 BPE tokens each for English titles) and at most ``max_title_chars`` characters (for
  titles with few spaces, e.g. CJK). Candidate titles get the smaller ``max_candidate_title_words``.
* Each item is shown as ``<n>. <title> [ID: <item id>]`` so the parser can strip an echoed id; an item
  without a title is shown by its id alone.

Changing the wording of a template changes its prompts (so it gets new answer-store keys); bump its
``version`` too, so answers linked to examples under the old wording are reported as stale.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

from intentrec.config import Config
from intentrec.errors import IntentrecError
from intentrec.registry import Registry
from intentrec.semantic.parsing import (
    ParsedAnswer,
    parse_multi,
    parse_rationale_then_answer,
    parse_single,
)


@dataclass(frozen=True)
class ItemText:
    item_id: str
    title: str | None = None


@dataclass(frozen=True)
class FewShotExample:
    """A solved example shown before the real question: a session, its next item, optionally why."""

    session: list[ItemText]
    target: ItemText
    rationale: str | None = None


@dataclass
class PromptContext:
    session: list[ItemText]
    candidates: list[ItemText] | None = None
    examples: list[FewShotExample] | None = None


Message = dict[str, str]


class TemplateOptions(Config):
    max_session_items: int = 20
    max_title_words: int = 24
    max_title_chars: int = 160
    max_candidates: int = 50
    max_candidate_title_words: int = 12
    max_examples: int = 3
    max_intents: int = 5


def truncate_title(title: str, max_words: int, max_chars: int) -> str:
    """Cut a title to ``max_words`` whitespace words and ``max_chars`` characters (adds '…' if cut)."""
    words = title.split()
    text = " ".join(words[:max_words])
    cut = len(words) > max_words
    if len(text) > max_chars:
        text = text[:max_chars].rstrip()
        cut = True
    return text + "…" if cut else text


def render_item(item: ItemText, *, max_words: int, max_chars: int) -> str:
    title = (item.title or "").strip()
    if not title:
        return f"[ID: {item.item_id}]"
    return f"{truncate_title(title, max_words, max_chars)} [ID: {item.item_id}]"


def render_list(items: list[ItemText], *, max_words: int, max_chars: int) -> str:
    return "\n".join(
        f"{n}. {render_item(item, max_words=max_words, max_chars=max_chars)}" for n, item in enumerate(items, 1)
    )


def prompt_text(messages: list[Message]) -> str:
    """Canonical one-string form of chat messages (what the answer store keys and keeps)."""
    return json.dumps(messages, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


SYSTEM = (
    "You are a shopping assistant for an online store. You read the items a user has clicked in one "
    "browsing session and predict what they want. Answer briefly, with item names only."
)

TEMPLATES: Registry[PromptTemplate] = Registry("prompt template")


class PromptTemplate:
    """Base class. Subclasses set ``name`` (via the registry), ``version`` and ``question``."""

    version: ClassVar[str] = "1"
    multi_intent: ClassVar[bool] = False
    needs_candidates: ClassVar[bool] = False
    needs_examples: ClassVar[bool] = False

    def __init__(self, options: TemplateOptions | None = None):
        self.options = options or TemplateOptions()

    @property
    def name(self) -> str:  # type: ignore[override]
        return type(self).registry_name  # type: ignore[attr-defined]

    # -- building -------------------------------------------------------------------------------
    def session_items(self, ctx: PromptContext) -> list[ItemText]:
        if not ctx.session:
            raise IntentrecError(f"prompt template '{self.name}': the session has no items")
        return list(ctx.session[-self.options.max_session_items :])

    def render_session(self, items: list[ItemText]) -> str:
        o = self.options
        return render_list(items, max_words=o.max_title_words, max_chars=o.max_title_chars)

    def build(self, ctx: PromptContext) -> list[Message]:
        if self.needs_candidates and not ctx.candidates:
            raise IntentrecError(f"prompt template '{self.name}' needs a candidate list")
        if self.needs_examples and not ctx.examples:
            raise IntentrecError(f"prompt template '{self.name}' needs few-shot examples")
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": self.user_text(ctx)}]

    def user_text(self, ctx: PromptContext) -> str:
        raise NotImplementedError

    # -- parsing --------------------------------------------------------------------------------
    def parse(self, answer_text: str) -> ParsedAnswer:
        return parse_single(answer_text)


class _SingleItemQuestion(PromptTemplate):
    question: ClassVar[str]

    def user_text(self, ctx: PromptContext) -> str:
        session = self.render_session(self.session_items(ctx))
        return f"The user clicked these items, oldest first:\n{session}\n\n{self.question}"


@TEMPLATES.register("llm4sbr-long")
class LongTermPreference(_SingleItemQuestion):
    """LLM4SBR's long-term view: what the whole session says about the user's lasting taste."""

    question = (
        "Looking at the whole session, name one item that matches the user's long-term interest. "
        "Answer with one item name only, without explanation."
    )


@TEMPLATES.register("llm4sbr-short")
class ShortTermPreference(_SingleItemQuestion):
    """LLM4SBR's short-term view: what the latest clicks say the user wants right now."""

    question = (
        "Looking mostly at the latest clicks, name one item the user wants right now. "
        "Answer with one item name only, without explanation."
    )


@TEMPLATES.register("llm4sbr-normal")
class PlainPreference(_SingleItemQuestion):
    """Ablation of the two LLM4SBR views: the same question with no long/short-term qualifier."""

    question = "Name one item the user is interested in. Answer with one item name only, without explanation."


@TEMPLATES.register("dmsrec")
class MultiIntent(PromptTemplate):
    """LLM-DMsRec: the session may mix several intents; pick items matching them from the candidates."""

    multi_intent = True
    needs_candidates = True

    def user_text(self, ctx: PromptContext) -> str:
        o = self.options
        session = self.render_session(self.session_items(ctx))
        candidates = render_list(
            list(ctx.candidates or [])[: o.max_candidates],
            max_words=o.max_candidate_title_words,
            max_chars=o.max_title_chars,
        )
        return (
            f"The user clicked these items, oldest first:\n{session}\n\n"
            f"Candidate items:\n{candidates}\n\n"
            "A session can serve several intents at once. Choose, from the candidate items only, the "
            f"items that match the user's intents (at most {o.max_intents}). Write their names separated "
            "by ';' and nothing else."
        )

    def parse(self, answer_text: str) -> ParsedAnswer:
        return parse_multi(answer_text, separator=";", max_items=self.options.max_intents)


def _render_inline_session(items: list[ItemText], options: TemplateOptions) -> str:
    return render_list(items, max_words=options.max_title_words, max_chars=options.max_title_chars)


class _NextTitle(PromptTemplate):
    """SeMSR-style prompts: predict the title of the next item, optionally after a short rationale."""

    with_rationale: ClassVar[bool] = False

    def _example_block(self, example: FewShotExample, n: int) -> str:
        o = self.options
        session = _render_inline_session(example.session[-o.max_session_items :], o)
        target = truncate_title(example.target.title or example.target.item_id, o.max_title_words, o.max_title_chars)
        lines = [f"Example {n}.", f"Session:\n{session}"]
        if self.with_rationale and example.rationale:
            lines.append(f"Reasoning: {' '.join(example.rationale.split())}")
        lines.append(f"Answer: {target}")
        return "\n".join(lines)

    def user_text(self, ctx: PromptContext) -> str:
        parts = []
        if self.needs_examples:
            examples = list(ctx.examples or [])[: self.options.max_examples]
            parts.append("\n\n".join(self._example_block(e, n) for n, e in enumerate(examples, 1)))
        session = self.render_session(self.session_items(ctx))
        parts.append(f"Session:\n{session}")
        if self.with_rationale:
            parts.append(
                "Think about what the user is looking for in one or two sentences on a line starting "
                "with 'Reasoning:'. Then give the title of the item they will click next on a line "
                "starting with 'Answer:'."
            )
        else:
            parts.append("Give the title of the item the user will click next, on a line starting with 'Answer:'.")
        return "\n\n".join(parts)

    def parse(self, answer_text: str) -> ParsedAnswer:
        if self.with_rationale:
            return parse_rationale_then_answer(answer_text)
        return parse_single(answer_text)


@TEMPLATES.register("semsr-fs")
class FewShotNextTitle(_NextTitle):
    needs_examples = True


@TEMPLATES.register("semsr-zs-cot")
class ZeroShotReasonedNextTitle(_NextTitle):
    with_rationale = True


@TEMPLATES.register("semsr-fs-cot")
class FewShotReasonedNextTitle(_NextTitle):
    needs_examples = True
    with_rationale = True


def get_template(name: str, **options: object) -> PromptTemplate:
    """A template by registry name, with optional :class:`TemplateOptions` overrides."""
    cls = TEMPLATES.get(name)
    return cls(TemplateOptions.build(dict(options), where=f"prompt template '{name}' options"))


def template_names() -> list[str]:
    return TEMPLATES.names()


__all__ = [
    "FewShotExample",
    "ItemText",
    "Message",
    "PromptContext",
    "PromptTemplate",
    "TEMPLATES",
    "TemplateOptions",
    "get_template",
    "prompt_text",
    "template_names",
]
