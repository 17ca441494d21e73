"""LLMGR prompt templates, versioned: a run records the version, and a released version never changes.

A template is plain text with slots. ``next_item`` (stage 2) has ``{global}`` and ``{local}`` (one
projected "graph" token each, from the ID model's session vectors) and ``{items}`` (the session's
last items, each rendered as ``item`` joined by ``separator``; ``item`` has ``{node}``, the item's
projected ID vector, and ``{title}``, its title tokens, kept only with ``with_titles``). ``align``
(stage 1) has ``{title}``. Text between slots is tokenised once; titles once per item.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from intentrec.errors import ConfigError

_SLOT = re.compile(r"\{(global|local|items|node|title)\}")


@dataclass(frozen=True)
class PromptSet:
    version: str
    next_item: str
    item: str
    separator: str
    align: str


PROMPTS: dict[str, PromptSet] = {
    p.version: p
    for p in (
        PromptSet(
            version="v1",
            next_item=(
                "This is a session graph with readout {global} and last click {local}. "
                "The user clicked these items in order: {items}. Predict the next item:"
            ),
            item="{node}{title}",
            separator=",",
            align="Item title:{title}. Which node is this? Node:",
        ),
    )
}


def prompt_set(version: str) -> PromptSet:
    try:
        return PROMPTS[version]
    except KeyError:
        raise ConfigError(f"method.prompts: unknown prompt version '{version}' (known: {', '.join(PROMPTS)})") from None


def split_template(template: str, slots: tuple[str, ...], where: str) -> list[tuple[str, str]]:
    """``[("text", s) | ("slot", name), ...]`` in order; each of ``slots`` exactly once, no others."""
    parts: list[tuple[str, str]] = []
    position = 0
    for match in _SLOT.finditer(template):
        if match.start() > position:
            parts.append(("text", template[position : match.start()]))
        parts.append(("slot", match.group(1)))
        position = match.end()
    if position < len(template):
        parts.append(("text", template[position:]))
    found = [name for kind, name in parts if kind == "slot"]
    if sorted(found) != sorted(slots):
        raise ConfigError(f"{where}: the template must name each of {list(slots)} once, it names {found}")
    return parts
