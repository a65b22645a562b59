"""The answer cache and replay at the CritiCore level, with the real client on the loopback server."""

from __future__ import annotations

import pytest

from critifusion_tui.engine.answer_cache import AnswerCache
from critifusion_tui.engine.criticore import CritiCore
from critifusion_tui.engine.events import CandidateFinished
from critifusion_tui.engine.manifest import RunManifest
from critifusion_tui.engine.replay import Replay
from critifusion_tui.providers.router import ProviderRouter

PROMPT = "a red fox in snow"
CHAT = "/v1/chat/completions"


@pytest.fixture
async def router(settings):
    router = ProviderRouter(settings)
    yield router
    await router.aclose()


async def test_a_cached_answer_saves_the_request_and_a_retry_asks_again(server, router, tmp_path):
    events: list = []
    core = CritiCore(router, candidates=["together:a"], aggregator=["rules"], vlms=["rules"], emit=events.append)
    core.cache = AnswerCache(tmp_path)
    server.script("a", text="red fox, deep snow, 8k", times=1)
    server.script("a", text="fox, winter, blue hour")
    first = await core.tags(PROMPT)
    second = await core.tags(PROMPT)
    assert len(server.requests_to(CHAT)) == 1
    assert second.candidates[0].text == first.candidates[0].text == "red fox, deep snow, 8k"
    assert second.candidates[0].origin == "cache" and second.candidates[0].record()["from"] == "cache"
    assert [e.origin for e in events if isinstance(e, CandidateFinished)] == ["provider", "cache"]
    assert core.ledger[1]["source"] == "cache" and core.ledger[1]["tokens_in"] == 0
    # Retried on purpose (the pane's r): asked again, and the new answer is kept.
    retried = await core.tags(PROMPT, only=["together:a"], previous=second)
    assert len(server.requests_to(CHAT)) == 2 and retried.candidates[0].text == "fox, winter, blue hour"
    assert (await core.tags(PROMPT)).candidates[0].text == "fox, winter, blue hour"
    # Changed parameters are another call: a different key.
    other = await core.components(PROMPT)
    assert other.candidates[0].origin == "provider"


async def test_a_replay_answers_from_the_record_and_replays_failures(server, router):
    manifest = {
        "schema": "critifusion.run/1",
        "prompt": PROMPT,
        "seed": 3,
        "stages": {
            "tags": {
                "status": "done",
                "candidates": [
                    {"model": "together:a", "text": "red fox, deep snow, 8k", "error": None},
                    {"model": "together:b", "text": "", "error": "together:b: cannot reach Together at x"},
                ],
                "aggregator": [],
            }
        },
        "config": {"providers": {"together": {"base_url": "http://203.0.113.9", "api_key_env": "STOLEN"}}},
    }
    replay = Replay(RunManifest.model_validate(manifest))
    assert replay.roles == {"candidates": ["together:a", "together:b"], "aggregator": [], "vlms": []}
    core = CritiCore(router, candidates=["together:a", "together:b"], aggregator=["together:agg"], vlms=["rules"])
    core.replay = replay
    result = await core.tags(PROMPT)
    assert server.requests == []  # no provider was asked
    a, b = result.candidates
    assert a.ok and a.text == "red fox, deep snow, 8k" and a.origin == "replay"
    assert b.error == "together:b: failed in the recorded run: cannot reach Together at x"
    assert result.source == "candidates"  # one usable answer: nothing to merge, as recorded
