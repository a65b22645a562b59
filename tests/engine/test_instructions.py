"""Editable instructions: the config's templates reach the wire, the prose style is read as
sentences, and each stage records a fingerprint of the templates it sent (and their text when
changed). Driven through the real Together client on the loopback server."""

from __future__ import annotations

import pytest

from critifusion_tui.config import InstructionsConfig
from critifusion_tui.engine.answers import read_prose
from critifusion_tui.engine.criticore import CritiCore
from critifusion_tui.instructions import DEFAULTS, PRESETS, Instructions, digest
from critifusion_tui.engine.prompts import QUALITY_FLOOR, prose_prompt
from critifusion_tui.engine.tokens import count_tokens
from critifusion_tui.providers.router import ProviderRouter

PROMPT = "a red fox in snow"


@pytest.fixture
async def router(settings):
    router = ProviderRouter(settings)
    yield router
    await router.aclose()


def core_for(router, settings, **instructions) -> CritiCore:
    settings.criticore.candidates = ["together:a", "together:b"]
    settings.criticore.aggregator = ["together:agg"]
    settings.criticore.vlms = ["together:critic"]
    settings.criticore.instructions = InstructionsConfig(**instructions)
    return CritiCore.from_settings(router, settings)


def sent(server, model: str) -> list[dict]:
    return [r.body for r in server.requests_to("/v1/chat/completions") if r.body["model"] == model]


async def test_an_overridden_template_is_sent_and_recorded_with_its_text(server, router, settings):
    core = core_for(router, settings, tags_user="Make SDXL tags for: {prompt} (start from {seed_tags})")
    server.script("a", text="red fox, deep snow, golden hour, 8k")
    server.script("b", text="fox, winter forest, soft light")
    server.script("agg", text="red fox, deep snow, winter forest, golden hour")

    result = await core.tags(PROMPT)

    (body,) = sent(server, "a")
    assert body["messages"][1]["content"].startswith(f"Make SDXL tags for: {PROMPT} (start from balanced")
    record = result.record()["instructions"]
    assert list(record) == ["tags_system", "tags_user", "tags_agg_system", "tags_agg_user"]
    assert record["tags_user"]["text"] == "Make SDXL tags for: {prompt} (start from {seed_tags})"
    assert record["tags_user"]["sha256"] == digest(record["tags_user"]["text"])
    # Unchanged templates: a fingerprint only (equal to the default's).
    assert record["tags_system"] == {"sha256": digest(DEFAULTS["tags_system"].text)}


async def test_prose_style_asks_for_sentences_and_reads_them_as_the_answer(server, router, settings):
    core = core_for(router, settings, style="prose")
    server.script("a", text="Prompt: **A red fox** stands in deep snow. Warm low sun lights its fur.")
    server.script("b", text="A fox in a snowy pine forest at golden hour, seen from the side.")
    server.script("agg", text="A red fox stands in deep snow in a pine forest. Low golden sun lights its fur.")

    result = await core.tags(PROMPT)

    (body,) = sent(server, "a")
    assert body["messages"][0]["content"] == PRESETS["prose"]["tags_system"]
    assert all(a.ok and not a.notes for a in result.candidates)  # sentences are not flagged here
    assert result.style == "prose" and result.source == "aggregator"
    assert result.positive == (
        f"{PROMPT}. A red fox stands in deep snow in a pine forest. Low golden sun lights its fur, "
        + ", ".join(QUALITY_FLOOR)
    )
    # The prose preset's wording differs from the tag defaults: its text is in the record.
    assert result.record()["instructions"]["tags_system"]["text"] == PRESETS["prose"]["tags_system"]
    # The same sentences in the tag style are prose, not tags: unusable there.
    tags_core = core_for(router, settings)
    server.script("a", text="A red fox stands in deep snow. Warm low sun lights its fur, and the pines stand dark.")
    tags_result = await tags_core.tags(PROMPT, only=["together:a"], previous=result)
    assert "prose" in (tags_result.candidates[0].error or "")


async def test_prose_style_refuses_an_echo_of_its_own_instructions(server, router, settings):
    core = core_for(router, settings, style="prose")
    server.script("a", text="Idea: a red fox in snow\nReply: one short descriptive prompt in plain sentences.")
    server.script("b", text="You write prompts for an image generator that reads plain sentences.")
    result = await core.tags(PROMPT)
    assert all(a.error_code == "unusable_answer" for a in result.candidates)
    assert all("repeats our instructions" in a.error for a in result.candidates)
    assert result.source == "fallback" and sent(server, "agg") == []


def test_prose_prompt_keeps_the_users_prompt_and_the_floor_when_cut():
    long = " ".join(f"Sentence {i} adds a great many descriptive words about the scene." for i in range(12))
    out = prose_prompt(long, PROMPT)
    assert out.startswith(f"{PROMPT}. Sentence 0")
    assert out.endswith(", ".join(QUALITY_FLOOR)) and count_tokens(out) <= 77
    assert "Sentence 11" not in out  # whole sentences went from the end


def test_prose_reading_notes_a_long_answer_and_drops_placeholders():
    reading = read_prose("...\n" + "A fox in the snow under a pale sky. " * 8)
    assert reading.usable and "1 placeholder dropped" in reading.notes
    assert any("words (asked for at most 60)" in n for n in reading.notes)


def test_instructions_from_config_read_files_relative_to_base(tmp_path):
    (tmp_path / "critic.md").write_text("Judge the picture of {prompt} against {components}.\n")
    section = InstructionsConfig(critic_user="critic.md")
    instructions = Instructions.from_config(section, base=tmp_path)
    assert instructions.text("critic_user") == "Judge the picture of {prompt} against {components}."
    assert instructions.overridden() == ["critic_user"]
    assert instructions.describe() == "style tags; overridden: critic_user"
