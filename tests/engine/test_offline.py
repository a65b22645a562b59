"""The offline rules answerer (engine/offline.py), and the router handing it out."""

from __future__ import annotations

import pytest

from critifusion_tui.engine.prompts import fallback_tags
from critifusion_tui.providers.base import ModelRef, ProviderError, user
from critifusion_tui.engine.offline import RulesModel, rules_components, rules_critique


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


def test_the_sessions_router_hands_out_rules_and_a_bare_router_does_not() -> None:
    # The providers know nothing of the engine: `rules` comes from the engine's registration.
    from critifusion_tui.config import Settings
    from critifusion_tui.engine.offline import with_rules
    from critifusion_tui.engine.pipeline import Session
    from critifusion_tui.providers.router import ProviderRouter

    settings = Settings()
    model = Session(settings).router.model("rules")
    assert isinstance(model, RulesModel) and model.ref == ModelRef("rules")
    router = with_rules(ProviderRouter(settings))
    assert router.model("rules") is router.model("rules")
    with pytest.raises(ValueError, match="nothing is registered to answer rules"):
        ProviderRouter(settings).model("rules")
