"""The ledger: every model call's tokens, seconds, retries and 429s, summed per model and role,
checked against the usage figures the loopback server reports through the real clients."""

from __future__ import annotations

import pytest

from critifusion_tui.config import OpenAIConfig
from critifusion_tui.engine.criticore import CritiCore
from critifusion_tui.engine.ledger import estimate_tokens, summarize, summary_lines
from critifusion_tui.providers.router import ProviderRouter
from tests.loopback import KEY_VALUE

PROMPT = "a red fox in snow"
TAGS = "red fox, deep snow, golden hour, pine forest, soft light, 8k"


@pytest.fixture
async def router(settings, server):
    settings.providers.openai = OpenAIConfig(base_url=server.openai_url, timeout_s=5.0, max_retries=0)
    settings.providers.together.max_retries = 2  # the client's own retries, on a 429
    router = ProviderRouter(settings)
    yield router
    await router.aclose()


def row(summary, model: str, role: str) -> dict:
    (found,) = [r for r in summary["models"] if r["model"] == model and r["role"] == role]
    return found


async def test_ledger_sums_the_servers_usage_per_model_and_role(server, router):
    server.script("t", text=TAGS, usage=(101, 17), times=1)
    # Its second answer differs, so the aggregator is asked again (an unchanged one is not).
    server.script("t", text=TAGS + ", moonlight", usage=(101, 17))
    server.script("o", text=TAGS, usage=(202, 23))
    server.script("oa", text=TAGS, usage=(303, 29))
    server.script("agg", text=TAGS, usage=(404, 31))
    # One 429 first: the client waits the asked 0.05 s and retries; the call succeeds.
    server.script("slow", status=429, retry_after=0.05, times=1)
    server.script("slow", text=TAGS, usage=(55, 5))
    core = CritiCore(
        router,
        candidates=["together:t", "ollama:o", "openai:oa", "together:slow"],
        aggregator=["together:agg"],
        vlms=["rules"],
    )
    first = await core.tags(PROMPT)
    await core.tags(PROMPT, only=["together:t"], previous=first)  # t asked again: both calls count

    summary = summarize(core.ledger)
    t = row(summary, "together:t", "candidate")
    assert (t["calls"], t["tokens_in"], t["tokens_out"], t["retries"], t["throttled"]) == (2, 2 * 101, 2 * 17, 0, 0)
    assert t["counted"] is False and t["free"] == 0
    o = row(summary, "ollama:o", "candidate")
    assert (o["calls"], o["tokens_in"], o["tokens_out"]) == (1, 202, 23)
    oa = row(summary, "openai:oa", "candidate")  # streamed: usage from the include_usage chunk
    assert (oa["calls"], oa["tokens_in"], oa["tokens_out"]) == (1, 303, 29)
    slow = row(summary, "together:slow", "candidate")
    assert (slow["calls"], slow["retries"], slow["throttled"], slow["errors"]) == (1, 1, 1, 0)
    assert (slow["tokens_in"], slow["tokens_out"]) == (55, 5)
    agg = row(summary, "together:agg", "aggregator")
    assert (agg["calls"], agg["tokens_in"], agg["tokens_out"]) == (2, 2 * 404, 2 * 31)
    # The total is the sum of the rows, and every call is one entry with no text or key in it.
    assert summary["total"]["tokens_in"] == sum(r["tokens_in"] for r in summary["models"])
    sent = sum(len(server.requests_to(p)) for p in ("/v1/chat/completions", "/api/chat", "/openai/v1/chat/completions"))
    assert summary["total"]["calls"] == len(core.ledger) == sent - 1  # the 429 was a retry, not a call
    assert all(
        set(e) >= {"stage", "role", "model", "tokens_in", "tokens_out", "seconds", "retries"} for e in core.ledger
    )
    assert KEY_VALUE not in repr(core.ledger) and TAGS not in repr(core.ledger)
    assert any("1 retried, 1 throttled (429)" in line for line in summary_lines(summary))


async def test_a_server_without_usage_is_counted_and_marked(server, router):
    server.script("quiet", text=TAGS, usage=False)
    core = CritiCore(router, candidates=["openai:quiet"], aggregator=["rules"], vlms=["rules"])
    await core.tags(PROMPT)
    (entry,) = core.ledger
    assert entry["usage"] == "counted"
    assert entry["tokens_out"] == estimate_tokens([TAGS]) > 0
    assert entry["tokens_in"] > 50  # the system and user turns, counted
    assert "tokens partly counted here" in summary_lines(summarize(core.ledger))[0]


async def test_a_call_that_stays_throttled_is_an_error_with_its_attempts(server, router):
    server.script("busy", status=429, retry_after=0.01)
    core = CritiCore(router, candidates=["together:busy"], aggregator=["rules"], vlms=["rules"])
    result = await core.tags(PROMPT)
    assert result.candidates[0].error_code == "rate_limited"
    (entry,) = core.ledger
    assert (entry["attempts"], entry["retries"], entry["throttled"], entry["error"]) == (3, 2, 3, "rate_limited")
    assert entry["tokens_out"] == 0


async def test_openai_stream_usage_is_asked_and_a_refusal_is_remembered(server, router):
    server.refuse_stream_options = True
    server.script("old", text=TAGS, usage=(40, 9))
    core = CritiCore(router, candidates=["openai:old"], aggregator=["rules"], vlms=["rules"])
    result = await core.tags(PROMPT)
    assert result.candidates[0].ok
    first, second = server.requests_to("/openai/v1/chat/completions")
    assert first.body["stream_options"] == {"include_usage": True} and "stream_options" not in second.body
    assert core.ledger[0]["usage"] == "counted" and core.ledger[0]["retries"] == 0  # no usage without the option
    await core.tags(PROMPT)
    assert len(server.requests_to("/openai/v1/chat/completions")) == 3  # not asked with the option again
