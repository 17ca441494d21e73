"""The shipped SmolLM2 model for tests with a real LLM, and a few prompts to give it."""

from __future__ import annotations

import os

import pytest

from intentrec.semantic.llm.models import installed_models


def require_smollm2() -> None:
    """Skip where the LLM stage is not installed; in CI (scripts/install-llm.sh ran) fail instead."""
    reason = None
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        reason = "llama-cpp-python is not installed (scripts/install-llm.sh)"
    if reason is None and not installed_models().get("smollm2"):
        reason = "the smollm2 model package is not installed (scripts/install-llm.sh)"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def chat_prompt(items: list[str], question: str = "Name one item the user wants next. Answer with a name only."):
    listing = "\n".join(f"{i}. {t}" for i, t in enumerate(items, 1))
    return [
        {"role": "system", "content": "You are a shopping assistant."},
        {"role": "user", "content": f"The user clicked:\n{listing}\n\n{question}"},
    ]


ITEMS = [
    "Rosewater Facial Toner",
    "Matte Liquid Lipstick",
    "Volumizing Mascara",
    "Argan Oil Shampoo",
    "Argan Oil Conditioner",
    "Gel Nail Polish Set",
    "Vitamin C Serum",
]
# prefix-augmented prompts (each session prefix is a prompt), shuffled, with one duplicate
PROMPTS = [chat_prompt(ITEMS[:k]) for k in (3, 1, 5, 2, 7, 4, 6)] + [chat_prompt(ITEMS[:2])]
