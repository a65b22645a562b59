"""The human-in-the-loop as a person meets it (Pilot): the findings of trying the app in
tmux, each driven through keys, against the engine-owned flow (engine/flow.py)."""

from __future__ import annotations

import json

from textual.widgets import Input

from critifusion_tui.config import Settings
from critifusion_tui.tui.app import DONE, PROMPT, REFINE_GATE, TAGS_GATE
from critifusion_tui.tui.screens.confirm import ConfirmScreen
from critifusion_tui.tui.widgets.candidate_pane import CandidatePane
from critifusion_tui.tui.widgets.image_view import ImageView
from critifusion_tui.tui.widgets.prompt_editor import ComponentsEditor, PromptEditor
from critifusion_tui.tui.widgets.stage_rail import StageRail
from tests.tui.test_app import app_settings, hint, make_app, notifications, settled, until


def manifest_of(app) -> dict:
    return json.loads((app.active_run.folder / "manifest.json").read_text())


def hosted(tmp_path, settings, **criticore) -> Settings:
    data = app_settings(tmp_path).model_dump()
    data["providers"] = settings.providers.model_dump()
    data["criticore"].update(criticore)
    return Settings.model_validate(data)


def three_candidates_and_an_aggregator(tmp_path, settings) -> Settings:
    return hosted(
        tmp_path,
        settings,
        candidates=["together:steady", "together:flaky", "together:other"],
        aggregator=["together:agg"],
    )


async def edit_the_tags_at_the_gate(app, pilot, text: str) -> None:
    """Run to the tags gate and type `text` over the positive prompt, as a person would."""
    await pilot.press("ctrl+r")
    await until(pilot, settled(app, TAGS_GATE))
    app.query_one("#positive", PromptEditor).text_area.select_all()
    await pilot.press(*text)


async def retry_the_tags_of(app, pilot, model: str) -> CandidatePane:
    """Press r on `model`'s tags pane; returns the pane."""
    pane = next(p for p in app.query(CandidatePane) if p.stage == "tags" and p.model == model)
    pane.focus()
    await pilot.press("r")
    return pane


async def test_skip_critique_is_a_key_no_editor_takes_and_the_rail_shows_it(tmp_path):
    app = make_app(app_settings(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+r")
        await until(pilot, settled(app, TAGS_GATE))
        editor = app.query_one("#positive", PromptEditor)
        assert app.focused is editor.text_area
        before = editor.text
        await pilot.press("ctrl+t")
        await pilot.pause()
        # The editor kept every line (ctrl+k there deletes one); the rail says what will happen.
        assert editor.text == before
        rail = app.query_one(StageRail)
        assert rail.will_skip("critique") and "will skip" in rail._word("critique")
        await pilot.press("ctrl+t")
        await pilot.pause()
        assert not rail.will_skip("critique")
        await pilot.press("ctrl+t")
        await pilot.press("ctrl+r")
        await until(pilot, settled(app, REFINE_GATE))
        assert rail.state("critique") == "skipped"
        assert manifest_of(app)["stages"]["critique"]["skipped"] is True


async def test_a_retry_that_fails_again_keeps_the_edit_and_asks_no_aggregator(tmp_path, server, settings):
    server.script("flaky", status=500)  # fails every time
    server.script("agg", text="a red fox, forest, merged")
    app = make_app(three_candidates_and_an_aggregator(tmp_path, settings))
    async with app.run_test(size=(120, 40)) as pilot:
        await edit_the_tags_at_the_gate(app, pilot, "my own tags")
        asked = len(server.requests_to("/v1/chat/completions"))
        flaky = await retry_the_tags_of(app, pilot, "together:flaky")
        await until(pilot, lambda: not app.busy and flaky.state == "failed")
        await pilot.pause()
        # One request: the failed model again; no aggregator, since no answer changed.
        assert len(server.requests_to("/v1/chat/completions")) == asked + 1
        assert app.active_run.text("positive") == "my own tags"
        editor = app.query_one("#positive", PromptEditor)
        assert editor.text == "my own tags" and "you" in str(editor._author_line.render())
        assert not isinstance(app.screen, ConfirmScreen)


async def test_a_retry_that_changes_the_merge_lets_the_person_choose(tmp_path, server, settings):
    # Its tags request fails once, then answers; its components request, sent at the same time,
    # must not take the failure (which of the two arrives first varies from run to run).
    server.script("flaky", status=500, times=1, when="Idea:")
    # The merges are the tags aggregator's (its user turn starts "Idea:"), never the components'.
    server.script("agg", text="a red fox, forest, first merge", times=1, when="Idea:")
    server.script("agg", text="a red fox, forest, second merge", when="Idea:")
    app = make_app(three_candidates_and_an_aggregator(tmp_path, settings))
    async with app.run_test(size=(120, 40)) as pilot:
        await edit_the_tags_at_the_gate(app, pilot, "my own tags")
        await retry_the_tags_of(app, pilot, "together:flaky")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        question = app.screen.question
        assert "my own tags" in question and "second merge" in question
        await pilot.press("n")  # keep mine
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
        assert app.active_run.text("positive") == "my own tags"
        assert app.query_one("#positive", PromptEditor).text == "my own tags"
        edits = [(e["field"], e["by"]) for e in manifest_of(app)["edits"]]
        assert edits == [("positive", "user")]


async def test_the_refine_gate_shows_the_base_the_critics_saw(tmp_path):
    app = make_app(app_settings(tmp_path))
    async with app.run_test(size=(200, 60)) as pilot:
        await pilot.press("ctrl+r")
        await until(pilot, settled(app, TAGS_GATE))
        await pilot.press("ctrl+r")
        await until(pilot, settled(app, REFINE_GATE))
        assert app.query_one("#views").current == "view-critique"
        image = app.query_one("#critique-image", ImageView)
        assert image.path == app.active_run.folder / "base.png"
        assert image.region.height >= 10 and image.region.width >= 20


async def test_cancelled_text_stages_stop_their_panes_and_say_cancelled(tmp_path, server, settings):
    server.script("slow", hang=True)
    # The escape, not the fixture's 2 s timeout, must end the hang: the model loads beside the
    # text stages, and Pilot waits for a busy process to go idle (up to 1 s) at every step.
    settings.providers.together.timeout_s = 30.0
    app = make_app(hosted(tmp_path, settings, candidates=["together:slow"]))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("ctrl+r")
        await until(pilot, lambda: len(list(app.query(CandidatePane))) >= 2)
        await pilot.pause(0.3)
        await pilot.press("escape")
        await until(pilot, lambda: not app.busy)
        await pilot.pause(0.2)
        rail = app.query_one(StageRail)
        assert rail.state("tags") == rail.state("components") == "cancelled"
        assert {p.state for p in app.query(CandidatePane)} == {"cancelled"}
        seconds = [p.seconds for p in app.query(CandidatePane)]
        await pilot.pause(0.6)
        assert [p.seconds for p in app.query(CandidatePane)] == seconds  # the timers stopped
        assert not [e for e in app.log_buffer if e.level == "error"]
        stages = manifest_of(app)["stages"]
        assert {k: v["status"] for k, v in stages.items()} == {"tags": "cancelled", "components": "cancelled"}
        assert manifest_of(app)["status"] == "cancelled"


async def test_back_at_done_asks_then_keeps_the_rail_true(tmp_path):
    app = make_app(app_settings(tmp_path))
    async with app.run_test(size=(100, 30)) as pilot:
        for phase in (TAGS_GATE, REFINE_GATE, DONE):
            await pilot.press("ctrl+r")
            await until(pilot, settled(app, phase))
        await pilot.press("ctrl+b")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "Refine" in app.screen.question
        await pilot.press("n")
        await pilot.pause()
        assert app.phase == DONE and app.active_run.done("refine")
        await pilot.press("ctrl+b")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: app.phase == REFINE_GATE)
        rail = app.query_one(StageRail)
        states = {stage: rail.state(stage) for stage in rail.rows}
        assert states == {
            "prompt": "done",
            "tags": "done",
            "components": "done",
            "base": "done",
            "critique": "done",
            "refine": "gate",
            "done": "waiting",
        }
        await pilot.press("ctrl+b")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: app.phase == TAGS_GATE)
        states = {stage: rail.state(stage) for stage in rail.rows}
        # One gate at a time, and nothing after it shows done.
        assert [s for s, state in states.items() if state == "gate"] == ["base"]
        assert states["critique"] == states["refine"] == "waiting"
        assert not (app.active_run.folder / "refined.png").exists() or not app.active_run.done("refine")


async def test_ctrl_r_at_done_lets_the_person_edit_the_prompt_first(tmp_path):
    app = make_app(app_settings(tmp_path))
    async with app.run_test(size=(100, 30)) as pilot:
        for phase in (TAGS_GATE, REFINE_GATE, DONE):
            await pilot.press("ctrl+r")
            await until(pilot, settled(app, phase))
        first = app.active_run.folder
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert app.phase == PROMPT and app.active_run.folder == first and not app.busy
        prompt = app.query_one("#prompt", Input)
        assert app.focused is prompt
        prompt.value = "a grey wolf"
        await pilot.press("ctrl+r")
        await until(pilot, settled(app, TAGS_GATE))
        assert app.active_run.folder != first and app.active_run.prompt == "a grey wolf"
        assert json.loads((first / "manifest.json").read_text())["status"] == "done"


async def test_a_run_left_at_a_gate_is_recorded_as_abandoned_not_running(tmp_path):
    app = make_app(app_settings(tmp_path))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("ctrl+r")
        await until(pilot, settled(app, TAGS_GATE))
        folder = app.active_run.folder
        assert manifest_of(app)["status"] == "paused"  # waiting for the person, not running
    assert json.loads((folder / "manifest.json").read_text())["status"] == "abandoned"


async def test_the_components_editor_has_a_key(tmp_path):
    app = make_app(app_settings(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+r")
        await until(pilot, settled(app, TAGS_GATE))
        await pilot.press("ctrl+g")
        await pilot.pause()
        assert app.query_one("#views").current == "view-components"
        assert app.focused is app.query_one("#components", ComponentsEditor).text_area


def footer_keys(app) -> list[str]:
    """The actions the footer shows."""
    return [key.action for key in app.screen.query("FooterKey")]


def footer_width(app) -> int:
    """The last footer key's right edge, not the sum of the keys' widths: the footer puts a
    column between keys, which a sum leaves out."""
    return max(key.region.right for key in app.screen.query("FooterKey"))


async def test_the_footer_fits_80_columns_and_shows_only_keys_that_act(tmp_path):
    app = make_app(app_settings(tmp_path))

    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        seen = {}
        for phase in (PROMPT, TAGS_GATE, REFINE_GATE, DONE):
            if phase != PROMPT:
                await pilot.press("ctrl+r")
                await until(pilot, settled(app, phase))
            await pilot.pause(0.2)
            seen[phase] = footer_keys(app)
            assert footer_width(app) <= 80, (phase, seen[phase])
            assert "help" in seen[phase] and "advance" in seen[phase]
            if phase == TAGS_GATE:  # a model's pane focused adds its own keys (retry, use)
                pane = app.query(CandidatePane).first()
                pane.focus()
                await pilot.pause(0.2)
                assert {"help", "history", "advance"} <= set(footer_keys(app))
                assert footer_width(app) <= 80, footer_keys(app)
                # Its own keys are told in its bottom line instead.
                assert str(pane.border_subtitle).endswith(" · r retry · u use")
                app.query_one("#positive", PromptEditor).text_area.focus()
        assert "skip_critique" in seen[TAGS_GATE] and "skip_critique" not in seen[REFINE_GATE]
        assert "step_back" not in seen[PROMPT] and "cancel" not in seen[TAGS_GATE]


async def test_a_notification_never_covers_the_editor_being_typed_in(tmp_path):
    app = make_app(app_settings(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+r")
        await until(pilot, settled(app, TAGS_GATE))
        assert app.focused is app.query_one("#positive", PromptEditor).text_area
        app.notify("together:x failed: HTTP 500 (a long message that would cover half the editor)", severity="error")
        await pilot.pause()
        assert not notifications(app) and "HTTP 500" in hint(app)


async def test_the_model_load_shows_its_name_and_time(tmp_path):
    app = make_app(app_settings(tmp_path))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("ctrl+r")
        await until(pilot, settled(app, TAGS_GATE))
        from critifusion_tui.engine.events import ModelLoading
        from critifusion_tui.tui.app import EngineEvent

        app.post_message(EngineEvent(ModelLoading("base", model="stabilityai/sdxl")))
        await pilot.pause(0.6)
        progress = app.query_one("#progress")
        assert not progress.idle and progress.status_text.startswith("loading stabilityai/sdxl… ")
        assert progress.status_text.endswith(" s")


def _without_times(value):
    """A manifest without what differs between two runs of the same inputs: times and dates."""
    if isinstance(value, dict):
        return {k: _without_times(v) for k, v in value.items() if k not in ("created", "seconds", "at", "resumed")}
    if isinstance(value, list):
        return [_without_times(v) for v in value]
    return value


async def test_the_app_and_headless_write_the_same_run(tmp_path):
    from critifusion_tui.engine.pipeline import Session
    from tests.tui.test_app import PROMPT_TEXT

    settings = app_settings(tmp_path)
    session = Session(settings)
    headless_run = session.new_run(PROMPT_TEXT)
    headless = _without_times(await headless_run.run_all())
    await session.aclose()

    app = make_app(settings)
    async with app.run_test(size=(100, 30)) as pilot:
        for phase in (TAGS_GATE, REFINE_GATE, DONE):
            await pilot.press("ctrl+r")
            await until(pilot, settled(app, phase))
        folder = app.active_run.folder
    in_app = _without_times(json.loads((folder / "manifest.json").read_text()))
    assert folder != headless_run.folder
    assert in_app == headless
    for image in ("base.png", "refined.png"):
        assert (folder / image).read_bytes() == (headless_run.folder / image).read_bytes()


async def test_reopening_in_the_app_keeps_the_runs_own_settings_and_says_what_differs(tmp_path):
    from critifusion_tui.engine.pipeline import Session
    from tests.tui.test_app import PROMPT_TEXT

    session = Session(app_settings(tmp_path, diffusion={"steps": 3}))
    run = session.new_run(PROMPT_TEXT)
    await run.advance()  # the text stages, then it waits at the tags gate
    await session.aclose()

    app = make_app(app_settings(tmp_path))  # the current config draws with 4 steps
    async with app.run_test(size=(100, 30)) as pilot:
        app._reopen(run.folder)
        await pilot.pause()
        assert app.phase == TAGS_GATE
        assert any("diffusion.steps = 3 (now 4)" in e.text for e in app.log_buffer)
        await pilot.press("ctrl+r")
        await until(pilot, settled(app, REFINE_GATE))
        assert app.active_run.store.stage("base")["steps"] == 3


async def test_the_app_runs_variants_all_with_the_comparison_on_the_rail(tmp_path):
    app = make_app(app_settings(tmp_path))
    app.variants = "all"
    async with app.run_test(size=(120, 40)) as pilot:
        for phase in (TAGS_GATE, REFINE_GATE, DONE):
            await pilot.press("ctrl+r")
            await until(pilot, settled(app, phase))
        rail = app.query_one(StageRail)
        assert rail.rows[-4:] == ("base_original", "critique_original", "refine_original", "done")
        assert {rail.state(s) for s in rail.rows} == {"done"}
        assert app.query_one("#image-refine_original", ImageView).path == app.active_run.folder / "refined_original.png"
        assert not app.query_one("#images-original").has_class("-hidden")
