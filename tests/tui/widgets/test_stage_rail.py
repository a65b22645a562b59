"""The stage rail: states with glyphs and seconds, a live elapsed timer, keyboard selection."""

from __future__ import annotations

import pytest
from textual.app import App, ComposeResult
from textual.widgets import Input

from critifusion_tui.tui.widgets.stage_rail import STAGES, StageRail, format_seconds
from tests.tui.conftest import screen_text
from tests.tui.widgets._support import FakeClock


class RailApp(App):
    def __init__(self, clock: FakeClock, follow: bool = True, other: bool = False) -> None:
        super().__init__()
        self.clock = clock
        self.follow = follow
        self.other = other
        self.selected: list[str] = []

    def compose(self) -> ComposeResult:
        if self.other:  # something else takes the first focus
            yield Input(id="other")
        yield StageRail(clock=self.clock, follow=self.follow)

    def on_stage_rail_selected(self, message: StageRail.Selected) -> None:
        self.selected.append(message.stage)


def rail_lines(app: App) -> list[str]:
    """The rail's 16 columns of each screen row, right-stripped."""
    return [line[:16].rstrip(" ▕▏").rstrip() for line in screen_text(app).splitlines()]


async def test_all_stages_start_waiting_in_order():
    app = RailApp(FakeClock())
    async with app.run_test(size=(80, 24)):
        rail = app.query_one(StageRail)
        assert rail.outer_size.width == 16  # 15 columns of text and the border
        assert [rail.state(s) for s in STAGES] == ["waiting"] * 7
        lines = rail_lines(app)
        titles = ["Prompt", "Tags", "Components", "Base", "Critique", "Refine", "Done"]
        assert lines[0:14:2] == [f"○ {title}" for title in titles]
        assert lines[1:14:2] == ["  waiting"] * 7


async def test_states_show_glyph_word_and_seconds():
    clock = FakeClock()
    app = RailApp(clock)
    async with app.run_test(size=(80, 24)) as pilot:
        rail = app.query_one(StageRail)
        rail.set_state("prompt", "done", seconds=0.04)
        rail.set_state("tags", "done", seconds=3.41)
        rail.set_state("components", "failed", seconds=0.2, detail="all 3 candidates failed")
        rail.set_state("base", "gate", detail="edit the tags, then go on")
        rail.set_state("critique", "running", seconds=12.25)
        rail.set_state("refine", "skipped")
        await pilot.pause()
        lines = rail_lines(app)
        assert lines[:14] == [
            "✓ Prompt", "  done 0.0s",
            "✓ Tags", "  done 3.4s",
            "✗ Components", "  failed 0.2s",
            "◆ Base", "  gate (you)",
            "▶ Critique", "  running 12.2s",
            "– Refine", "  skipped",
            "○ Done", "  waiting",
        ]  # fmt: skip
        assert rail.state("components") == "failed"
        assert rail.detail("components") == "all 3 candidates failed"


async def test_elapsed_seconds_tick_while_running_and_freeze_when_done():
    clock = FakeClock()
    app = RailApp(clock)
    async with app.run_test(size=(80, 24)) as pilot:
        rail = app.query_one(StageRail)
        rail.set_state("tags", "running")
        await pilot.pause()
        assert rail_lines(app)[3] == "  running 0.0s"
        # Nobody calls the rail again: only its own timer can show the new time.
        clock.advance(2.5)
        await pilot.pause(0.4)
        assert rail_lines(app)[3] == "  running 2.5s"
        assert rail.running

        # Running again (e.g. with a new detail) keeps the clock; so does set_detail.
        rail.set_state("tags", "running", detail="2 of 3 answered")
        rail.set_detail("tags", "3 of 3 answered")
        assert rail.seconds("tags") == pytest.approx(2.5)
        assert rail.detail("tags") == "3 of 3 answered"

        rail.set_state("tags", "done")  # no seconds: the rail's own count is used
        assert rail.seconds("tags") == pytest.approx(2.5)
        clock.advance(10)
        await pilot.pause(0.4)
        assert rail_lines(app)[3] == "  done 2.5s"
        assert not rail.running


async def test_long_running_times_fit_in_sixteen_columns():
    clock = FakeClock()
    app = RailApp(clock)
    async with app.run_test(size=(80, 24)) as pilot:
        rail = app.query_one(StageRail)
        rail.set_state("components", "running", seconds=99.9)
        rail.set_state("critique", "running", seconds=754)
        rail.set_state("refine", "done", seconds=4000)
        await pilot.pause()
        lines = rail_lines(app)
        assert lines[5] == "  running 99.9s"
        assert lines[9] == "  running 754s"
        assert lines[11] == "  done 66m"  # whole minutes
    assert [format_seconds(s) for s in (0.04, 12.34, 99.96, 150, 4000)] == [
        "0.0s", "12.3s", "100s", "150s", "66m",
    ]  # fmt: skip


async def test_detail_of_highlighted_stage_is_shown_as_plain_text():
    app = RailApp(FakeClock(), follow=False)
    async with app.run_test(size=(80, 24)) as pilot:
        rail = app.query_one(StageRail)
        rail.set_state("tags", "failed", seconds=1, detail="[bold]HTTP 500[/] \x1b[31mboom")
        rail.select("tags")
        await pilot.pause()
        text = screen_text(app)
        assert "[bold]HTTP" in text
        assert "\x1b" not in text
        rail.select("prompt")  # its detail is empty
        await pilot.pause()
        assert "HTTP" not in screen_text(app)


async def test_keys_move_the_highlight_and_enter_posts_selected():
    app = RailApp(FakeClock())
    async with app.run_test(size=(80, 24)) as pilot:
        rail = app.query_one(StageRail)
        rail.focus()
        assert rail.selected is None
        await pilot.press("up")  # already at the top: stays
        assert rail.highlighted_stage == "prompt"
        await pilot.press("down", "down", "enter")
        assert rail.highlighted_stage == "components"
        await pilot.press("end", "enter", "k", "enter", "home", "j", "enter")
        await pilot.pause()
        assert app.selected == ["components", "done", "refine", "tags"]
        assert rail.selected == "tags"
        await pilot.press("down")  # moving the highlight does not select
        assert rail.selected == "tags" and rail.highlighted_stage == "components"
        rail.select("refine")
        assert rail.selected == rail.highlighted_stage == "refine"


async def test_follow_highlights_the_active_stage_unless_focused():
    app = RailApp(FakeClock(), other=True)
    async with app.run_test(size=(80, 24)) as pilot:
        rail = app.query_one(StageRail)
        assert not rail.has_focus
        rail.set_state("tags", "running")
        assert rail.highlighted_stage == "tags"
        rail.set_state("base", "gate")
        assert rail.highlighted_stage == "base"
        rail.focus()
        await pilot.pause()
        rail.set_state("refine", "running")
        assert rail.highlighted_stage == "base"
        assert app.selected == []  # following never posts Selected


async def test_unknown_stage_or_state_is_an_error():
    app = RailApp(FakeClock())
    async with app.run_test(size=(80, 24)):
        rail = app.query_one(StageRail)
        with pytest.raises(ValueError, match="unknown stage"):
            rail.set_state("upscale", "running")
        with pytest.raises(ValueError, match="unknown stage state"):
            rail.set_state("tags", "paused")
        with pytest.raises(ValueError):
            rail.select("nope")


def test_every_binding_has_an_id_and_tooltip():
    for binding in StageRail.BINDINGS:
        assert binding.id and binding.description and binding.tooltip
    assert StageRail.HELP
