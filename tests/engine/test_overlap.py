"""The run's overlap (engine/schedule.py, Session.preload): the model loads while the text
stages wait on a slow provider, the comparison branch draws and is criticised beside the
full method, one stage draws at a time, and a failed load is still the base stage's failure.

The provider is the loopback server with a latency per request; the events are stamped as
they arrive, the server stamps each request on the same clock (``time.perf_counter``)."""

from __future__ import annotations

import asyncio
import time

import pytest

from critifusion_tui.config import Settings
from critifusion_tui.engine.diffusion import Diffusion
from critifusion_tui.engine.events import DiffusionStep, ModelLoaded, ModelLoading, StageFinished, StageStarted
from critifusion_tui.engine.pipeline import RunFailed, Session
from critifusion_tui.engine.schedule import Schedule
from critifusion_tui.engine.stages import REFINE_GATE, TABLE, TAGS_GATE, Stage, gate_inputs, gates_holding
from tests.engine.test_pipeline import PROMPT, offline_settings

LATENCY = 3.0  # seconds per request: far longer than loading the tiny model from its folder


def hosted(tmp_path, model: str, settings: Settings, **diffusion) -> Settings:
    """Two candidates and an aggregator (two round trips for the tags), one critic."""
    data = offline_settings(tmp_path, model, diffusion=diffusion).model_dump()
    data["providers"] = settings.providers.model_dump()
    data["providers"]["together"]["timeout_s"] = 6 * LATENCY  # the fixture's 2 s is shorter than one answer
    data["criticore"] = {
        "candidates": ["together:a", "together:b"],
        "aggregator": ["together:agg"],
        "vlms": ["together:critic"],
    }
    return Settings.model_validate(data)


def slow_server(server) -> None:
    for model in ("a", "b"):
        server.script(model, text="red fox, snowy forest, soft light", delay=LATENCY)
    server.script("agg", text="red fox, snowy forest, soft light, detailed fur", delay=LATENCY)
    server.script("critic", text="<issues>- the fox is small</issues><refined>a large red fox</refined>", delay=LATENCY)


class Stamped(list):
    """The events of a run, each with the time it arrived."""

    def __call__(self, event) -> None:
        self.append((time.perf_counter(), event))

    def at(self, kind, stage: str) -> float:
        return next(t for t, e in self if isinstance(e, kind) and e.stage == stage)

    def of(self, kind) -> list:
        return [e for _, e in self if isinstance(e, kind)]


async def test_the_model_loads_while_the_text_stages_wait_on_the_provider(tmp_path, tiny_sdxl_dir, server, settings):
    slow_server(server)
    fresh = Diffusion(str(tiny_sdxl_dir), device="cpu")  # not loaded: this run's first advance loads it
    session = Session(hosted(tmp_path, str(tiny_sdxl_dir), settings), diffusion=fresh)
    events = Stamped()
    run = session.new_run(PROMPT, emit=events)
    started = time.perf_counter()
    await run.advance()  # the text stages: two round trips of LATENCY
    text_end = time.perf_counter()
    assert text_end - started >= 2 * LATENCY
    # The load ran beside them and is over: the base stage has nothing to wait for.
    assert fresh.loaded and session.load_state(fresh) == "ready"
    await run.advance()
    assert not events.of(ModelLoading)
    assert [e.stage for e in events.of(ModelLoaded)] == ["base"]
    assert run.store.manifest["diffusion"]["pipeline"] == "StableDiffusionXLPipeline"
    await session.aclose()


async def test_variants_all_draws_and_criticises_the_comparison_beside_the_method(
    tmp_path, tiny_sdxl_dir, server, settings
):
    slow_server(server)
    fresh = Diffusion(str(tiny_sdxl_dir), device="cpu")
    session = Session(hosted(tmp_path, str(tiny_sdxl_dir), settings, steps=8), diffusion=fresh)
    events = Stamped()
    run = session.new_run(PROMPT, variants="all", emit=events)
    manifest = await run.run_all()
    assert manifest["status"] == "done"
    assert list(manifest["stages"]) == [
        "tags",
        "components",
        "base",
        "critique",
        "refine",
        "base_original",
        "critique_original",
        "refine_original",
    ]
    text_end = max(events.at(StageFinished, "tags"), events.at(StageFinished, "components"))
    # The comparison base needs only the user's prompt: it draws while the providers answer.
    assert events.at(DiffusionStep, "base_original") < text_end
    # Its critique went out beside the full method's base, long before that base's critique.
    critics = [r for r in server.requests_to("/v1/chat/completions") if r.body["model"] == "critic"]
    assert len(critics) == 2
    assert critics[0].at < events.at(StageFinished, "base")
    assert events.at(StageStarted, "critique_original") < events.at(StageStarted, "critique")
    # One stage draws at a time: the steps of two drawing stages never interleave.
    drawing = [e.stage for e in events.of(DiffusionStep)]
    runs = [s for i, s in enumerate(drawing) if i == 0 or drawing[i - 1] != s]
    assert sorted(runs) == sorted(set(runs)), runs
    # Both critiques' calls are told apart (events, ledger, replay).
    assert {c["stage"] for c in manifest["ledger"]["calls"] if c["role"] == "vlm"} == {"critique", "critique_original"}
    await session.aclose()


async def test_a_failed_preload_fails_the_base_stage_with_its_message_even_with_variants_all(tmp_path):
    session = Session(offline_settings(tmp_path, str(tmp_path / "no-such-model")))
    events = Stamped()
    run = session.new_run(PROMPT, variants="all", emit=events)
    with pytest.raises(RunFailed) as caught:
        await run.run_all()
    assert caught.value.stage == "base" and "no-such-model" in caught.value.message
    stages = run.store.manifest["stages"]
    assert stages["base"]["status"] == "failed" and "base_original" not in stages
    # The failure was reported once: the next load tries again (and says the same).
    assert session.load_state(session.diffusion) == "idle"
    with pytest.raises(RunFailed, match="no-such-model"):
        await run.rerun("base")


async def test_a_gate_holds_what_reads_its_fields_and_nothing_else(tmp_path, engine):
    session = Session(offline_settings(tmp_path, str(engine.model)), diffusion=engine)
    order: list[str] = []
    run = session.new_run(PROMPT, variants="all", emit=lambda e: isinstance(e, StageStarted) and order.append(e.stage))

    async def person(name, fields):
        order.append(f"gate:{name}")
        if name == "tags":
            # Everything the tags gate holds waits for the answer; the comparison base does not.
            assert not run.done("base") and not run.done("critique_original")
            return {**fields, "components": ["a red fox", "a pine forest"]}
        return fields

    manifest = await run.run_all(person)
    assert order.index("gate:tags") < order.index("base") and order.index("gate:tags") < order.index(
        "critique_original"
    )
    assert order.index("gate:refine") < order.index("refine")
    # The edit at the gate reached the comparison's critique too.
    assert manifest["stages"]["critique_original"]["components"] == ["a red fox", "a pine forest"]


async def test_the_schedule_raises_the_first_failure_after_the_running_stages_end():
    ended: list[str] = []

    async def run(stage):
        if stage is Stage.TAGS:
            raise RunFailed("tags", "no")
        await asyncio.sleep(0.05)
        ended.append(stage)

    done: set[Stage] = set()
    schedule = Schedule(
        (Stage.TAGS, Stage.COMPONENTS, Stage.BASE_ORIGINAL, Stage.CRITIQUE_ORIGINAL), run=run, done=done.__contains__
    )
    with pytest.raises(RunFailed):
        await schedule.run()
    # Components and the comparison base were running and ended; nothing new started.
    assert sorted(ended) == ["base_original", "components"]


def test_the_graph_the_schedule_reads():
    assert [g.name for g in gates_holding("critique_original")] == ["tags"]  # it reads what the gate edits
    assert gates_holding("base_original") == () and gates_holding("refine_original") == ()
    assert [g.name for g in gates_holding("refine")] == ["refine"]
    assert gate_inputs(TAGS_GATE) == (Stage.TAGS, Stage.COMPONENTS) and gate_inputs(REFINE_GATE) == (Stage.CRITIQUE,)
    assert [g.name for g in gates_holding("rounds")] == ["tags", "refine"]
    assert [s for s in Stage if TABLE[s].draws] == [
        Stage.BASE,
        Stage.REFINE,
        Stage.ROUNDS,
        Stage.BASE_ORIGINAL,
        Stage.REFINE_ORIGINAL,
    ]


@pytest.mark.parametrize(
    ("load_s", "expected"),
    [
        (0.3, [Stage.TAGS, Stage.BASE, Stage.BASE_ORIGINAL]),  # the text ends first: the method draws first
        (0.0, [Stage.TAGS, Stage.BASE_ORIGINAL, Stage.BASE]),  # loaded first: the comparison draws meanwhile
    ],
)
async def test_while_the_model_loads_the_full_method_keeps_its_turn(load_s, expected):
    done: set[Stage] = set()
    order: list[Stage] = []
    loaded = asyncio.Event()

    class Model:
        def state(self) -> str:
            return "ready" if loaded.is_set() else "loading"

        async def wait(self) -> None:
            await loaded.wait()

    async def run(stage: Stage) -> None:
        order.append(stage)
        await asyncio.sleep(0.1 if stage is Stage.TAGS else 0.02)
        done.add(stage)

    async def load() -> None:
        await asyncio.sleep(load_s)
        loaded.set()

    loading = asyncio.create_task(load())
    await Schedule((Stage.TAGS, Stage.BASE, Stage.BASE_ORIGINAL), run=run, done=done.__contains__, model=Model()).run()
    await loading
    assert order == expected
