"""The offline rules model."""

from __future__ import annotations

import pytest

from critifusion_tui.engine.prompts import fallback_tags
from critifusion_tui.providers.base import ProviderError, user
from critifusion_tui.providers.rules import RulesModel, rules_components, rules_critique


def test_tags_are_the_spec_fallback() -> None:
    prompt = "a photo of a lighthouse at dusk"
    tags = RulesModel().tags(prompt)
    assert tags == fallback_tags(prompt, "hq_preference")
    assert tags.startswith("a photo of a lighthouse at dusk, ")
    assert "photorealistic" in tags  # a style hint from the prompt's "photo"


@pytest.mark.parametrize(
    ("prompt", "components"),
    [
        ("a cat", ["a cat"]),
        (
            "a red fox with a bushy tail and green eyes, sitting in snow; dusk",
            ["a red fox", "a bushy tail", "green eyes", "sitting in snow", "dusk"],
        ),
        ("A cat, a cat. A CAT", ["A cat"]),
        ("withered sandy Andes", ["withered sandy Andes"]),
        ("a, b, c, d, e, f, g, h", ["a", "b", "c", "d", "e", "f, g, h"]),
        ("  ,, ; ", []),
    ],
)
def test_components_are_the_prompts_clauses(prompt: str, components: list[str]) -> None:
    assert rules_components(prompt) == components
    assert RulesModel().components(prompt) == components


def test_critique_sees_nothing_and_changes_nothing() -> None:
    critique = rules_critique("a  red fox\nin snow", ["a red fox"])
    assert critique.refined == "a red fox in snow"
    assert critique.issues == []
    assert "no vision model" in critique.note


async def test_chat_is_refused_with_a_clear_error() -> None:
    with pytest.raises(ProviderError, match="does not chat") as caught:
        await RulesModel().chat([user("hi")], temperature=0.2, max_tokens=5)
    assert caught.value.ref == "rules"
