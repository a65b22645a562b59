"""Focus, as a keyboard-only user over SSH sees it: tab stops only where keys act, and every
stop drawn so it is plain which one has focus (an edge in the accent colour; a failed pane's
heavy red border), at 80x24 in every phase of a run. Also the header: ASCII only."""

from __future__ import annotations

import time

from textual.color import Color
from textual.widget import Widget
from textual.widgets import Header, Input, TextArea

from critifusion_tui.config import Settings
from critifusion_tui.tui.app import DONE, REFINE_GATE, TAGS_GATE
from critifusion_tui.tui.widgets.candidate_pane import CandidatePane
from critifusion_tui.tui.widgets.stage_rail import StageRail
from tests.tui.conftest import screen_text
from tests.tui.test_app import app_settings, make_app, settled, until

# What may take focus on the main screen: each acts on keys of its own.
KEY_WIDGETS = (Input, TextArea, StageRail, CandidatePane)
EDGES = (
    "border_top",
    "border_right",
    "border_bottom",
    "border_left",
    "outline_top",
    "outline_right",
    "outline_bottom",
    "outline_left",
)


def edges(widget: Widget) -> set[tuple[str, str, tuple[int, int, int]]]:
    """The drawn edges of `widget`: (side, line kind, colour without alpha)."""
    found = set()
    for side in EDGES:
        kind, colour = getattr(widget.styles, side)
        if kind not in ("", "none", "hidden", "blank"):
            found.add((side, kind, colour.rgb))
    return found


def colour(app, name: str) -> tuple[int, int, int]:
    return Color.parse(app.get_css_variables()[name]).rgb


async def tab_stops(app, pilot, limit: int = 16) -> list[Widget]:
    """The widgets tab visits, once round."""
    stops: list[Widget] = []
    for _ in range(limit):
        await pilot.press("tab")
        await pilot.pause()
        if app.focused in stops:
            break
        stops.append(app.focused)
    return stops


async def until_on_screen(app, pilot, widget: Widget, seconds: float = 5.0) -> None:
    """Focusing scrolls the widget into view on a later refresh, which one pause does not
    always reach on a loaded machine (CI saw a pane still 3 rows above the screen)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await pilot.pause()
        if widget.region.area and app.screen.region.contains_region(widget.region):
            return


async def check_stops(app, pilot, phase: str) -> list[Widget]:
    stops = await tab_stops(app, pilot)
    assert stops, phase
    accent, error = colour(app, "accent"), colour(app, "error")
    for widget in stops:
        name = f"{phase}: {type(widget).__name__}#{widget.id}"
        assert isinstance(widget, KEY_WIDGETS), name  # not a view that only scrolls
        widget.focus()
        await until_on_screen(app, pilot, widget)
        assert widget.region.area and app.screen.region.contains_region(widget.region), name  # on screen
        focused = edges(widget)
        app.set_focus(None)
        await pilot.pause()
        blurred = edges(widget)
        mark = error if getattr(widget, "state", "") == "failed" else accent
        # Focused, an edge is in the mark colour, drawn differently from the blurred look.
        assert any(rgb == mark for _, _, rgb in focused - blurred), (name, focused, blurred)
    return stops


async def test_every_tab_stop_acts_on_keys_and_shows_its_focus_at_80x24(tmp_path, server, settings):
    server.script("flaky", status=500, times=2)  # its tags and its components requests fail
    data = app_settings(tmp_path).model_dump()
    data["providers"] = settings.providers.model_dump()
    data["criticore"]["candidates"] = ["together:steady", "together:flaky"]
    app = make_app(Settings.model_validate(data))
    async with app.run_test(size=(80, 24)) as pilot:
        stops = await check_stops(app, pilot, "prompt")
        assert {type(w) for w in stops} == {Input, StageRail}

        await pilot.press("ctrl+r")
        await until(pilot, settled(app, TAGS_GATE))
        stops = await check_stops(app, pilot, "tags gate")
        panes = [w for w in stops if isinstance(w, CandidatePane)]
        assert {(p.model, p.state) for p in panes} >= {("together:steady", "done"), ("together:flaky", "failed")}
        assert sum(isinstance(w, TextArea) for w in stops) == 2  # positive and negative

        await pilot.press("ctrl+r")
        await until(pilot, settled(app, REFINE_GATE))
        await check_stops(app, pilot, "refine gate")
        await pilot.press("ctrl+r")
        await until(pilot, settled(app, DONE))
        await check_stops(app, pilot, "done")


async def test_a_focused_failed_pane_stands_out_from_a_blurred_one(tmp_path, server, settings):
    server.script("flaky", status=500, times=2)
    data = app_settings(tmp_path).model_dump()
    data["providers"] = settings.providers.model_dump()
    data["criticore"]["candidates"] = ["together:steady", "together:flaky"]
    app = make_app(Settings.model_validate(data))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+r")
        await until(pilot, settled(app, TAGS_GATE))
        flaky = next(p for p in app.query(CandidatePane) if p.stage == "tags" and p.model == "together:flaky")
        assert flaky.state == "failed"
        app.set_focus(None)
        await pilot.pause()
        blurred = flaky.styles.border_top
        flaky.focus()
        await pilot.pause()
        focused = flaky.styles.border_top
        # A different line (round to heavy), not only a brighter red: shows with few colours too.
        assert (blurred[0], focused[0]) == ("round", "heavy")
        assert focused[1].rgb == colour(app, "error")
        top = next(line for line in screen_text(app).splitlines() if "together:flaky" in line)
        assert "┏" in top and "╭" not in top.split("together:flaky")[0][-3:]


async def test_the_header_is_ascii(tmp_path):
    app = make_app(app_settings(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        header = app.query_one(Header)
        assert header.icon.isascii()
        first_row = screen_text(app).splitlines()[0]
        assert first_row.isascii() and "critifusion" in first_row
