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
  without a title is shown by its id alone. The compact LLM4SBR templates (``llm4sbr-*-compact``)
  leave the ids out of titled items and ask their question before the session.

Changing the wording of a template changes its prompts (so it gets new answer-store keys); bump its
``version`` too, so answers linked to examples under the old wording are reported as stale.

The SemSR "LLM as the recommender" baselines (``intentrec.evaluation.llm_ranker``) use ``semsr-fs`` and
two two-call chains: ``semsr-zcot-rationale`` then ``semsr-zcot-title`` (ZCoT), and
``semsr-fscot-rationale`` then ``semsr-fscot-title`` (FSCoT, worked examples with their rationales).
The second call of a chain gets the first call's parsed rationale as ``PromptContext.rationale``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import ClassVar

from intentrec.config import Config
from intentrec.errors import IntentrecError
from intentrec.registry import Registry
from intentrec.semantic.parsing import (
    ParsedAnswer,
    collapse_repeats,
    normalise_text,
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
    #: the first call's answer in a two-call chain (``semsr-*-title`` templates): what the user wants
    rationale: str | None = None


Message = dict[str, str]


class TemplateOptions(Config):
    max_session_items: int = 20
    max_title_words: int = 24
    max_title_chars: int = 160
    max_candidates: int = 50
    max_candidate_title_words: int = 12
    max_examples: int = 3
    max_intents: int = 5
    max_rationale_words: int = 60


def truncate_title(title: str, max_words: int, max_chars: int) -> str:
    """Cut a title to ``max_words`` whitespace words and ``max_chars`` characters (adds '…' if cut)."""
    words = title.split()
    text = " ".join(words[:max_words])
    cut = len(words) > max_words
    if len(text) > max_chars:
        text = text[:max_chars].rstrip()
        cut = True
    return text + "…" if cut else text


def render_item(item: ItemText, *, max_words: int, max_chars: int, with_id: bool = True) -> str:
    title = (item.title or "").strip()
    if not title:
        return f"[ID: {item.item_id}]"
    text = truncate_title(title, max_words, max_chars)
    return f"{text} [ID: {item.item_id}]" if with_id else text


def render_list(items: list[ItemText], *, max_words: int, max_chars: int, with_id: bool = True) -> str:
    return "\n".join(
        f"{n}. {render_item(item, max_words=max_words, max_chars=max_chars, with_id=with_id)}"
        for n, item in enumerate(items, 1)
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
    system: ClassVar[str] = SYSTEM
    multi_intent: ClassVar[bool] = False
    needs_candidates: ClassVar[bool] = False
    needs_examples: ClassVar[bool] = False
    #: the prompt shows a rationale (``PromptContext.rationale``) produced by an earlier call
    needs_rationale: ClassVar[bool] = False
    #: the few-shot examples must carry rationales (``FewShotExample.rationale``)
    needs_example_rationales: ClassVar[bool] = False
    #: session items are shown as ``<title> [ID: <item id>]`` (False: the title alone)
    show_item_ids: ClassVar[bool] = True

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
        return render_list(items, max_words=o.max_title_words, max_chars=o.max_title_chars, with_id=self.show_item_ids)

    def build(self, ctx: PromptContext) -> list[Message]:
        if self.needs_candidates and not ctx.candidates:
            raise IntentrecError(f"prompt template '{self.name}' needs a candidate list")
        if self.needs_examples and not ctx.examples:
            raise IntentrecError(f"prompt template '{self.name}' needs few-shot examples")
        if self.needs_example_rationales and not any(e.rationale for e in ctx.examples or []):
            raise IntentrecError(f"prompt template '{self.name}' needs few-shot examples with rationales")
        if self.needs_rationale and not (ctx.rationale or "").strip():
            raise IntentrecError(f"prompt template '{self.name}' needs the rationale of the first call")
        return [{"role": "system", "content": self.system}, {"role": "user", "content": self.user_text(ctx)}]

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


COMPACT_SYSTEM = "You are a shopping assistant. Answer with one item name only."


class _CompactQuestion(PromptTemplate):
    """The LLM4SBR views worded for speed: a short system message, the question *before* the session
    and items without their ids (titleless items still show their id).

    With the question first, everything up to the session is the same in every prompt, so the engine
    evaluates it once per call and copies it between slots (``share_prefix``), and a prompt whose
    session extends the previous prompt's session reuses all of it; with the question last it is
    evaluated again for every prompt.
    """

    system = COMPACT_SYSTEM
    show_item_ids = False
    question: ClassVar[str]

    def user_text(self, ctx: PromptContext) -> str:
        session = self.render_session(self.session_items(ctx))
        return f"{self.question}\nThe user's clicks, oldest first:\n{session}"


@TEMPLATES.register("llm4sbr-long-compact")
class CompactLongTermPreference(_CompactQuestion):
    """``llm4sbr-long`` in the compact wording."""

    question = "Name one item that matches the user's long-term interest, judging by the whole session."


@TEMPLATES.register("llm4sbr-short-compact")
class CompactShortTermPreference(_CompactQuestion):
    """``llm4sbr-short`` in the compact wording."""

    question = "Name one item the user wants right now, judging mostly by the latest clicks."


@TEMPLATES.register("llm4sbr-normal-compact")
class CompactPlainPreference(_CompactQuestion):
    """``llm4sbr-normal`` in the compact wording."""

    question = "Name one item the user is interested in."


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
    """One-call next-title prompts with an inline ``Reasoning:`` line (``semsr-zs-cot``,
    ``semsr-fs-cot``). The SemSR baselines use the two-call chains below instead."""

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


SEMSR_SYSTEM = "You are a helpful recommendation system for an e-commerce platform."
SEMSR_TITLE_INSTRUCTION = (
    "Predict the title of the next product the user will click in this session. Output only the title."
)
SEMSR_RATIONALE_INSTRUCTION = (
    "In one or two sentences, explain what the user is looking for in this session and why. "
    "Output only the explanation."
)
RATIONALE_LABEL = "What the user is looking for:"
#: A parsed rationale longer than this is cut at a word boundary.
MAX_RATIONALE_CHARS = 600

_RATIONALE_PREFIX = re.compile(
    r"^(?:reasoning|rationale|explanation|thoughts?|analysis|answer|what the user is looking for)\s*[:\-–]\s*",
    re.I,
)
_RATIONALE_MARKUP = re.compile(r"\*\*|__|`+|~~|^#{1,6}\s*")
_RATIONALE_REFUSAL = re.compile(
    r"^(?:i'?m sorry|i am sorry|sorry|i (?:cannot|can't|can not|am unable)|as an ai)\b", re.I
)
_HAS_ALNUM = re.compile(r"[^\W_]", re.UNICODE)


def parse_rationale(answer: object) -> ParsedAnswer:
    """The first call of a two-call chain: one cleaned explanation (never raises).

    Normalised like every answer (NFKC, no control characters or chat tokens), markdown and a leading
    label ("Reasoning:", "What the user is looking for:") dropped, whitespace collapsed, loops
    collapsed, cut to :data:`MAX_RATIONALE_CHARS`. ``garbage``: no letters or digits, or a refusal.
    """
    raw = answer if isinstance(answer, str) else ("" if answer is None else str(answer))
    text = _RATIONALE_MARKUP.sub("", normalise_text(raw))
    text = collapse_repeats(" ".join(text.split()))
    for _ in range(2):  # "Reasoning: What the user is looking for: ..."
        text = _RATIONALE_PREFIX.sub("", text).strip()
    if not text:
        return ParsedAnswer([], "garbage" if raw.strip() else "empty", raw)
    if not _HAS_ALNUM.search(text) or _RATIONALE_REFUSAL.match(text):
        return ParsedAnswer([], "garbage", raw)
    if len(text) > MAX_RATIONALE_CHARS:
        text = text[:MAX_RATIONALE_CHARS].rsplit(" ", 1)[0].rstrip(" ,;:") + "…"
    return ParsedAnswer([text], "ok", raw)


class _SemSRPrompt(PromptTemplate):
    """The SemSR baselines' wording: a helpful recommendation system for an e-commerce platform that
    predicts the title of the next product (and, in a two-call chain, first says what the user wants).

    Few-shot blocks: ``Example n.`` / ``Session:`` (numbered items) / optionally
    ``What the user is looking for: <rationale>`` / optionally ``Answer: <next title>``.
    """

    system = SEMSR_SYSTEM
    show_example_rationales: ClassVar[bool] = False
    show_example_targets: ClassVar[bool] = True

    def rationale_text(self, text: str) -> str:
        o = self.options
        return truncate_title(" ".join(text.split()), o.max_rationale_words, MAX_RATIONALE_CHARS)

    def shown_examples(self, ctx: PromptContext) -> list[FewShotExample]:
        examples = list(ctx.examples or [])
        if self.needs_example_rationales:  # a worked example without its rationale teaches nothing here
            examples = [e for e in examples if e.rationale]
        return examples[: self.options.max_examples]

    def example_block(self, example: FewShotExample, n: int) -> str:
        o = self.options
        lines = [f"Example {n}.", f"Session:\n{self.render_session(example.session[-o.max_session_items :])}"]
        if self.show_example_rationales and example.rationale:
            lines.append(f"{RATIONALE_LABEL} {self.rationale_text(example.rationale)}")
        if self.show_example_targets:
            target = example.target.title or example.target.item_id
            lines.append(f"Answer: {truncate_title(target, o.max_title_words, o.max_title_chars)}")
        return "\n".join(lines)

    def question(self, ctx: PromptContext) -> str:
        raise NotImplementedError

    def user_text(self, ctx: PromptContext) -> str:
        parts = []
        if self.needs_examples:
            parts.append("\n\n".join(self.example_block(e, n) for n, e in enumerate(self.shown_examples(ctx), 1)))
        parts.append(f"Session:\n{self.render_session(self.session_items(ctx))}")
        parts.append(self.question(ctx))
        return "\n\n".join(parts)


class _SemSRTitle(_SemSRPrompt):
    def question(self, ctx: PromptContext) -> str:
        if self.needs_rationale:
            return f"{RATIONALE_LABEL} {self.rationale_text(ctx.rationale or '')}\n\n{SEMSR_TITLE_INSTRUCTION}"
        return SEMSR_TITLE_INSTRUCTION

    def parse(self, answer_text: str) -> ParsedAnswer:
        return parse_single(answer_text)


class _SemSRRationale(_SemSRPrompt):
    show_example_targets = False

    def question(self, ctx: PromptContext) -> str:
        return SEMSR_RATIONALE_INSTRUCTION

    def parse(self, answer_text: str) -> ParsedAnswer:
        return parse_rationale(answer_text)


@TEMPLATES.register("semsr-fs")
class FewShotNextTitle(_SemSRTitle):
    """FS-LLM: a few solved sessions (session, next title), then the session; output only the title.

    Version 2: the paper's wording (a helpful recommendation system for an e-commerce platform;
    output only the title) instead of version 1's shopping assistant and ``Answer:`` line.
    """

    version = "2"
    needs_examples = True


@TEMPLATES.register("semsr-zcot-rationale")
class ZeroShotRationale(_SemSRRationale):
    """ZCoT-LLM, first call: what the user is looking for in the session, and why."""


@TEMPLATES.register("semsr-zcot-title")
class ZeroShotTitleFromRationale(_SemSRTitle):
    """ZCoT-LLM, second call: the next title, given the session and the first call's rationale."""

    needs_rationale = True


@TEMPLATES.register("semsr-fscot-rationale")
class FewShotRationale(_SemSRRationale):
    """FSCoT-LLM, first call: as ZCoT's, after example sessions shown with their rationales."""

    needs_examples = True
    needs_example_rationales = True
    show_example_rationales = True


@TEMPLATES.register("semsr-fscot-title")
class FewShotTitleFromRationale(_SemSRTitle):
    """FSCoT-LLM, second call: worked examples (session, rationale, next title), then the session
    with the first call's rationale."""

    needs_examples = True
    needs_example_rationales = True
    needs_rationale = True
    show_example_rationales = True


@TEMPLATES.register("semsr-zs-cot")
class ZeroShotReasonedNextTitle(_NextTitle):
    with_rationale = True


@TEMPLATES.register("semsr-fs-cot")
class FewShotReasonedNextTitle(_NextTitle):
    needs_examples = True
    with_rationale = True


#: The LLM4SBR view templates by wording: ``standard`` (the question after the session, item ids
#: shown) and ``compact`` (the question first, no ids; see :class:`_CompactQuestion`).
LLM4SBR_VIEW_TEMPLATES: dict[str, dict[str, str]] = {
    "standard": {"long": "llm4sbr-long", "short": "llm4sbr-short", "normal": "llm4sbr-normal"},
    "compact": {"long": "llm4sbr-long-compact", "short": "llm4sbr-short-compact", "normal": "llm4sbr-normal-compact"},
}


def llm4sbr_view_template(view: str, prompts: str = "standard") -> str:
    """The template name of one LLM4SBR view (long, short, normal) in one wording."""
    return LLM4SBR_VIEW_TEMPLATES[prompts][view]


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
    "LLM4SBR_VIEW_TEMPLATES",
    "get_template",
    "llm4sbr_view_template",
    "parse_rationale",
    "prompt_text",
    "template_names",
]
