"""The stage table and the run's flow (engine/stages.py, engine/flow.py): where a run stands,
what each move does to the run folder, and what it says before it discards work."""

from __future__ import annotations

import asyncio
import json

import pytest

from critifusion_tui.engine.flow import FlowError, Phase
from critifusion_tui.engine.pipeline import Session
from critifusion_tui.engine.stages import ORIGINAL, Stage, branch_of, depends_on, downstream, readers_of, writer_of
from tests.engine.test_pipeline import PROMPT, offline_settings


def test_what_a_stage_invalidates_follows_from_what_it_reads():
    assert downstream("tags") == (
        Stage.BASE,
        Stage.CRITIQUE,
        Stage.REFINE,
        Stage.ROUNDS,
        Stage.CRITIQUE_ORIGINAL,
        Stage.REFINE_ORIGINAL,
    )
    assert downstream("components") == (
        Stage.CRITIQUE,
        Stage.REFINE,
        Stage.ROUNDS,
        Stage.CRITIQUE_ORIGINAL,
        Stage.REFINE_ORIGINAL,
    )
    assert downstream("base") == (Stage.CRITIQUE, Stage.REFINE, Stage.ROUNDS)
    assert downstream("base_original") == (Stage.CRITIQUE_ORIGINAL, Stage.REFINE_ORIGINAL)
    assert downstream("refine") == (Stage.ROUNDS,)  # rounds go on from the refinement
    assert downstream("rounds") == ()
    assert depends_on("refine") == (Stage.BASE, Stage.CRITIQUE)
    assert depends_on("base_original") == ()  # the comparison base needs no model's answer
    assert writer_of("refinement_original") == Stage.CRITIQUE_ORIGINAL
    assert readers_of("negative") == (Stage.BASE,)
    assert branch_of("critique_original") is ORIGINAL and branch_of("tags") is None


def read(run) -> dict:
    return json.loads((run.folder / "manifest.json").read_text())


async def test_advance_walks_the_gates_and_records_where_the_run_waits(tmp_path, engine):
    session = Session(offline_settings(tmp_path, str(engine.model)), diffusion=engine)
    run = session.new_run(PROMPT)
    assert run.phase is Phase.TEXT and run.gate is None
    assert await run.advance() is Phase.TAGS_GATE
    assert read(run)["status"] == "paused" and set(run.gate_fields()) == {"positive", "negative", "components"}
    with pytest.raises(FlowError, match="refinement"):
        await run.advance({"refinement": "not here"})
    assert await run.advance({"positive": "a red fox, snow"}) is Phase.REFINE_GATE
    assert run.store.stage("base")["prompt"] == "a red fox, snow"
    assert await run.advance() is Phase.DONE
    assert read(run)["status"] == "done"
    with pytest.raises(FlowError, match="complete"):
        await run.advance()


async def test_back_says_what_it_discards_and_forgets_only_that(tmp_path, engine):
    session = Session(offline_settings(tmp_path, str(engine.model)), diffusion=engine)
    run = session.new_run(PROMPT)
    await run.run_all()
    assert run.back_discards() == [Stage.REFINE]
    assert run.back() is Phase.REFINE_GATE and run.done("critique") and not run.done("refine")
    assert run.back_discards() == [Stage.BASE, Stage.CRITIQUE]
    assert run.back() is Phase.TAGS_GATE and run.done("tags") and not run.done("base")
    assert run.back_target() is None
    with pytest.raises(FlowError):
        run.back()
    assert read(run)["status"] == "paused"


async def test_rerun_runs_the_rest_of_its_step_and_refuses_without_inputs(tmp_path, engine):
    session = Session(offline_settings(tmp_path, str(engine.model)), diffusion=engine)
    run = session.new_run(PROMPT)
    await run.advance()
    assert run.rerun_problem("critique") == "Critique needs Base first"
    with pytest.raises(FlowError):
        await run.rerun("refine")
    await run.advance()
    assert run.rerun_discards("base") == [Stage.BASE, Stage.CRITIQUE]
    first = run.store.stage("base")
    assert await run.rerun("base") is Phase.REFINE_GATE
    assert run.store.stage("base") is not first and run.done("critique")  # the critique ran again too


async def test_a_cancelled_step_is_recorded_as_cancelled_and_goes_on_from_there(tmp_path, engine):
    session = Session(offline_settings(tmp_path, str(engine.model), diffusion={"steps": 300}), diffusion=engine)
    run = session.new_run(PROMPT)
    await run.advance()
    task = asyncio.ensure_future(run.advance())
    while not (run.busy and run.store.manifest["stages"].get("base") is None and run.diffusion.loaded):
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    assert run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    manifest = read(run)
    assert manifest["status"] == "cancelled" and manifest["stages"]["base"]["status"] == "cancelled"
    assert run.phase is Phase.TAGS_GATE and run.stage_state("base") == "cancelled"


async def test_leaving_an_unfinished_run_records_it_as_abandoned(tmp_path, engine):
    session = Session(offline_settings(tmp_path, str(engine.model)), diffusion=engine)
    run = session.new_run(PROMPT)
    await run.advance()
    run.leave()
    assert read(run)["status"] == "abandoned"
    finished = session.new_run(PROMPT)
    await finished.run_all()
    finished.leave()
    assert read(finished)["status"] == "done"


async def test_the_skip_critique_choice_survives_a_reopen(tmp_path, engine):
    session = Session(offline_settings(tmp_path, str(engine.model)), diffusion=engine)
    run = session.new_run(PROMPT)
    await run.advance()
    run.set_skip_critique(True)
    run.leave()
    again = session.resume(run.folder)
    assert again.skip_critique_next and again.phase is Phase.TAGS_GATE
    assert await again.advance() is Phase.REFINE_GATE
    assert again.stage_state("critique") == "skipped"


async def test_resume_keeps_the_runs_settings_and_the_current_providers(tmp_path, engine):
    old = Session(offline_settings(tmp_path, str(engine.model), diffusion={"steps": 3}), diffusion=engine)
    run = old.new_run(PROMPT)
    await run.advance()
    now = Session(
        offline_settings(tmp_path, str(engine.model), diffusion={"steps": 5}),
        diffusion=engine,
        overrides=["specfusion.rho_t=0.8"],
    )
    again = now.resume(run.folder)
    assert again.settings.diffusion.steps == 3 and again.settings.specfusion.rho_t == 0.8
    assert any("diffusion.steps = 3 (now 5)" in note for note in again.differences)
    await again.run_all()
    assert again.store.stage("base")["steps"] == 3 and again.store.stage("refine")["rho_t"] == 0.8


async def test_variants_all_adds_the_comparison_step(tmp_path, engine):
    session = Session(offline_settings(tmp_path, str(engine.model)), diffusion=engine)
    run = session.new_run(PROMPT, variants="all")
    assert run.stages[-3:] == ORIGINAL.stages
    await run.advance()
    await run.advance()
    # The comparison has no gate: the advance past the refine gate runs it too.
    assert await run.advance() is Phase.DONE and run.done("refine_original")
    run.forget("refine_original")
    assert run.phase is Phase.COMPARISON  # e.g. after a crash in it: an advance goes on from there
    assert await run.advance() is Phase.DONE
