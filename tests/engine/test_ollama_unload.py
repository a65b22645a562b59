"""Sharing one GPU with Ollama: ``providers.ollama.unload_before_diffusion`` asks the server to
unload what it holds before each diffusion (``/api/ps``, then a generate with
``keep_alive: 0``), says so in the log, and with ``true`` keeps the stages that call Ollama
apart from the stages that draw. Against the loopback server, which holds in "memory" what a
chat loaded."""

from __future__ import annotations

import time

from critifusion_tui.config import Settings
from critifusion_tui.engine.events import DiffusionStep, Notice, StageFinished, StageStarted
from critifusion_tui.engine.pipeline import Session
from critifusion_tui.engine.stages import TABLE
from critifusion_tui.providers.ollama import is_local_host
from tests.engine.test_pipeline import PROMPT, offline_settings

LLM_TEXT = 'red fox, snowy forest, soft light {"components": ["a red fox", "a snowy forest"]}'
VLM_TEXT = "<issues>- the fox is small</issues><refined>a large red fox in a snowy forest</refined>"


def with_ollama(tmp_path, engine, settings: Settings, unload) -> Settings:
    data = offline_settings(tmp_path, str(engine.model)).model_dump()
    data["providers"] = settings.providers.model_dump()
    data["providers"]["ollama"].update(timeout_s=30.0, unload_before_diffusion=unload)
    data["criticore"] = {"candidates": ["ollama:llm"], "aggregator": "rules", "vlms": ["ollama:llava"]}
    return Settings.model_validate(data)


def script(server) -> None:
    server.script("llm", text=LLM_TEXT, delay=0.2)
    server.script("llava", text=VLM_TEXT, delay=0.2)


class Stamped(list):
    def __call__(self, event) -> None:
        self.append((time.perf_counter(), event))

    def first(self, kind, stage: str) -> float:
        return next(t for t, e in self if isinstance(e, kind) and e.stage == stage)


async def test_true_unloads_what_ollama_holds_before_each_diffusion_and_says_so(tmp_path, engine, server, settings):
    script(server)
    session = Session(with_ollama(tmp_path, engine, settings, True), diffusion=engine)
    events = Stamped()
    run = session.new_run(PROMPT, variants="all", emit=events)
    manifest = await run.run_all()
    assert manifest["status"] == "done"

    unloads = [r for r in server.requests_to("/api/generate") if r.body.get("keep_alive") == 0]
    listed = server.requests_to("/api/ps")
    # Before the full method's base: the text model the tags and components loaded.
    before_base = [r.body["model"] for r in unloads if r.at < events.first(DiffusionStep, "base")]
    assert "llm" in before_base
    assert listed[0].at < events.first(DiffusionStep, "base_original")
    # Before the refinement: the vision model the critique loaded since.
    between = [
        r.body["model"]
        for r in unloads
        if events.first(StageFinished, "critique") < r.at < events.first(DiffusionStep, "refine")
    ]
    assert between == ["llava"]
    assert server.loaded == []  # nothing left in "memory" after the last diffusion
    said = [e for _, e in events if isinstance(e, Notice) and "to unload" in e.message]
    assert said and all("unload_before_diffusion = true" in e.message for e in said)
    # The first stage to draw (the comparison base, once the text stages let go) unloaded llm.
    assert said[0].stage in ("base", "base_original") and "llm" in said[0].message

    # A stage that calls Ollama never ran beside one that draws.
    spans = {}
    for t, e in events:
        if isinstance(e, StageStarted):
            spans[e.stage] = [t, None]
        elif isinstance(e, StageFinished):
            spans[e.stage][1] = t
    drawing = [span for stage, span in spans.items() if TABLE[stage].draws]
    calling = [span for stage, span in spans.items() if run.calls_ollama(stage)]
    assert calling and drawing
    for start, end in calling:
        assert all(end <= d_start or d_end <= start for d_start, d_end in drawing)
    await session.aclose()


async def test_auto_on_the_cpu_and_false_send_nothing(tmp_path, engine, server, settings):
    for unload in ("auto", False):
        script(server)
        session = Session(with_ollama(tmp_path, engine, settings, unload), diffusion=engine)
        events = Stamped()
        await session.new_run(PROMPT, emit=events).run_all()
        assert not server.requests_to("/api/ps") and not server.requests_to("/api/generate")
        assert not [e for _, e in events if isinstance(e, Notice) and "unload" in e.message]
        await session.aclose()


async def test_a_refused_unload_is_a_warning_and_the_run_goes_on(tmp_path, engine, server, settings):
    script(server)
    data = with_ollama(tmp_path, engine, settings, True).model_dump()
    data["criticore"]["candidates"] = ["rules"]  # the text stages need no server
    session = Session(Settings.model_validate(data), diffusion=engine)
    server.stop()  # the critique's call fails too, and is reported as a failed critic
    events = Stamped()
    manifest = await session.new_run(PROMPT, emit=events).run_all()
    assert manifest["status"] == "done"
    warned = [e for _, e in events if isinstance(e, Notice) and e.level == "warning" and "unload" in e.message]
    assert warned and "cannot reach Ollama" in warned[0].message
    await session.aclose()


def test_which_hosts_are_this_machine():
    assert all(is_local_host(h) for h in ("http://127.0.0.1:11434", "localhost:11434", "http://[::1]:11434", "0.0.0.0"))
    assert not any(is_local_host(h) for h in ("http://gpu-box:11434", "https://ollama.example.com"))
