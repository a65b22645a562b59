"""The router: references to models, one client per backend, closing."""

from __future__ import annotations

import asyncio

import pytest

from critifusion_tui.config import Settings
from critifusion_tui.engine.offline import RulesModel, with_rules
from critifusion_tui.providers.base import ChatModel, ModelRef, ModelRefError, user
from critifusion_tui.providers.registry import HOSTED
from critifusion_tui.providers.router import ProviderRouter


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
        assert not router.made("together")


def test_models_satisfy_the_protocol(settings) -> None:
    router = with_rules(ProviderRouter(settings))  # as the engine's Session makes it
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


def test_every_hosted_backend_is_one_registry_entry(settings) -> None:
    # The registry's name is the reference's provider and the settings' section.
    router = ProviderRouter(settings)
    for name in HOSTED:
        model = router.model(f"{name}:m")
        assert isinstance(model, ChatModel) and model.ref == ModelRef(name, "m")
        assert router.backend(name).name == name
        assert router.backend(name).settings is getattr(settings.providers, name)
    assert not router.made("nothing")


def test_a_registered_factory_answers_its_provider(settings) -> None:
    router = ProviderRouter(settings)
    first, second = RulesModel(), RulesModel()
    router.register("rules", lambda ref: first)
    assert router.model("rules") is first
    router.register("rules", lambda ref: second)  # a new factory: the old model is forgotten
    assert router.model("rules") is second


async def test_one_failing_close_still_closes_the_others(settings) -> None:
    router = ProviderRouter(settings)
    together_client = router.together.client()
    router.openai.client()
    ollama_client = router.ollama.client()

    async def broken() -> None:
        raise RuntimeError("close failed")

    router.openai.aclose = broken  # the one in the middle, whichever way they are closed
    with pytest.raises(RuntimeError, match="close failed"):
        await router.aclose()
    assert together_client.is_closed()
    assert ollama_client._client.is_closed
