"""SVG snapshots of the main screen at each stage, at 80x24 and 120x40.

Measured durations and the run folder's timestamped name would change every run, so the
snapshots normalise them: times are set to 1.0 s and the folder is always runs/run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from critifusion_tui.engine.store import RunStore
from critifusion_tui.tui.app import DONE, REFINE_GATE, TAGS_GATE
from critifusion_tui.tui.widgets.candidate_pane import CandidatePane
from critifusion_tui.tui.widgets.stage_rail import StageRail
from tests.tui.test_app import app_settings, make_app, settled, until

SIZES = [(80, 24), (120, 40)]
STOPS = {
    "prompt": [],
    "tags-gate": [TAGS_GATE],
    "refine-gate": [TAGS_GATE, REFINE_GATE],
    "done": [TAGS_GATE, REFINE_GATE, DONE],
}


@pytest.fixture
def fixed_run_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        RunStore, "_fresh_folder", staticmethod(lambda output_dir, now, prompt: Path(output_dir) / "run")
    )


def normalise(app) -> None:
    rail = app.query_one(StageRail)
    # A focused text area's cursor blinks: on or off at the moment of the shot. The rail
    # holds focus for the picture instead.
    rail.focus()
    for stage in ("prompt", "tags", "components", "base", "critique", "refine"):
        if rail.state(stage) == "done":
            rail.set_state(stage, "done", seconds=1.0)
    for pane in app.query(CandidatePane):
        pane.finish(pane.text, pane.error, 1.0)
        pane.action_scroll_answer("home")  # streamed answers end wherever the last delta left them


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("stop", list(STOPS))
def test_main_screen(snap_compare, fixed_run_folder, stop, size):
    app = make_app(app_settings(Path("."), output={"dir": "runs"}))

    async def drive(pilot):
        for phase in STOPS[stop]:
            await pilot.press("ctrl+r")
            await until(pilot, settled(app, phase))
        # The gate scrolls its editor into view after a refresh: let that settle first.
        await pilot.pause(0.5)
        await pilot.wait_for_scheduled_animations()
        normalise(app)
        await pilot.pause(0.2)
        # Heights settled after normalising; put the gate's editor at the top once more.
        editor = {"tags-gate": "#positive"}.get(stop)
        if stop == "refine-gate":
            # The refine gate is shot from the top of its view: the base image the critics saw
            # beside their critique. (Scrolled to its editor, the thumb's row varied between
            # runs by one cell at 80x24, about one run in three.)
            view = app.query_one("#views").visible_content
            for _ in range(3):
                view.scroll_home(animate=False, immediate=True)
                await pilot.wait_for_scheduled_animations()
                await pilot.pause(0.2)
        if editor:
            view = app.query_one("#views").visible_content
            # Until the scroll position holds still: on a loaded machine a late layout pass
            # (or the gate's own delayed scroll) can move it (only the scrollbar's thumb
            # differed when it did).
            last = None
            for _ in range(20):
                view.scroll_to_widget(app.query_one(editor), top=True, animate=False, immediate=True)
                await pilot.wait_for_scheduled_animations()
                await pilot.pause(0.2)
                now = (view.scroll_y, view.max_scroll_y, view.virtual_size)
                if now == last:
                    break
                last = now

    assert snap_compare(app, terminal_size=size, run_before=drive)
