"""The per-process cap on concurrent requests per backend, and the count of 429s."""

from __future__ import annotations

import asyncio

import pytest

from critifusion_tui.config import load_config
from critifusion_tui.engine.offline import with_rules
from critifusion_tui.providers.base import ChatResult, ModelRef, RateLimitedError, user
from critifusion_tui.providers.router import ProviderRouter


class SlowModel:
    def __init__(self, ref, fail=False):
        self.ref, self.fail, self.active, self.peak = ref, fail, 0, 0

    async def chat(self, messages, *, temperature, max_tokens, image=None, on_delta=None, schema=None):
        self.schema = schema
        self.active += 1
        self.peak = max(self.peak, self.active)
        await asyncio.sleep(0.02)
        self.active -= 1
        if self.fail:
            raise RateLimitedError(self.ref, "Together is rate-limiting requests (HTTP 429)", status=429)
        return ChatResult("ok", self.ref, 0.02)


async def test_calls_over_the_cap_wait_their_turn_and_429s_are_counted(tmp_path):
    settings = load_config(None, ["providers.together.max_concurrency=2"]).settings
    router = ProviderRouter(settings)
    inner = SlowModel(ModelRef("together", "m"))
    limited = router.limits.wrap(inner, "together")
    assert limited.ref == inner.ref
    await asyncio.gather(*(limited.chat([user("x")], temperature=0, max_tokens=1) for _ in range(7)))
    assert inner.peak == 2

    throttled = router.limits.wrap(SlowModel(ModelRef("together", "t"), fail=True), "together")
    with pytest.raises(RateLimitedError):
        await throttled.chat([user("x")], temperature=0, max_tokens=1)
    usage = router.limits.snapshot()["together"]
    assert usage["requests"] == 8 and usage["throttled"] == 1 and usage["queued_s"] > 0


def test_the_router_hands_out_limited_hosted_models_and_bare_rules():
    router = with_rules(ProviderRouter(load_config(None, []).settings))  # as the engine's Session makes it
    assert router.limits.caps == {"together": 16, "ollama": 4}
    assert type(router.model("ollama:llava")).__name__ == "LimitedChat"
    assert type(router.model("rules")).__name__ == "RulesModel"


async def test_the_wrapper_passes_every_chat_argument_through():
    # The constrained-output schema (components, critique) must reach the backend.
    settings = load_config(None, []).settings
    inner = SlowModel(ModelRef("together", "m"))
    limited = ProviderRouter(settings).limits.wrap(inner, "together")
    await limited.chat([user("x")], temperature=0, max_tokens=1, schema={"type": "object"})
    assert inner.schema == {"type": "object"}
