"""The app driven as a person drives it (Pilot): every stage, both gates, cancel, retry, a
picked answer, failures as notifications, quitting during a run. The tiny SDXL runs on the
CPU and the hosted roles go through the real clients to the loopback server."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from textual.widgets import Input
from textual_image.widget import HalfcellImage

from critifusion_tui.config import LoadedConfig, Settings
from critifusion_tui.engine.prompts import fallback_tags, merge_critique_with_tags
from critifusion_tui.tui.app import DONE, PROMPT, REFINE_GATE, TAGS_GATE, CritiFusionApp
from critifusion_tui.tui.widgets.candidate_pane import CandidatePane
from critifusion_tui.tui.widgets.image_view import ImageView
from critifusion_tui.tui.widgets.prompt_editor import PromptEditor
from critifusion_tui.tui.widgets.stage_rail import StageRail

PROMPT_TEXT = "a red fox in a forest"


def app_settings(tmp_path: Path, **sections) -> Settings:
    data = {
        "criticore": {"candidates": ["rules"], "aggregator": "rules", "vlms": ["rules"]},
        "diffusion": {"model": "tiny-random", "device": "cpu", "width": 64, "height": 64, "steps": 4},
        "specfusion": {"total_steps": 4, "last_k": 3},
        "output": {"dir": str(tmp_path / "runs")},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return Settings.model_validate(data)


def make_app(settings: Settings, prompt: str = PROMPT_TEXT) -> CritiFusionApp:
    return CritiFusionApp(LoadedConfig(settings, None, "test"), prompt, image_class=HalfcellImage)


async def until(pilot, predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("the app did not get there in time")
        await pilot.pause(0.05)


def settled(app: CritiFusionApp, phase: str):
    return lambda: app.phase == phase and not app.busy


def notifications(app) -> list[str]:
    return [n.message for n in app._notifications]


def hint(app) -> str:
    """The status line under the views (where failures and the next step are said)."""
    return str(app.query_one("#hint").render())


async def test_every_stage_in_order_with_both_gates(tmp_path):
    app = make_app(app_settings(tmp_path))
    async with app.run_test(size=(100, 30)) as pilot:
        rail = app.query_one(StageRail)
        assert app.phase == PROMPT and app.query_one("#prompt", Input).value == PROMPT_TEXT
        await pilot.press("ctrl+r")
        await until(pilot, settled(app, TAGS_GATE))
        assert [rail.state(s) for s in ("tags", "components", "base")] == ["done", "done", "gate"]
        assert app.query_one("#positive", PromptEditor).text == fallback_tags(PROMPT_TEXT)
        assert app.query_one("#views").current == "view-tags"
        panes = {(p.stage, p.role, p.model, p.state) for p in app.query(CandidatePane)}
        assert ("tags", "candidate", "rules", "done") in panes
        # One candidate: nothing to merge, so no aggregator was asked and it has no pane.
        assert not any(role == "aggregator" for _, role, _, _ in panes)

        await pilot.press("ctrl+r")
        await until(pilot, settled(app, REFINE_GATE))
        assert [rail.state(s) for s in ("base", "critique", "refine")] == ["done", "done", "gate"]
        assert app.query_one("#image-base", ImageView).path == app.active_run.folder / "base.png"
        assert app.query_one("#image-base", ImageView).label == "tiny-random: noise"
        refinement = app.query_one("#refinement", PromptEditor).text
        assert refinement == merge_critique_with_tags(PROMPT_TEXT, fallback_tags(PROMPT_TEXT))

        await pilot.press("ctrl+r")
        await until(pilot, settled(app, DONE))
        assert rail.state("refine") == "done" and rail.state("done") == "done"
        assert app.query_one("#image-refine", ImageView).path == app.active_run.folder / "refined.png"
        assert app.query_one("#views").current == "view-images"
        manifest = json.loads((app.active_run.folder / "manifest.json").read_text())
        assert manifest["status"] == "done" and manifest["stages"]["refine"]["prompt"] == refinement


async def test_edits_at_both_gates_steer_the_run_and_are_recorded(tmp_path):
    app = make_app(app_settings(tmp_path))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("ctrl+r")
        await until(pilot, settled(app, TAGS_GATE))
        # Type over the positive prompt as a person would (select all, then type).
        area = app.query_one("#positive", PromptEditor).text_area
        area.focus()
        area.select_all()
        await pilot.press(*"a fox, moonlight")
        await pilot.press("ctrl+r")
        await until(pilot, settled(app, REFINE_GATE))
        assert app.active_run.store.stage("base")["prompt"] == "a fox, moonlight"
        area = app.query_one("#refinement", PromptEditor).text_area
        area.focus()
        area.select_all()
        await pilot.press(*"a fox under the moon")
        await pilot.press("ctrl+r")
        await until(pilot, settled(app, DONE))
        manifest = json.loads((app.active_run.folder / "manifest.json").read_text())
    assert [(e["field"], e["by"], e["after"]) for e in manifest["edits"]] == [
        ("positive", "user", "a fox, moonlight"),
        ("refinement", "user", "a fox under the moon"),
    ]
    assert manifest["stages"]["refine"]["prompt"] == "a fox under the moon"


async def test_escape_cancels_the_diffusion_and_keeps_what_is_done(tmp_path):
    app = make_app(app_settings(tmp_path, diffusion={"steps": 400}))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("ctrl+r")
        await until(pilot, settled(app, TAGS_GATE))
        await pilot.press("ctrl+r")
        progress = app.query_one("#progress")
        await until(pilot, lambda: progress.step >= 1)
        await pilot.press("escape")
        await until(pilot, lambda: not app.busy)
        await pilot.pause(0.3)
        steps = progress.step
        assert app.phase == TAGS_GATE and steps < 400
        # Cancelled is not failed: the rail, the hint and the manifest say which it was.
        assert app.query_one(StageRail).state("base") == "cancelled"
        assert "Cancelled" in hint(app) and "failed" not in hint(app)
        manifest = json.loads((app.active_run.folder / "manifest.json").read_text())
        assert {k: v["status"] for k, v in manifest["stages"].items()} == {
            "tags": "done",
            "components": "done",
            "base": "cancelled",
        }
        assert manifest["status"] == "cancelled"
        # ctrl+r goes on from the gate: the base runs again (now quickly).
        app.loaded.settings.diffusion.steps = 4
        await pilot.press("ctrl+r")
        await until(pilot, settled(app, REFINE_GATE))


async def test_a_failed_model_is_shown_in_place_and_retried_alone(tmp_path, server, settings):
    server.script("flaky", status=500, times=2)  # its tags and its components request both fail
    data = app_settings(tmp_path).model_dump()
    data["providers"] = settings.providers.model_dump()
    data["criticore"]["candidates"] = ["together:steady", "together:flaky"]
    app = make_app(Settings.model_validate(data))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("ctrl+r")
        await until(pilot, settled(app, TAGS_GATE))
        panes = {(p.stage, p.model): p for p in app.query(CandidatePane)}
        flaky = panes[("tags", "together:flaky")]
        assert flaky.state == "failed" and "HTTP 500" in flaky.error
        assert panes[("tags", "together:steady")].state == "done"
        assert any("tags: together:flaky" in n for n in notifications(app))
        before = len(server.requests_to("/v1/chat/completions"))
        flaky.focus()
        await pilot.press("r")
        await until(pilot, lambda: not app.busy and flaky.state == "done")
        # Only the failed model was asked again (no aggregator here: rules).
        assert len(server.requests_to("/v1/chat/completions")) == before + 1
        assert flaky.text == "reply from flaky" and app.phase == TAGS_GATE


async def test_taking_one_candidates_answer(tmp_path, server, settings):
    server.script("poet", text="a red fox, silver moonlight, mist")
    data = app_settings(tmp_path).model_dump()
    data["providers"] = settings.providers.model_dump()
    data["criticore"]["candidates"] = ["together:poet", "rules"]
    app = make_app(Settings.model_validate(data))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("ctrl+r")
        await until(pilot, settled(app, TAGS_GATE))
        pane = next(p for p in app.query(CandidatePane) if p.stage == "tags" and p.model == "together:poet")
        pane.focus()
        await pilot.press("u")
        await pilot.pause()
        positive = app.query_one("#positive", PromptEditor)
        assert positive.text.startswith("a red fox in a forest, silver moonlight, a red fox, mist")
        assert "together:poet" in positive.author
        assert app.active_run.prompts["positive"]["by"] == "together:poet"


async def test_a_missing_key_is_a_notification_with_the_fix_not_a_crash(tmp_path, monkeypatch):
    monkeypatch.delenv("TOGETHER_API_KEY", raising=False)
    app = make_app(app_settings(tmp_path, criticore={"candidates": ["together:some-model"]}))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("ctrl+r")
        await until(pilot, settled(app, TAGS_GATE))
        assert any("export TOGETHER_API_KEY" in n for n in notifications(app))
        # SPEC 1.5: nobody answered, so the prompt and the seed tags carry on.
        assert app.query_one("#positive", PromptEditor).text == fallback_tags(PROMPT_TEXT)


async def test_a_failed_stage_is_reported_and_can_be_retried_in_place(tmp_path):
    app = make_app(app_settings(tmp_path, diffusion={"model": str(tmp_path / "no-model")}))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("ctrl+r")
        await until(pilot, settled(app, TAGS_GATE))
        await pilot.press("ctrl+r")
        await until(pilot, lambda: not app.busy and app.query_one(StageRail).state("base") == "failed")
        assert "base failed" in hint(app) and "no-model" in hint(app)
        assert app.phase == TAGS_GATE  # still at the gate, nothing lost
        rail = app.query_one(StageRail)
        rail.select("base")
        await pilot.press("f5")
        await until(pilot, lambda: not app.busy)
        assert rail.state("base") == "failed" and app.is_running


async def test_quitting_during_a_run_asks_first(tmp_path):
    from critifusion_tui.tui.screens.confirm import ConfirmScreen

    app = make_app(app_settings(tmp_path, diffusion={"steps": 400}))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("ctrl+r")
        await until(pilot, settled(app, TAGS_GATE))
        await pilot.press("ctrl+r")
        await until(pilot, lambda: app.query_one("#progress").step >= 1)
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        await pilot.pause()
        assert app.is_running and app.busy
        await pilot.press("ctrl+q")
        await pilot.pause()
        await pilot.press("y")
        await until(pilot, lambda: not app.is_running, timeout=20)


async def test_an_empty_prompt_is_refused_with_a_word(tmp_path):
    app = make_app(app_settings(tmp_path), prompt="")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert app.active_run is None and app.phase == PROMPT
        assert "Type a prompt first." in hint(app)


async def test_reopening_an_earlier_run_from_history(tmp_path):
    app = make_app(app_settings(tmp_path))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("ctrl+r")
        await until(pilot, settled(app, TAGS_GATE))
        await pilot.press("ctrl+r")
        await until(pilot, settled(app, REFINE_GATE))
        folder = app.active_run.folder
        await pilot.press("ctrl+n")  # a new run: back to the prompt, the run is kept
        await until(pilot, lambda: app.phase == PROMPT)
        app.query_one("#prompt", Input).value = "a blue whale"
        await pilot.press("ctrl+r")
        await pilot.pause()
        await pilot.press("y")  # leave the unfinished run (it stays in history as abandoned)
        await until(pilot, settled(app, TAGS_GATE))
        assert json.loads((folder / "manifest.json").read_text())["status"] == "abandoned"
        from critifusion_tui.tui.screens.history import HistoryScreen

        await pilot.press("ctrl+o")
        await until(pilot, lambda: isinstance(app.screen, HistoryScreen))
        app.screen.post_message(HistoryScreen.Reopen(folder))
        await until(pilot, lambda: app.active_run is not None and app.active_run.folder == folder)
        await pilot.pause()
        assert app.phase == REFINE_GATE
        assert app.query_one("#prompt", Input).value == PROMPT_TEXT
        assert app.query_one("#image-base", ImageView).path == folder / "base.png"
        # Looking changes nothing on disk.
        assert json.loads((folder / "manifest.json").read_text()).get("resumed") is None


@pytest.mark.parametrize("size", [(80, 24), (200, 60)])
async def test_readable_at_both_sizes(tmp_path, size, screen_text):
    app = make_app(app_settings(tmp_path))
    async with app.run_test(size=size) as pilot:
        await pilot.press("ctrl+r")
        await until(pilot, settled(app, TAGS_GATE))
        text = screen_text(app)
        for word in ("Prompt", "Tags", "Components", "Base", "Critique", "Refine", "Done"):
            assert word in text
        assert "Edit tags" in text and "CLIP tokens" in text
        assert "^r" in text or "ctrl+r" in text


async def test_model_text_is_never_markup(tmp_path, server, settings):
    server.script("mark", text="[bold red]loud[/] fox \x1b[31mred\x1b[0m, <think>hidden</think>forest")
    data = app_settings(tmp_path).model_dump()
    data["providers"] = settings.providers.model_dump()
    data["criticore"]["candidates"] = ["together:mark"]
    app = make_app(Settings.model_validate(data))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("ctrl+r")
        await until(pilot, settled(app, TAGS_GATE))
        pane = next(p for p in app.query(CandidatePane) if p.model == "together:mark")
        assert pane.text == "[bold red]loud[/] fox red, forest"
        assert "[bold red]loud[/] fox red" in app.query_one("#positive", PromptEditor).text
    await asyncio.sleep(0)


async def test_the_rail_opens_any_stage_view(tmp_path):
    app = make_app(app_settings(tmp_path))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("ctrl+r")
        await until(pilot, settled(app, TAGS_GATE))
        rail = app.query_one(StageRail)
        rail.focus()
        rail.select("components")
        await pilot.press("enter")
        await pilot.pause()
        assert app.query_one("#views").current == "view-components"
        await pilot.press("up", "enter")
        await pilot.pause()
        assert app.query_one("#views").current == "view-tags"


async def test_every_action_is_in_the_command_palette(tmp_path):
    app = make_app(app_settings(tmp_path))
    async with app.run_test(size=(100, 30)) as pilot:
        names = [command.title for command in app.get_system_commands(app.screen)]
        for binding in app.BINDINGS:
            assert f"{binding.description} ({binding.key})" in names
        assert all(binding.id for binding in app.BINDINGS)
        # Running one from the palette does what its key does.
        command = next(c for c in app.get_system_commands(app.screen) if c.title.startswith("Continue"))
        command.callback()
        await until(pilot, settled(app, TAGS_GATE))


async def test_the_log_has_every_provider_call_and_retry(tmp_path, server, settings):
    server.script("busy", status=429, retry_after=0.05, times=2)  # its tags and components calls
    data = app_settings(tmp_path).model_dump()
    data["providers"] = settings.providers.model_dump()
    data["providers"]["together"]["max_retries"] = 1
    data["criticore"]["candidates"] = ["together:busy"]
    app = make_app(Settings.model_validate(data))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("ctrl+r")
        await until(pilot, settled(app, TAGS_GATE))
        lines = [f"{e.level} {e.source} {e.text}" for e in app.log_buffer]
    assert sum(line.startswith("info together Retrying request to /v1/chat/completions") for line in lines) == 2
    assert sum("HTTP Request: POST" in line and "429 Too Many Requests" in line for line in lines) == 2
    assert sum("HTTP Request: POST" in line and "200 OK" in line for line in lines) == 2
    assert any("candidate together:busy answered" in line for line in lines)


async def test_f5_on_a_finished_base_draws_it_again(tmp_path):
    app = make_app(app_settings(tmp_path))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("ctrl+r")
        await until(pilot, settled(app, TAGS_GATE))
        await pilot.press("ctrl+r")
        await until(pilot, settled(app, REFINE_GATE))
        first = app.active_run.store.stage("base")
        app.query_one(StageRail).select("base")
        await pilot.press("f5")
        await pilot.pause()
        await pilot.press("y")  # it replaces the base and its critique: asked first
        await until(pilot, lambda: not app.busy and app.active_run.done("critique"))
        again = app.active_run.store.stage("base")
        assert again is not first and again["seconds"] != first["seconds"]
        assert app.phase == REFINE_GATE


async def test_continuing_a_gate_untouched_records_no_edit_by_the_user(tmp_path):
    # The editor drops control characters it cannot show, so what a person sees may differ
    # from the run's value; continuing without typing must not record an edit "by user".
    app = make_app(app_settings(tmp_path))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("ctrl+r")
        await until(pilot, settled(app, TAGS_GATE))
        app.active_run.edit("positive", "a red fox\x07, moonlight", by="together:poet")
        app._show_where()  # the editors are filled from the run, as on entering the gate
        await pilot.pause()
        shown = app.query_one("#positive", PromptEditor).text
        assert "\x07" not in shown and shown != app.active_run.text("positive")
        await pilot.press("ctrl+r")
        await until(pilot, settled(app, REFINE_GATE))
        manifest = json.loads((app.active_run.folder / "manifest.json").read_text())
    assert [e["by"] for e in manifest["edits"]] == ["together:poet"]
