"""Answer parsers: the chatter, numbering, echoed ids and loops small models produce."""

from __future__ import annotations

import time

import pytest

from intentrec.semantic.parsing import (
    MAX_TEXT_CHARS,
    collapse_repeats,
    parse_multi,
    parse_rationale_then_answer,
    parse_single,
)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("OPI Nail Lacquer", "OPI Nail Lacquer"),
        ("1. OPI Nail Lacquer", "OPI Nail Lacquer"),
        ("(2) OPI Nail Lacquer", "OPI Nail Lacquer"),
        ("- OPI Nail Lacquer", "OPI Nail Lacquer"),
        ("**OPI Nail Lacquer**", "OPI Nail Lacquer"),
        ("`OPI Nail Lacquer`", "OPI Nail Lacquer"),
        ('"OPI Nail Lacquer"', "OPI Nail Lacquer"),
        ("“OPI Nail Lacquer”.", "OPI Nail Lacquer"),
        ("OPI Nail Lacquer [ID: B004756YJA]", "OPI Nail Lacquer"),
        ("OPI Nail Lacquer (id B004756YJA)", "OPI Nail Lacquer"),
        ("OPI Nail Lacquer (B004756YJA)", "OPI Nail Lacquer"),
        ("OPI Nail Lacquer_B004756YJA", "OPI Nail Lacquer"),
        ("OPI Nail Lacquer, item id: 1234", "OPI Nail Lacquer"),
        ('Sure! The user might like "OPI Nail Lacquer" [ID: B004756YJA].', "OPI Nail Lacquer"),
        ("The user is likely to be interested in: Dior Addict Lip Glow", "Dior Addict Lip Glow"),
        ("Based on the session, I would recommend Dior Addict Lip Glow.", "Dior Addict Lip Glow"),
        ("Here is my recommendation: Toy Story (1995)", "Toy Story (1995)"),
        ("They would probably enjoy *Heat* (1995).", "Heat (1995)"),
        ("Answer: Jumanji", "Jumanji"),
        ("**Answer:** Jumanji", "Jumanji"),
        ("Sure!\n\nEssie Nail Polish\nThis fits the user's taste.", "Essie Nail Polish"),
        ("OPI Red Shatter because the user clicked red polish", "OPI Red Shatter"),
        ("Lipstick Lipstick Lipstick Lipstick Lipstick", "Lipstick"),
        ("Toy Story Toy Story Toy Story Toy Story", "Toy Story"),
        # Two repeats are legitimate titles, not loops.
        ("Bora Bora", "Bora Bora"),
        ("New York, New York", "New York, New York"),
        ("Toy Story (1995)", "Toy Story (1995)"),  # a year in parentheses is not an id
        ("日本語のタイトル", "日本語のタイトル"),
        ("Ｆｕｌｌｗｉｄｔｈ Title", "Fullwidth Title"),  # NFKC
        ("<|im_start|>assistant\nMascara<|im_end|>", "Mascara"),
        ("Mas\u200bcara\x00", "Mascara"),
    ],
)
def test_parse_single_cleans(answer: str, expected: str) -> None:
    parsed = parse_single(answer)
    assert parsed.status == "ok"
    assert parsed.texts == [expected]
    assert parsed.raw == answer


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        ("", "empty"),
        ("   \n\t  ", "empty"),
        ("\x00\x01\u200b", "empty"),
        ("** **", "empty"),
        ("???!!!", "garbage"),
        ("...", "garbage"),
        ("I'm sorry, I cannot help with that.", "garbage"),
        ("As an AI language model, I do not know the user's taste.", "garbage"),
        ("\U0001f600\U0001f600\U0001f600", "garbage"),
    ],
)
def test_parse_single_reports_unusable(answer: str, status: str) -> None:
    parsed = parse_single(answer)
    assert parsed.status == status
    assert parsed.texts == []


@pytest.mark.parametrize("answer", [None, 42, b"bytes"])
def test_parse_single_never_raises_on_non_strings(answer: object) -> None:
    parsed = parse_single(answer)  # type: ignore[arg-type]
    assert parsed.status in ("ok", "empty", "garbage")


def test_very_long_looping_answer_is_fast_and_bounded() -> None:
    answer = "Lipstick Red " * 200_000  # 2.6 MB
    start = time.perf_counter()
    parsed = parse_single(answer)
    assert time.perf_counter() - start < 2.0
    assert parsed.texts == ["Lipstick Red"]


def test_long_single_title_is_cut_at_a_word_boundary() -> None:
    words = " ".join(f"word{i}" for i in range(200))
    parsed = parse_single(words)
    assert parsed.status == "ok"
    assert len(parsed.texts[0]) <= MAX_TEXT_CHARS
    assert words.startswith(parsed.texts[0])
    assert parsed.texts[0].split()[-1].startswith("word")


def test_random_unicode_junk_never_raises() -> None:
    import random

    rng = random.Random(0)
    for _ in range(200):
        junk = "".join(chr(rng.randrange(0, 0x2FFFF)) for _ in range(rng.randrange(0, 300)))
        junk = junk.encode("utf-8", "replace").decode("utf-8", "replace")
        for parser in (parse_single, parse_multi, parse_rationale_then_answer):
            parsed = parser(junk)
            assert parsed.status in ("ok", "empty", "garbage")
            assert all(t.strip() for t in parsed.texts)


def test_collapse_repeats_keeps_pairs() -> None:
    assert collapse_repeats("a b a b a b c") == "a b c"
    assert collapse_repeats("a a b") == "a a b"
    assert collapse_repeats("x y z") == "x y z"


def test_parse_multi_splits_cleans_and_dedupes() -> None:
    parsed = parse_multi("1. Lipstick; Mascara [ID: X1]; lipstick;  ; **Eyeliner**")
    assert parsed.status == "ok"
    assert parsed.texts == ["Lipstick", "Mascara", "Eyeliner"]


def test_parse_multi_accepts_a_list_instead_of_separators() -> None:
    assert parse_multi("- Lipstick\n- Mascara\n- Foundation").texts == ["Lipstick", "Mascara", "Foundation"]


def test_parse_multi_caps_the_number_of_intents() -> None:
    parsed = parse_multi(";".join(f"item {i}" for i in range(10)), max_items=3)
    assert parsed.texts == ["item 0", "item 1", "item 2"]


def test_parse_multi_with_nothing_usable() -> None:
    assert parse_multi(" ; ; ").status == "garbage"
    assert parse_multi("").status == "empty"


def test_rationale_answer_takes_the_last_marker() -> None:
    text = "Reasoning: the user wants an answer: polish.\nAnswer: OPI Top Coat"
    assert parse_rationale_then_answer(text).texts == ["OPI Top Coat"]


def test_rationale_cut_off_before_the_answer_is_garbage() -> None:
    text = (
        "Reasoning: the user buys nail polish and will likely want more of the same kind of products "
        "because they keep clicking on"
    )
    parsed = parse_rationale_then_answer(text)
    assert parsed.status == "garbage"
    assert parsed.texts == []


def test_rationale_without_marker_but_short_last_line() -> None:
    text = "The user likes red polish.\nOPI Big Apple Red"
    assert parse_rationale_then_answer(text).texts == ["OPI Big Apple Red"]
