"""Diffusion progress: hidden while idle, then stage, bar, steps, speed and ETA."""

from __future__ import annotations

from textual.app import App, ComposeResult
from textual.widgets import Static

from critifusion_tui.tui.widgets.diffusion_progress import (
    DiffusionProgress,
    format_duration,
    progress_text,
)
from tests.tui.conftest import screen_text


class ProgressApp(App):
    def compose(self) -> ComposeResult:
        yield DiffusionProgress(id="progress")
        yield Static("below", id="below")


async def test_idle_progress_is_hidden():
    app = ProgressApp()
    async with app.run_test(size=(80, 24)):
        progress = app.query_one(DiffusionProgress)
        assert progress.idle and not progress.display
        assert screen_text(app).splitlines()[0].strip() == "below"


async def test_a_step_shows_stage_bar_steps_speed_and_eta():
    app = ProgressApp()
    async with app.run_test(size=(80, 24)) as pilot:
        progress = app.query_one(DiffusionProgress)
        progress.update_step("base", 12, 50, 12 / 3.1)
        await pilot.pause()
        assert not progress.idle and progress.display
        assert progress.status_text == "12/50 · 3.10 steps/s · ETA 12 s"
        assert (progress.bar.progress, progress.bar.total) == (12, 50)
        first = screen_text(app).splitlines()[0]
        assert first.lstrip().startswith("base ")
        assert first.rstrip().endswith("12/50 · 3.10 steps/s · ETA 12 s")
        assert "━" in first  # the bar sits between them
        assert screen_text(app).splitlines()[1].strip() == "below"


async def test_slow_steps_finished_pass_and_reset():
    app = ProgressApp()
    async with app.run_test(size=(80, 24)) as pilot:
        progress = app.query_one(DiffusionProgress)
        progress.update_step("refine", 3, 30, 6.0)
        await pilot.pause()
        assert "3/30 · 2.00 s/step · ETA 54 s" in screen_text(app)
        progress.update_step("refine", 30, 30, 60.5)
        await pilot.pause()
        assert "30/30 · 2.02 s/step · done in 1 min 00 s" in screen_text(app)
        progress.reset("cancelled")
        await pilot.pause()
        assert not progress.idle
        first = screen_text(app).splitlines()[0]
        assert "cancelled" in first and "━" not in first
        progress.reset()
        await pilot.pause()
        assert progress.idle and not progress.display


def test_progress_text_and_durations():
    assert progress_text(0, 50, 0.0) == "0/50"
    assert progress_text(1, 50, 0.5) == "1/50 · 2.00 steps/s · ETA 24 s"
    assert progress_text(10, 50, 100.0) == "10/50 · 10.00 s/step · ETA 6 min 40 s"
    assert [format_duration(s) for s in (0.4, 59.4, 60, 3725)] == [
        "0 s", "59 s", "1 min 00 s", "62 min 05 s",
    ]  # fmt: skip
    assert DiffusionProgress.HELP
