"""Prompt templates: registry, wording invariants, truncation rules, parsing per template."""

from __future__ import annotations

import json

import pytest

from intentrec.errors import ConfigError, IntentrecError
from intentrec.semantic.prompts import (
    SYSTEM,
    FewShotExample,
    ItemText,
    PromptContext,
    get_template,
    llm4sbr_view_template,
    parse_rationale,
    prompt_text,
    template_names,
    truncate_title,
)

SESSION = [
    ItemText("B001", "OPI Nail Lacquer, Simmer and Shimmer, 0.5-Fluid Ounce"),
    ItemText("B002", "Essie Gel Couture Top Coat"),
    ItemText("B003", None),
]
CANDIDATES = [ItemText(f"C{i}", f"Candidate product {i}") for i in range(60)]
EXAMPLES = [
    FewShotExample(
        [ItemText("X1", "Mascara"), ItemText("X2", "Eye primer")], ItemText("X3", "Eyeliner"), "Eye make-up."
    ),
    FewShotExample([ItemText("Y1", "Shampoo")], ItemText("Y2", "Conditioner"), "Hair care."),
]
RATIONALE = "The user is  painting their nails\nand wants a finishing coat."
FULL = PromptContext(session=SESSION, candidates=CANDIDATES, examples=EXAMPLES, rationale=RATIONALE)

COMPACT = ["llm4sbr-long-compact", "llm4sbr-normal-compact", "llm4sbr-short-compact"]
ALL = [
    "dmsrec",
    "llm4sbr-long",
    "llm4sbr-long-compact",
    "llm4sbr-normal",
    "llm4sbr-normal-compact",
    "llm4sbr-short",
    "llm4sbr-short-compact",
    "semsr-fs",
    "semsr-fs-cot",
    "semsr-fscot-rationale",
    "semsr-fscot-title",
    "semsr-zcot-rationale",
    "semsr-zcot-title",
    "semsr-zs-cot",
]
CHAINS = ["semsr-zcot-rationale", "semsr-zcot-title", "semsr-fscot-rationale", "semsr-fscot-title"]


def test_registry_holds_every_template() -> None:
    assert template_names() == ALL


def test_unknown_template_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="llm4sbr-long"):
        get_template("llm4sbr-medium")


def test_unknown_option_is_rejected() -> None:
    with pytest.raises(ConfigError, match="max_sesion_items"):
        get_template("llm4sbr-long", max_sesion_items=3)


@pytest.mark.parametrize("name", ALL)
def test_messages_are_system_then_user_and_deterministic(name: str) -> None:
    template = get_template(name)
    messages = template.build(FULL)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert all(isinstance(m["content"], str) and m["content"] for m in messages)
    assert template.build(FULL) == messages
    assert template.name == name
    assert template.version


@pytest.mark.parametrize("name", [n for n in ALL if n not in COMPACT])
def test_session_items_are_numbered_with_title_and_id(name: str) -> None:
    user = get_template(name).build(FULL)[1]["content"]
    assert "1. OPI Nail Lacquer, Simmer and Shimmer, 0.5-Fluid Ounce [ID: B001]" in user
    assert "2. Essie Gel Couture Top Coat [ID: B002]" in user
    assert "3. [ID: B003]" in user  # an untitled item is shown by its id


def test_every_template_has_its_own_prompt() -> None:
    users = {name: get_template(name).build(FULL)[1]["content"] for name in ALL}
    assert len(set(users.values())) == len(ALL)


def test_long_short_normal_differ_only_in_the_qualifier() -> None:
    long_ = get_template("llm4sbr-long").build(FULL)[1]["content"]
    short = get_template("llm4sbr-short").build(FULL)[1]["content"]
    normal = get_template("llm4sbr-normal").build(FULL)[1]["content"]
    assert "long-term" in long_ and "long-term" not in short and "long-term" not in normal
    assert "latest" in short and "latest" not in long_ and "latest" not in normal
    assert "one item name" in long_ and "one item name" in short and "one item name" in normal


@pytest.mark.parametrize("name", COMPACT)
def test_compact_templates_ask_first_and_show_titles_without_ids(name: str) -> None:
    system, user = (m["content"] for m in get_template(name).build(FULL))
    assert len(system) < len(SYSTEM)
    assert user.endswith(
        "1. OPI Nail Lacquer, Simmer and Shimmer, 0.5-Fluid Ounce\n2. Essie Gel Couture Top Coat\n3. [ID: B003]"
    )
    # everything before the session is fixed: a longer session only appends to the prompt
    longer = get_template(name).build(PromptContext(session=SESSION + [ItemText("B004", "Nail file")]))[1]["content"]
    assert longer.startswith(user)


def test_view_templates_by_wording() -> None:
    assert llm4sbr_view_template("short") == "llm4sbr-short"
    assert llm4sbr_view_template("long", "compact") == "llm4sbr-long-compact"
    assert {llm4sbr_view_template(v, w) for v in ("long", "short", "normal") for w in ("standard", "compact")} <= set(
        ALL
    )


def test_long_sessions_keep_the_most_recent_items() -> None:
    session = [ItemText(f"I{i}", f"Title {i}") for i in range(30)]
    user = get_template("llm4sbr-long", max_session_items=5).build(PromptContext(session))[1]["content"]
    assert "1. Title 25 [ID: I25]" in user
    assert "5. Title 29 [ID: I29]" in user
    assert "Title 24 " not in user and "6." not in user


def test_titles_are_truncated_to_the_word_and_char_budget() -> None:
    assert truncate_title("a b c d e", 3, 100) == "a b c…"
    assert truncate_title("a b c", 3, 100) == "a b c"
    assert truncate_title("x" * 50, 10, 20) == "x" * 20 + "…"
    title = " ".join(f"w{i}" for i in range(40))
    user = get_template("llm4sbr-long", max_title_words=4).build(PromptContext([ItemText("A", title)]))[1]["content"]
    assert "1. w0 w1 w2 w3… [ID: A]" in user


def test_dmsrec_lists_at_most_max_candidates_and_asks_for_separator() -> None:
    user = get_template("dmsrec").build(FULL)[1]["content"]
    assert "50. Candidate product 49 [ID: C49]" in user
    assert "Candidate product 50" not in user
    assert "';'" in user


def test_dmsrec_needs_candidates() -> None:
    with pytest.raises(IntentrecError, match="candidate"):
        get_template("dmsrec").build(PromptContext(SESSION))


@pytest.mark.parametrize("name", ["semsr-fs", "semsr-fs-cot"])
def test_few_shot_templates_need_and_show_examples(name: str) -> None:
    with pytest.raises(IntentrecError, match="few-shot"):
        get_template(name).build(PromptContext(SESSION))
    user = get_template(name).build(FULL)[1]["content"]
    assert "Answer: Eyeliner" in user and "Answer: Conditioner" in user
    assert ("Reasoning: Eye make-up." in user) == name.endswith("cot")


def test_empty_session_is_an_error() -> None:
    with pytest.raises(IntentrecError, match="no items"):
        get_template("llm4sbr-long").build(PromptContext([]))


def test_parsers_per_template() -> None:
    assert get_template("llm4sbr-long").parse("1. Essie Top Coat [ID: B002]").texts == ["Essie Top Coat"]
    assert get_template("dmsrec").parse("Candidate product 1; Candidate product 7").texts == [
        "Candidate product 1",
        "Candidate product 7",
    ]
    assert get_template("semsr-zs-cot").parse("Reasoning: nails.\nAnswer: Top coat").texts == ["Top coat"]
    assert get_template("semsr-fs").parse("Answer: Top coat").texts == ["Top coat"]


def test_prompt_text_is_canonical_json() -> None:
    messages = get_template("llm4sbr-short").build(FULL)
    text = prompt_text(messages)
    assert json.loads(text) == messages
    assert prompt_text([dict(reversed(list(m.items()))) for m in messages]) == text


def test_semsr_fs_has_the_papers_wording() -> None:
    template = get_template("semsr-fs")
    system, user = (m["content"] for m in template.build(FULL))
    assert template.version == "2"
    assert system == "You are a helpful recommendation system for an e-commerce platform."
    assert user.startswith("Example 1.\nSession:\n1. Mascara [ID: X1]") and "Answer: Eyeliner" in user
    assert user.endswith(
        "Predict the title of the next product the user will click in this session. Output only the title."
    )
    assert "Reasoning" not in user and "looking for" not in user  # no rationales in FS


def test_one_call_cot_templates_keep_their_wording() -> None:
    for name in ("semsr-zs-cot", "semsr-fs-cot"):
        system, user = (m["content"] for m in get_template(name).build(FULL))
        assert system == SYSTEM and get_template(name).version == "1"
        assert user.endswith("on a line starting with 'Answer:'.")


@pytest.mark.parametrize("name", CHAINS)
def test_chain_templates_use_the_semsr_system_and_version_1(name: str) -> None:
    template = get_template(name)
    assert template.version == "1" and template.name == name
    assert template.build(FULL)[0]["content"].startswith("You are a helpful recommendation system")


def test_rationale_calls_ask_why_and_title_calls_show_the_rationale() -> None:
    zr = get_template("semsr-zcot-rationale").build(PromptContext(SESSION))[1]["content"]
    assert zr.startswith("Session:\n1. OPI") and "what the user is looking for" in zr and "Example" not in zr
    assert zr.endswith("Output only the explanation.")
    with pytest.raises(IntentrecError, match="rationale of the first call"):
        get_template("semsr-zcot-title").build(PromptContext(SESSION))
    zt = get_template("semsr-zcot-title").build(PromptContext(SESSION, rationale=RATIONALE))[1]["content"]
    assert (
        "3. [ID: B003]\n\nWhat the user is looking for: The user is painting their nails and wants a finishing coat."
        in zt
    )
    assert zt.endswith("Output only the title.")
    long_rationale = " ".join(f"w{i}" for i in range(100))
    cut = get_template("semsr-zcot-title", max_rationale_words=5).build(
        PromptContext(SESSION, rationale=long_rationale)
    )
    assert "looking for: w0 w1 w2 w3 w4…\n" in cut[1]["content"]


def test_fscot_templates_show_worked_examples_with_their_rationales() -> None:
    no_rationales = [FewShotExample(e.session, e.target) for e in EXAMPLES]
    for name in ("semsr-fscot-rationale", "semsr-fscot-title"):
        with pytest.raises(IntentrecError, match="examples with rationales"):
            get_template(name).build(PromptContext(SESSION, examples=no_rationales, rationale=RATIONALE))
    rationale_user = get_template("semsr-fscot-rationale").build(FULL)[1]["content"]
    assert "2. Eye primer [ID: X2]\nWhat the user is looking for: Eye make-up.\n\nExample 2." in rationale_user
    assert "Answer:" not in rationale_user  # the rationale call's examples stop at the rationale
    title_user = get_template("semsr-fscot-title").build(FULL)[1]["content"]
    assert "What the user is looking for: Hair care.\nAnswer: Conditioner" in title_user
    assert "What the user is looking for: The user is painting" in title_user.rsplit("Session:", 1)[1]
    # an example without a rationale is left out of the worked examples, not shown half-done
    mixed = [EXAMPLES[0], FewShotExample(EXAMPLES[1].session, EXAMPLES[1].target)]
    user = get_template("semsr-fscot-title").build(PromptContext(SESSION, examples=mixed, rationale="x"))[1]["content"]
    assert "Answer: Eyeliner" in user and "Conditioner" not in user and "Example 2." not in user


def test_parse_rationale() -> None:
    assert parse_rationale("Reasoning: **The user** wants  nail\npolish.").texts == ["The user wants nail polish."]
    assert parse_rationale("What the user is looking for: hair care").texts == ["hair care"]
    assert parse_rationale("<|im_start|>assistant The user wants shampoo.").texts == ["The user wants shampoo."]
    assert parse_rationale("").status == "empty" and parse_rationale(None).status == "empty"
    assert parse_rationale("!!! ???").status == "garbage"
    assert parse_rationale("I'm sorry, I cannot help with that.").status == "garbage"
    assert parse_rationale("Reasoning:").status == "garbage"
    long = parse_rationale(" ".join(f"word{i}" for i in range(500))).texts[0]
    assert len(long) <= 601 and long.endswith("…")
    assert get_template("semsr-zcot-rationale").parse("Rationale: skin care").texts == ["skin care"]
    assert get_template("semsr-zcot-title").parse("Answer: Top coat").texts == ["Top coat"]
