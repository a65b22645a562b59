"""The run pipeline end to end on CPU: stages in order, gates, the run folder, determinism,
cancellation, re-runs, variants, and the secrets rule."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from PIL import Image

from critifusion_tui.config import Settings
from critifusion_tui.engine.events import (
    DiffusionStep,
    GateOpened,
    ImageReady,
    StageFinished,
    StageSkipped,
    StageStarted,
)
from critifusion_tui.engine.pipeline import RunFailed, Session
from critifusion_tui.engine.prompts import merge_critique_with_tags
from critifusion_tui.engine.specfusion import cadr_from_alignment
from tests.loopback import KEY_VALUE, KEY_VAR

PROMPT = "a red fox in a forest"


def offline_settings(tmp_path: Path, model: str, **sections) -> Settings:
    """Every role on the offline rules, a tiny model, a few steps at 64 px."""
    data = {
        "criticore": {"candidates": ["rules"], "aggregator": "rules", "vlms": ["rules"]},
        "diffusion": {"model": model, "device": "cpu", "width": 64, "height": 64, "steps": 4},
        # 4 steps x (3 / 4) = 3 img2img steps: enough to change the latent.
        "specfusion": {"total_steps": 4, "last_k": 3},
        "output": {"dir": str(tmp_path / "runs")},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return Settings.model_validate(data)


async def run_once(session: Session, prompt: str = PROMPT, **kwargs):
    events = []
    run = session.new_run(prompt, emit=events.append, **kwargs)
    manifest = await run.run_all(kwargs.pop("gate", None) or _pass)
    return run, manifest, events


async def _pass(name, fields):
    return fields


async def test_full_run_writes_a_complete_run_folder(tmp_path, engine):
    session = Session(offline_settings(tmp_path, str(engine.model)), diffusion=engine)
    run, manifest, events = await run_once(session)
    on_disk = json.loads((run.folder / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["schema"] == "critifusion.run/1" and manifest["status"] == "done"
    assert (manifest["prompt"], manifest["seed"]) == (PROMPT, 2026)
    assert {"critifusion-tui", "torch", "diffusers", "model"} <= set(manifest["versions"])
    assert manifest["config"]["diffusion"]["steps"] == 4

    stages = manifest["stages"]
    assert list(stages) == ["tags", "components", "base", "critique", "refine"]
    tags = stages["tags"]
    assert set(tags["candidates"][0]) >= {"model", "text", "error", "seconds"}
    assert tags["positive"].startswith("a red fox in a forest, ")
    assert tags["negative"].startswith("low quality, blurry, watermark")
    assert stages["components"]["components"] == ["a red fox in a forest"]
    base = stages["base"]
    assert {k: base[k] for k in ("prompt", "negative", "image", "seed", "steps", "guidance", "width", "height")} == {
        "prompt": tags["positive"],
        "negative": tags["negative"],
        "image": "base.png",
        "seed": 2026,
        "steps": 4,
        "guidance": 4.5,
        "width": 64,
        "height": 64,
    }
    critique = stages["critique"]
    assert set(critique["candidates"][0]) >= {"model", "issues", "refined", "error", "seconds"}
    assert critique["issues"] == [] and "alignment" not in critique
    refine = stages["refine"]
    assert refine["prompt"] == merge_critique_with_tags(critique["refined"], tags["positive"])
    assert {k: refine[k] for k in ("strength", "guidance", "steps", "rho_t", "base_c", "seed", "image")} == {
        "strength": 0.75,
        "guidance": 5.2,
        "steps": 4,
        "rho_t": 0.85,
        "base_c": 0.5,
        "seed": 2026 + 2100 + 3,
        "image": "refined.png",
    }
    assert all(isinstance(stages[s]["seconds"], float) for s in stages)
    for name in ("base.png", "refined.png", "base_latent.safetensors"):
        assert (run.folder / name).is_file()
    with Image.open(run.folder / "refined.png") as image:
        assert image.size == (64, 64)
        assert image.text["prompt"] == refine["prompt"] and image.text["seed"] == str(refine["seed"])
    # One candidate (rules): nothing to merge, so the candidate itself wrote the positive.
    assert manifest["prompts"]["positive"]["by"] == "candidate:rules"

    # The events tell the same story, in order.
    started = [e.stage for e in events if isinstance(e, StageStarted)]
    assert started[:2] == ["tags", "components"] and started[2:] == ["base", "critique", "refine"]
    steps = [(e.stage, e.step, e.total) for e in events if isinstance(e, DiffusionStep)]
    assert [s for s in steps if s[0] == "base"] == [("base", i, 4) for i in range(1, 5)]
    assert [s for s in steps if s[0] == "refine"] == [("refine", i, 3) for i in range(1, 4)]
    assert [e.stage for e in events if isinstance(e, ImageReady)] == ["base", "refine"]
    assert [e.stage for e in events if isinstance(e, GateOpened)] == ["tags", "refine"]
    await session.aclose()


async def test_same_seed_same_bytes_other_seed_other_image(tmp_path, engine):
    session = Session(offline_settings(tmp_path, str(engine.model)), diffusion=engine)
    first, _, _ = await run_once(session)
    second, _, _ = await run_once(session)
    third, _, _ = await run_once(session, seed=1)
    for name in ("base.png", "refined.png"):
        assert (first.folder / name).read_bytes() == (second.folder / name).read_bytes()
        assert (first.folder / name).read_bytes() != (third.folder / name).read_bytes()


async def test_gates_let_a_person_steer_and_the_manifest_says_who_wrote_what(tmp_path, engine):
    session = Session(offline_settings(tmp_path, str(engine.model)), diffusion=engine)
    seen = {}

    async def person(name, fields):
        seen[name] = dict(fields)
        if name == "tags":
            return {**fields, "positive": "a red fox, moonlight"}
        return {**fields, "refinement": "a red fox under the moon"}

    run = session.new_run(PROMPT)
    manifest = await run.run_all(person)
    assert set(seen["tags"]) == {"positive", "negative", "components"}
    assert manifest["stages"]["base"]["prompt"] == "a red fox, moonlight"
    assert manifest["stages"]["refine"]["prompt"] == "a red fox under the moon"
    assert manifest["prompts"]["positive"] == {"value": "a red fox, moonlight", "by": "user"}
    edits = [(e["field"], e["by"], e["after"]) for e in manifest["edits"]]
    assert edits == [("positive", "user", "a red fox, moonlight"), ("refinement", "user", "a red fox under the moon")]
    assert manifest["edits"][0]["before"] == manifest["stages"]["tags"]["positive"]


async def test_skipping_the_critique_refines_from_the_tags(tmp_path, engine):
    session = Session(offline_settings(tmp_path, str(engine.model)), diffusion=engine)
    events = []

    async def skip(name, fields):
        return {**fields, "skip_critique": name == "tags"}

    run = session.new_run(PROMPT, emit=events.append)
    manifest = await run.run_all(skip)
    assert manifest["stages"]["critique"]["skipped"] is True
    assert manifest["stages"]["refine"]["prompt"] == merge_critique_with_tags(
        "", manifest["stages"]["tags"]["positive"]
    )
    assert [e.stage for e in events if isinstance(e, StageSkipped)] == ["critique"]


async def test_cancel_mid_diffusion_stops_within_a_step_and_keeps_what_is_done(tmp_path, engine):
    settings = offline_settings(tmp_path, str(engine.model), diffusion={"steps": 200})
    session = Session(settings, diffusion=engine)
    events = []
    first_step = asyncio.Event()

    def emit(event):
        events.append(event)
        if isinstance(event, DiffusionStep):
            first_step.set()

    run = session.new_run(PROMPT, emit=emit)
    task = asyncio.create_task(run.run_all())
    await asyncio.wait_for(first_step.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    steps_at_cancel = sum(isinstance(e, DiffusionStep) for e in events)
    await asyncio.sleep(0.3)
    # The worker thread stopped: no step after the cancel beyond the one in flight.
    assert sum(isinstance(e, DiffusionStep) for e in events) <= steps_at_cancel + 1
    assert max(e.step for e in events if isinstance(e, DiffusionStep)) < 200
    manifest = json.loads((run.folder / "manifest.json").read_text())
    assert manifest["status"] == "cancelled"
    # The stage in flight is recorded as cancelled, not failed: nothing went wrong with it.
    assert {k: v["status"] for k, v in manifest["stages"].items()} == {
        "tags": "done",
        "components": "done",
        "base": "cancelled",
    }


async def test_rerun_one_stage_with_an_edit_forgets_only_what_depends_on_it(tmp_path, engine):
    session = Session(offline_settings(tmp_path, str(engine.model)), diffusion=engine)
    run, manifest, _ = await run_once(session)
    tags_record = manifest["stages"]["tags"]
    before = (run.folder / "refined.png").read_bytes()
    run.edit("refinement", "a red fox, snow")
    assert run.done("critique") and not run.done("refine")
    await run.refine_stage()
    assert run.store.stage("refine")["prompt"] == "a red fox, snow"
    assert (run.folder / "refined.png").read_bytes() != before
    run.edit("positive", "a blue fox")
    assert run.done("tags") and not run.done("base") and not run.done("refine")
    assert run.store.stage("tags") == tags_record  # the stage-1 record is untouched


async def test_all_variants_share_the_text_stages(tmp_path, engine):
    session = Session(offline_settings(tmp_path, str(engine.model)), diffusion=engine)
    run, manifest, _ = await run_once(session, variants="all")
    stages = manifest["stages"]
    assert list(stages) == [
        "tags",
        "components",
        "base",
        "critique",
        "refine",
        "base_original",
        "critique_original",
        "refine_original",
    ]
    assert stages["base_original"]["prompt"] == PROMPT
    assert stages["base_original"]["negative"] == session.settings.diffusion.negative
    assert stages["refine_original"]["seed"] == 2026 + 2400 + 3
    assert stages["critique_original"]["prompt"] == PROMPT
    assert (run.folder / "refined_original.png").is_file()


async def test_adaptive_mode_takes_the_critics_alignment(tmp_path, engine, server, settings):
    server.script(
        "critic",
        text="<issues>- fox is blue; make it red</issues><refined>a red fox</refined><alignment>80</alignment>",
    )
    data = offline_settings(tmp_path, str(engine.model), specfusion={"mode": "adaptive"}).model_dump()
    data["providers"] = settings.providers.model_dump()
    data["criticore"]["vlms"] = ["together:critic"]
    session = Session(Settings.model_validate(data), diffusion=engine)
    run, manifest, _ = await run_once(session)
    strength, guidance, steps, rho_t = cadr_from_alignment(80)
    assert manifest["stages"]["critique"]["alignment"] == 80.0
    refine = manifest["stages"]["refine"]
    assert (refine["strength"], refine["guidance"], refine["steps"], refine["rho_t"], refine["mode"]) == (
        strength,
        guidance,
        steps,
        rho_t,
        "adaptive",
    )
    assert "<alignment>" in server.last("/v1/chat/completions").body["messages"][1]["content"][0]["text"]
    await session.aclose()


async def test_no_secret_reaches_the_run_folder(tmp_path, engine, server, settings):
    server.script("v", text="<issues>the fox is small</issues><refined>a large red fox</refined>")
    data = offline_settings(tmp_path, str(engine.model)).model_dump()
    data["providers"] = settings.providers.model_dump()
    data["criticore"] = {
        "candidates": ["together:a", "together:b"],
        "aggregator": "together:agg",
        "vlms": ["together:v"],
    }
    session = Session(Settings.model_validate(data), diffusion=engine)
    run, manifest, _ = await run_once(session)
    assert manifest["config"]["providers"]["together"]["api_key_env"] == KEY_VAR
    # Tags: 2 candidates + aggregator; components: 2 candidates whose plain-text answers are
    # unusable (no JSON), so nothing to merge; critique: 1 critic, nothing to merge.
    assert len(server.requests_to("/v1/chat/completions")) == 3 + 2 + 1
    for path in run.folder.iterdir():
        assert KEY_VALUE.encode() not in path.read_bytes(), path.name
    await session.aclose()


async def test_a_diffusion_failure_fails_the_run_visibly(tmp_path):
    settings = offline_settings(tmp_path, str(tmp_path / "no-such-model"))
    session = Session(settings)
    events = []
    run = session.new_run(PROMPT, emit=events.append)
    with pytest.raises(RunFailed) as caught:
        await run.run_all()
    assert caught.value.stage == "base" and "no-such-model" in caught.value.message
    manifest = json.loads((run.folder / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    assert manifest["stages"]["base"]["status"] == "failed" and manifest["stages"]["base"]["error"]
    assert manifest["stages"]["tags"]["status"] == "done"


async def test_resume_skips_completed_stages(tmp_path, engine):
    session = Session(offline_settings(tmp_path, str(engine.model)), diffusion=engine)
    run = session.new_run(PROMPT)
    await run.advance()  # the text step
    await run.base_stage()
    tags_record = run.store.stage("tags")
    events = []
    resumed = session.resume(run.folder, emit=events.append)
    manifest = await resumed.run_all()
    assert manifest["status"] == "done" and manifest["stages"]["tags"] == tags_record
    assert [e.stage for e in events if isinstance(e, StageFinished)] == ["critique", "refine"]
    assert len(manifest["resumed"]) == 1


async def test_taking_one_models_answer_is_recorded_as_written_by_it(tmp_path, engine, server, settings):
    server.script("a", text="a red fox, snow, moonlight")
    server.script("b", text='{"components": ["a red fox", "falling snow"]}')
    server.script("c", text='{"components": ["a pine forest"]}')
    data = offline_settings(tmp_path, str(engine.model)).model_dump()
    data["providers"] = settings.providers.model_dump()
    data["criticore"] = {
        "candidates": ["together:a", "together:b", "together:c"],
        "aggregator": "rules",
        "vlms": ["rules"],
    }
    session = Session(Settings.model_validate(data), diffusion=engine)
    run = session.new_run(PROMPT)
    await run.advance()  # the text step
    # The rules aggregator merges b's and c's components; a's answer holds no JSON.
    assert run.text("components") == ["a red fox", "falling snow", "a pine forest"]
    run.use_answer("tags", "together:a")
    assert run.prompts["positive"]["by"] == "together:a"
    # SPEC 1.4 on that one answer: the prompt first, lighting before "other", the quality floor.
    assert (
        run.text("positive") == "a red fox in a forest, moonlight, a red fox, snow, high detailed, sharp focus, 8k, UHD"
    )
    run.use_answer("components", "together:b")
    assert run.text("components") == ["a red fox", "falling snow"]
    assert [e["by"] for e in run.store.manifest["edits"]] == ["together:a", "together:b"]
    with pytest.raises(ValueError, match='no JSON object with a "components" list'):
        run.use_answer("components", "together:a")
    with pytest.raises(ValueError, match="has no answers in this session"):
        run.use_answer("critique", "rules")
    await session.aclose()
