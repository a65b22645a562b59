"""Answers modelled on what small local models really send, read as a person would.

Each fixture in ``fixtures/answers`` is one answer of a kind seen from Gemma 3 270M and
SmolLM2 135M (issue 12): instruction echoes, our own labels, the example's placeholder, CJK
commas, prose, code blocks, JSON of the wrong shape, components as objects. Every one is
either refused with a reason a person understands, or parsed into what that person would
have taken from it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from critifusion_tui.engine.answers import (
    EchoGuard,
    is_placeholder,
    is_prose,
    read_components,
    read_critique,
    read_tags,
    word_count,
)
from critifusion_tui.instructions import DEFAULT_INSTRUCTIONS
from critifusion_tui.engine.prompts import positive_prompt, seed_tags

FIXTURES = Path(__file__).parent / "fixtures" / "answers"
PROMPT = "cat"
SEEDS = ", ".join(seed_tags(PROMPT))

# The echo guard of each call, built as CritiCore builds it: the templates sent, the data filled in.
GUARDS = {
    "tags": EchoGuard(DEFAULT_INSTRUCTIONS.fixed_wording(["tags_system", "tags_user"]), [PROMPT, SEEDS]),
    "tags_agg": EchoGuard(DEFAULT_INSTRUCTIONS.fixed_wording(["tags_agg_system", "tags_agg_user"]), [PROMPT]),
    "components": EchoGuard(DEFAULT_INSTRUCTIONS.fixed_wording(["components_system", "components_user"]), [PROMPT]),
    "critic": EchoGuard(
        DEFAULT_INSTRUCTIONS.fixed_wording(["critic_system", "critic_user", "critic_alignment"]), [PROMPT]
    ),
    "critic_agg": EchoGuard(DEFAULT_INSTRUCTIONS.fixed_wording(["critic_agg_system", "critic_agg_user"]), []),
}


def answer(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


# (fixture, guard, refusal words) for answers that must be refused.
REFUSED = [
    ("tags_echo_system.txt", "tags", "repeats our instructions"),
    ("tags_echo_system.txt", "tags_agg", "repeats our instructions"),
    ("tags_echo_user_labels.txt", "tags", "repeats our instructions"),
    ("tags_echo_subject_rule.txt", "tags", "repeats our instructions"),
    ("tags_prose_only.txt", "tags", "prose, not a comma-separated tag list"),
    ("tags_placeholder_only.txt", "tags", "holds no tags"),
]


@pytest.mark.parametrize(("fixture", "guard", "why"), REFUSED)
def test_tag_answers_that_are_refused(fixture, guard, why) -> None:
    reading = read_tags(answer(fixture), GUARDS[guard], prompt=PROMPT)
    assert not reading.usable
    assert why in reading.problem


# (fixture, tags a person would take, notes expected)
PARSED_TAGS = [
    (
        "tags_labels_every_line.txt",
        ["a cat on a windowsill", "soft window light", "tabby fur", "shallow depth of field", "watercolor"],
        ["5 tags (asked for 16 to 26)"],
    ),
    ("tags_markdown.txt", ["a red fox", "golden hour light", "snowy forest", "8k"], ["4 tags (asked for 16 to 26)"]),
    (
        "tags_cjk_ideographic_commas.txt",
        ["雪の中の赤いキツネ", "夕暮れの光", "松の森", "高精細"],
        ["4 tags (asked for 16 to 26)"],
    ),
    ("tags_cjk_fullwidth_commas.txt", ["红色狐狸", "雪地", "黄昏光线"], ["3 tags (asked for 16 to 26)"]),
    (
        "tags_prose_mixed.txt",
        ["red fox", "snowy pine forest", "golden hour"],
        ["1 sentence dropped (not tags)", "3 tags (asked for 16 to 26)"],
    ),
    (
        "tags_quoted_commas.txt",
        ['neon shop sign reading "OPEN 24/7, NO REFUNDS"', "rainy street", "night"],
        ["3 tags (asked for 16 to 26)"],
    ),
    ("tags_code_block.txt", ["cat", "sofa", "soft light"], ["3 tags (asked for 16 to 26)"]),
    ("tags_json_object.txt", ["red fox", "snow", "golden hour"], ["3 tags (asked for 16 to 26)"]),
]


@pytest.mark.parametrize(("fixture", "tags", "notes"), PARSED_TAGS)
def test_tag_answers_read_as_a_person_would(fixture, tags, notes) -> None:
    reading = read_tags(answer(fixture), GUARDS["tags"], prompt=PROMPT)
    assert reading.usable, reading.problem
    assert list(reading.items) == tags
    assert list(reading.notes) == notes


def test_a_quoted_phrase_survives_into_the_positive_prompt() -> None:
    reading = read_tags(answer("tags_quoted_commas.txt"), GUARDS["tags"])
    positive = positive_prompt(", ".join(reading.items), "a shop at night")
    assert 'neon shop sign reading "OPEN 24/7, NO REFUNDS"' in positive
    assert positive.endswith("high detailed, sharp focus, 8k, UHD")


def test_a_japanese_prompt_is_split_into_tags() -> None:
    prompt = "雪の中の赤いキツネ"
    reading = read_tags(answer("tags_cjk_ideographic_commas.txt"), GUARDS["tags"], prompt=prompt)
    positive = positive_prompt(", ".join(reading.items), prompt)
    assert positive == "雪の中の赤いキツネ, 夕暮れの光, 松の森, 高精細, high detailed, sharp focus, 8k, UHD"


def test_the_users_own_long_prompt_is_never_dropped_as_prose() -> None:
    prompt = "an old lighthouse on a cliff above a stormy sea with gulls circling in the dark evening sky"
    reading = read_tags(f"{prompt}, dramatic clouds", GUARDS["tags"], prompt=prompt)
    assert list(reading.items) == [prompt, "dramatic clouds"]
    assert is_prose(prompt)  # it would be, from anyone else


def test_words_of_the_prompt_or_seed_tags_are_not_an_echo() -> None:
    # The user's prompt shares four words with the instructions: theirs, not an echo.
    prompt = "composition lighting colour and detail study of a pear"
    guard = EchoGuard(DEFAULT_INSTRUCTIONS.fixed_wording(["tags_system", "tags_user"]), [prompt, SEEDS])
    reading = read_tags(f"{prompt}, pear, still life", guard, prompt=prompt)
    assert reading.usable
    # The quality floor is in the instructions too; asked for, it is an answer, not an echo.
    reading = read_tags("cat, high detailed, sharp focus, 8k, UHD", GUARDS["tags"], prompt=PROMPT)
    assert reading.usable and len(reading.items) == 5


REFUSED_COMPONENTS = [
    ("components_placeholder_only.txt", "only the instruction's placeholder"),
    ("components_schema_object.txt", 'no JSON object with a "components" list'),
    ("components_python_code.txt", 'no JSON object with a "components" list'),
    ("components_echo.txt", "repeats our instructions"),
]


@pytest.mark.parametrize(("fixture", "why"), REFUSED_COMPONENTS)
def test_component_answers_that_are_refused(fixture, why) -> None:
    reading = read_components(answer(fixture), GUARDS["components"])
    assert not reading.usable
    assert why in reading.problem


PARSED_COMPONENTS = [
    (
        "components_placeholder_mixed.txt",
        ["a red fox", "a pine tree"],
        ["1 placeholder dropped", "2 components (asked for 3 to 6)"],
    ),
    ("components_python_then_json.txt", ["a red fox", "falling snow", "a pine tree"], []),
    ("components_objects.txt", ["a red fox sitting in snow", "moon: full and low above the trees", "pine trees"], []),
    ("components_prose_wrapped.txt", ["a red fox", "snow on the ground", "a pine tree"], []),
]


@pytest.mark.parametrize(("fixture", "components", "notes"), PARSED_COMPONENTS)
def test_component_answers_read_as_a_person_would(fixture, components, notes) -> None:
    reading = read_components(answer(fixture), GUARDS["components"])
    assert reading.usable, reading.problem
    assert list(reading.items) == components
    assert list(reading.notes) == notes


def test_more_than_six_components_are_cut_and_noted() -> None:
    text = '{"components": [%s]}' % ", ".join(f'"thing {i}"' for i in range(8))
    reading = read_components(text)
    assert len(reading.items) == 6 and reading.notes == ("8 components, cut to 6",)


REFUSED_CRITIQUES = [
    ("critique_agg_echo.txt", "critic_agg", True, "its <refined> repeats our instructions"),
    ("critique_placeholder.txt", "critic", False, "hold only placeholders"),
    ("critique_placeholder.txt", "critic_agg", True, "no usable <refined>"),
    ("critique_user_echo.txt", "critic", False, "repeats our instructions"),
]


@pytest.mark.parametrize(("fixture", "guard", "need_refined", "why"), REFUSED_CRITIQUES)
def test_critiques_that_are_refused(fixture, guard, need_refined, why) -> None:
    reading = read_critique(answer(fixture), GUARDS[guard], need_refined=need_refined)
    assert not reading.usable
    assert why in reading.problem


def test_a_critique_with_markdown_labels_and_placeholders() -> None:
    reading = read_critique(answer("critique_markdown_label.txt"), GUARDS["critic"])
    assert reading.usable
    assert list(reading.items) == ["the fox has five legs"]
    assert reading.refined == "a red fox with four legs in snow"
    assert reading.notes == ("1 issue line dropped (placeholder or echo)",)


def test_a_refined_prompt_that_repeats_the_image_prompt_is_not_an_echo() -> None:
    # The critic's user turn holds the image prompt: repeating it is the job, not an echo.
    prompt = "the attached image was generated from a red fox in snow"
    guard = EchoGuard(DEFAULT_INSTRUCTIONS.fixed_wording(["critic_system", "critic_user"]), [prompt])
    reading = read_critique(f"<issues></issues><refined>{prompt}</refined>", guard)
    assert reading.usable and reading.refined == prompt


@pytest.mark.parametrize("text", ["...", "…", "string", " `...` ", "", "<tag>", "—"])
def test_placeholders(text) -> None:
    assert is_placeholder(text)


@pytest.mark.parametrize("text", ["8k", "a cat", "UHD", "猫"])
def test_not_placeholders(text) -> None:
    assert not is_placeholder(text)


def test_word_count_and_prose() -> None:
    assert word_count("a red fox") == 3
    assert word_count("雪の中の赤いキツネ") == 5  # nine characters, about two a word
    assert not is_prose("a red fox in snow at dusk")
    assert is_prose("The fox sits. It is red")
    assert is_prose("one two three four five six seven eight nine ten eleven twelve thirteen")
    assert is_prose("キツネが雪の中に座っている。とても静かだ")
