"""The log: plain text only (markup and escapes stay data), a bounded buffer, level colours."""

from __future__ import annotations

from datetime import datetime

from textual.app import App, ComposeResult

from critifusion_tui.tui.widgets.log_view import LogBuffer, LogEntry, LogView, normalise_level
from tests.tui.conftest import screen_text

WHEN = datetime(2025, 5, 17, 12, 3, 4)


class LogApp(App):
    def __init__(self, view: LogView | None = None) -> None:
        super().__init__()
        self.view = view or LogView(id="log")

    def compose(self) -> ComposeResult:
        yield self.view


def log_text(view: LogView) -> list[str]:
    return [strip.text.rstrip() for strip in view.lines]


async def test_markup_and_escapes_are_shown_as_data():
    app = LogApp()
    async with app.run_test(size=(80, 24)) as pilot:
        view = app.view
        view.add(
            "info",
            "together:Qwen",
            "[bold red]x[/] \x1b[31mred\x1b[0m \x1b]0;title\x07end",
            when=WHEN,
        )
        await pilot.pause()
        assert log_text(view) == ["12:03:04 INFO  together:Qwen [bold red]x[/] red end"]
        assert "[bold red]x[/] red end" in screen_text(app)
        assert "\x1b" not in screen_text(app)
        # No style from the text's brackets reached the screen: "x" is drawn like its neighbours.
        segments = [s for s in view.lines[0] if "[bold red]x[/]" in s.text]
        assert segments and not segments[0].style.bold


async def test_levels_are_coloured_and_labelled():
    app = LogApp()
    async with app.run_test(size=(80, 24)) as pilot:
        view = app.view
        view.add("warn", "refine", "strength clamped to 0.5", when=WHEN)
        view.add("ERROR", "critique", "vlm failed", when=WHEN)
        view.add("debug", "", "step 3", when=WHEN)
        await pilot.pause()
        assert log_text(view) == [
            "12:03:04 WARN  refine strength clamped to 0.5",
            "12:03:04 ERROR critique vlm failed",
            "12:03:04 DEBUG step 3",
        ]
        error_style = view.get_component_rich_style("log-view--error")
        level = next(s for s in view.lines[1] if s.text.startswith("ERROR"))
        assert level.style.color == error_style.color
        assert level.style.color != next(s for s in view.lines[0] if "WARN" in s.text).style.color


async def test_buffer_fills_without_a_view_and_load_shows_it():
    buffer = LogBuffer(max_entries=3)
    for i in range(5):
        buffer.add("info", "run", f"entry {i}", when=WHEN)
    assert len(buffer) == 3
    assert [entry.text for entry in buffer] == ["entry 2", "entry 3", "entry 4"]
    app = LogApp()
    async with app.run_test(size=(80, 24)) as pilot:
        app.view.add("info", "old", "replaced by load", when=WHEN)
        app.view.load(buffer)
        await pilot.pause()
        assert log_text(app.view) == [
            "12:03:04 INFO  run entry 2",
            "12:03:04 INFO  run entry 3",
            "12:03:04 INFO  run entry 4",
        ]


async def test_view_keeps_at_most_max_lines_and_accepts_entries_before_mount():
    view = LogView(max_lines=4, id="log")
    view.add("info", "early", "before mount", when=WHEN)
    app = LogApp(view)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert log_text(view) == ["12:03:04 INFO  early before mount"]
        for i in range(10):
            view.add("info", "run", f"line {i}", when=WHEN)
        await pilot.pause()
        assert log_text(view) == [f"12:03:04 INFO  run line {i}" for i in range(6, 10)]


def test_levels_normalise_and_entries_are_plain_data():
    assert [normalise_level(x) for x in ("warn", "Warning", "err", "critical", "trace")] == [
        "warning", "warning", "error", "error", "info",
    ]  # fmt: skip
    entry = LogBuffer().add("warn", "s", "t", when=WHEN)
    assert entry == LogEntry("warning", "s", "t", WHEN)
    assert LogView.HELP
