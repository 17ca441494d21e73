"""Turning raw LLM answers into clean item names.

Small instruction models rarely answer with a bare title: they number it, echo the item id we showed
them, wrap it in quotes or markdown, open with chatter ("Sure! The user might like ...") or loop
("Lipstick Lipstick Lipstick ..."). The functions here undo that. They never raise: any input, however
hostile, yields a :class:`ParsedAnswer` whose ``status`` says whether something usable was found.

* ``ok``      at least one cleaned text.
* ``empty``   the answer was blank (or only whitespace / markup).
* ``garbage`` there was text, but nothing that can be an item name (no letters or digits, a refusal,
              a chain of thought with no final answer, an over-long ramble).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Literal

Status = Literal["ok", "empty", "garbage"]

#: Only this many characters of an answer are looked at (a looping model can emit megabytes).
MAX_INPUT_CHARS = 4000
#: A cleaned item name longer than this is cut at a word boundary.
MAX_TEXT_CHARS = 200
#: A final line without an answer marker is accepted as the answer only up to this many words.
MAX_UNMARKED_WORDS = 20


@dataclass(frozen=True)
class ParsedAnswer:
    texts: list[str] = field(default_factory=list)
    status: Status = "empty"
    raw: str = ""


_CONTROL = re.compile(r"[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u200b-\u200f\u2028-\u202e\ufeff]")
_SPECIAL_TOKENS = re.compile(
    r"<\|(?:im_start|start_header_id)\|>\s*(?:system|user|assistant)?(?:<\|end_header_id\|>)?"
    r"|<\|[^|>]{0,40}\|>|</?s>|\[/?INST\]"
)
_ALNUM = re.compile(r"[^\W_]", re.UNICODE)

# Echoed ids in the forms our prompts use ("[ID: B00X]", "(id B00X)") and bare ASIN-like codes.
_ECHOED_ID = re.compile(r"\s*[\(\[\{]\s*(?:item\s*)?id\s*[:#=]?\s*[^\)\]\}]{1,40}[\)\]\}]", re.I)
_BARE_CODE = re.compile(r"\s*[\(\[]\s*[A-Z0-9]{8,14}\s*[\)\]]")
_TRAILING_ID = re.compile(r"\s*[-,;:_|]?\s*\b(?:item\s*)?id\s*[:#=]\s*\S+\s*$", re.I)
_UNDERSCORE_ID = re.compile(r"_(?:[A-Z0-9]{8,14}|\d{1,9})$")

_NUMBERING = re.compile(r"^\s*(?:[-*+•>]+\s*|#{1,6}\s*|\(?\d{1,3}[.):]\s+|\(\d{1,3}\)\s*|#\d{1,3}\s*)")
_MARKDOWN = re.compile(r"\*\*|__|`+|~~")
_EMPHASIS = re.compile(r"\*([^*\n]+)\*")
_QUOTE_PAIRS = [('"', '"'), ("'", "'"), ("“", "”"), ("‘", "’"), ("«", "»"), ("„", "“"), ("*", "*"), ("_", "_")]

_LEADING_CHATTER = [
    re.compile(p, re.I)
    for p in (
        r"^(?:sure|okay|ok|certainly|of course|absolutely|great|yes|alright|hello|hi)\b[!.,:]*\s*",
        r"^here(?:'s| is| are)\b[^:\n]{0,60}:\s*",
        r"^based on\b[^,:\n]{0,120}[,:]\s*",
        r"^(?:i think|i guess|i believe|i would (?:guess|say|suggest|recommend)|i'd (?:guess|say|suggest|recommend)"
        r"|i recommend|i suggest|my (?:guess|answer|recommendation|prediction) is)\b:?\s*(?:that\s+)?",
        r"^(?:the\s+)?(?:user|customer|shopper|viewer|they|he|she)\b[^.:\n]{0,40}?\b"
        r"(?:(?:be\s+)?interested in|like|enjoy|want|prefer|buy|purchase|choose|pick|watch|need|click(?: on)?|be)\b"
        r"(?:\s+(?:is|are|the item|the product|the movie|item|product))?\s*:?\s*",
        r"^(?:final answer|answer|next item|item name|item|product|title|movie|recommendation|recommended item"
        r"|prediction|predicted item|output|intents?)\s*[:\-–]\s*",
    )
]
_TRAILING_CHATTER = re.compile(
    r"\s+(?:because|since|as it\b|as they\b|as the user|which (?:is|are|would|matches|fits)|due to|"
    r"given (?:that|their)|this (?:item|product|is)|it (?:is|seems)|\(note|note:).*$",
    re.I | re.S,
)
_REFUSAL = re.compile(
    r"^(?:i'?m sorry|sorry|i (?:cannot|can't|can not|am unable|don't know|do not know)|as an ai|unfortunately)\b",
    re.I,
)
_ANSWER_MARKER = re.compile(r"(?:final answer|answer|next item|title|recommendation|prediction)\s*[:\-–]\s*", re.I)


def normalise_text(text: object) -> str:
    """NFKC, no control/zero-width characters, no chat special tokens, at most MAX_INPUT_CHARS."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    text = text[:MAX_INPUT_CHARS]
    text = unicodedata.normalize("NFKC", text)
    text = _SPECIAL_TOKENS.sub(" ", text)
    text = _CONTROL.sub("", text)
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")


def collapse_repeats(text: str, min_repeats: int = 3, max_ngram: int = 12) -> str:
    """Collapse a word n-gram repeated ``min_repeats`` or more times in a row to one copy.

    Two repeats are left alone ("Bora Bora", "New York, New York" are real titles); looping models
    repeat far more often than that.
    """
    words = text.split()
    if len(words) < min_repeats:
        return text
    changed = False
    for n in range(1, max_ngram + 1):
        out: list[str] = []
        i = 0
        while i < len(words):
            chunk = words[i : i + n]
            runs = 1
            while len(chunk) == n and words[i + runs * n : i + (runs + 1) * n] == chunk:
                runs += 1
            if runs >= min_repeats:
                out.extend(chunk)
                i += runs * n
                changed = True
                rest = words[i:]
                if len(rest) < n and rest == chunk[: len(rest)]:
                    i = len(words)  # a last, cut-off copy of the loop (answer hit the token limit)
            else:
                out.append(words[i])
                i += 1
        words = out
    return " ".join(words) if changed else text


def _strip_quotes(text: str) -> str:
    for _ in range(3):
        text = text.strip(" \n,;:")
        for left, right in _QUOTE_PAIRS:
            if len(text) >= 2 and text.startswith(left) and text.endswith(right):
                text = text[len(left) : len(text) - len(right)]
                break
        else:
            # An unmatched leading/trailing quote (a cut-off answer) is dropped too.
            text = text.strip("\"'“”‘’«»")
            return text
    return text


def clean_item_text(text: str) -> str:
    """Clean one candidate item name; returns '' if nothing is left."""
    text = " ".join(text.split())
    previous = None
    while previous != text:
        previous = text
        text = _MARKDOWN.sub("", text)
        text = _EMPHASIS.sub(r"\1", text)
        text = _NUMBERING.sub("", text)
        for pattern in _LEADING_CHATTER:
            text = pattern.sub("", text)
        text = _TRAILING_CHATTER.sub("", text)
        text = _ECHOED_ID.sub("", text)
        text = _BARE_CODE.sub("", text)
        text = _TRAILING_ID.sub("", text)
        text = _UNDERSCORE_ID.sub("", text).rstrip(" .!?,;:-–")
        text = _strip_quotes(text)
    text = collapse_repeats(text)
    text = _strip_quotes(text).rstrip(" .!?,;:-–").strip()
    if len(text) > MAX_TEXT_CHARS:
        cut = text[:MAX_TEXT_CHARS]
        text = cut.rsplit(" ", 1)[0] if " " in cut else cut
    return text


def _usable(text: str) -> bool:
    return bool(_ALNUM.search(text)) and not _REFUSAL.match(text)


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.split("\n") if line.strip()]


def _first_answer_line(lines: list[str]) -> str | None:
    """The first line that still holds something after chatter is removed ("Sure!" alone is skipped)."""
    for line in lines:
        cleaned = clean_item_text(line)
        if cleaned and _usable(cleaned):
            return cleaned
        if cleaned and _REFUSAL.match(cleaned):
            return None
    return None


def _status_for_nothing(raw_normalised: str) -> Status:
    """Nothing usable was found: was there anything at all besides whitespace and markup?"""
    return "empty" if not raw_normalised.strip(" \n*#`_-~>") else "garbage"


def parse_single(answer: object) -> ParsedAnswer:
    """One item name: the first line that is not pure chatter, cleaned."""
    raw = answer if isinstance(answer, str) else ("" if answer is None else str(answer))
    text = normalise_text(raw)
    found = _first_answer_line(_lines(text))
    if found:
        return ParsedAnswer([found], "ok", raw)
    return ParsedAnswer([], _status_for_nothing(text), raw)


def parse_multi(answer: object, *, separator: str = ";", max_items: int = 5) -> ParsedAnswer:
    """Several item names separated by ``separator`` (or one per line / numbered list when the model
    ignored the separator). Duplicates (case-insensitive) are dropped, order is kept."""
    raw = answer if isinstance(answer, str) else ("" if answer is None else str(answer))
    text = normalise_text(raw)
    pieces: list[str] = []
    for line in _lines(text):
        pieces.extend(p for p in line.split(separator))
    texts: list[str] = []
    seen: set[str] = set()
    for piece in pieces:
        cleaned = clean_item_text(piece)
        if not cleaned or not _usable(cleaned):
            continue
        key = cleaned.casefold()
        if key not in seen:
            seen.add(key)
            texts.append(cleaned)
        if len(texts) >= max_items:
            break
    if texts:
        return ParsedAnswer(texts, "ok", raw)
    return ParsedAnswer([], _status_for_nothing(text), raw)


def parse_rationale_then_answer(answer: object) -> ParsedAnswer:
    """Chain-of-thought answers: the text after the last 'Answer:'-style marker.

    Without a marker, the last line is taken only if it is short enough to be a title
    (MAX_UNMARKED_WORDS); a rationale cut off by the token limit is reported as garbage.
    """
    raw = answer if isinstance(answer, str) else ("" if answer is None else str(answer))
    text = normalise_text(raw)
    markers = list(_ANSWER_MARKER.finditer(text))
    if markers:
        tail = text[markers[-1].end() :]
        found = _first_answer_line(_lines(tail))
        if found:
            return ParsedAnswer([found], "ok", raw)
        return ParsedAnswer([], "garbage" if text.strip() else "empty", raw)
    lines = _lines(text)
    if (
        lines
        and len(lines[-1].split()) <= MAX_UNMARKED_WORDS
        and not lines[-1].lower().startswith(("reasoning", "rationale"))
    ):
        found = _first_answer_line(lines[-1:])
        if found:
            return ParsedAnswer([found], "ok", raw)
    return ParsedAnswer([], _status_for_nothing(text), raw)
