"""The router: references to models, one client per backend, closing."""

from __future__ import annotations

import asyncio

import pytest

from critifusion_tui.config import Settings
from critifusion_tui.providers.base import ChatModel, ModelRef, ModelRefError, user
from critifusion_tui.providers.router import ProviderRouter
from critifusion_tui.providers.rules import RulesModel


async def test_one_client_per_provider_is_reused(server, settings) -> None:
    router = ProviderRouter(settings)
    calls = [
        router.model("together:a").chat([user("1")], temperature=0.2, max_tokens=5),
        router.model("together:b").chat([user("2")], temperature=0.2, max_tokens=5),
        router.model(ModelRef("together", "a")).chat([user("3")], temperature=0.2, max_tokens=5),
        router.model("ollama:c").chat([user("4")], temperature=0.2, max_tokens=5),
        router.model("ollama:d").chat([user("5")], temperature=0.2, max_tokens=5),
    ]
    results = await asyncio.gather(*calls)
    assert [r.text for r in results] == [f"reply from {m}" for m in "abacd"]

    together_client = router.together.client()
    ollama_client = router.ollama.client()
    await router.model("together:c").chat([user("6")], temperature=0.2, max_tokens=5)
    assert router.together.client() is together_client
    assert router.ollama.client() is ollama_client
    assert router.model("together:a") is router.model(ModelRef.parse("together:a"))

    await router.aclose()
    assert together_client.is_closed()
    assert ollama_client._client.is_closed  # the ollama client's httpx client


async def test_clients_are_made_only_when_first_needed(settings, monkeypatch) -> None:
    # With no Together key at all, an Ollama-only run must still work: nothing asks for it.
    monkeypatch.delenv(settings.providers.together.api_key_env)
    async with ProviderRouter(settings) as router:
        result = await router.model("ollama:llava").chat([user("hi")], temperature=0.2, max_tokens=5)
        assert result.text == "reply from llava"
        assert router._together is None


def test_models_satisfy_the_protocol(settings) -> None:
    router = ProviderRouter(settings)
    for ref in ("together:x", "ollama:y", "openai:z", "rules"):
        assert isinstance(router.model(ref), ChatModel)
    assert isinstance(router.model("rules"), RulesModel)
    assert router["ollama:y"] is router.model("ollama:y")


def test_bad_reference_is_refused(settings) -> None:
    with pytest.raises(ModelRefError):
        ProviderRouter(settings).model("anthropic:claude")


def test_every_configured_role_resolves() -> None:
    router = ProviderRouter(Settings())
    for refs in Settings().criticore.refs().values():
        for ref in refs:
            assert router.model(ref).ref == ref
