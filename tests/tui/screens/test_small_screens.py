"""The log, help and confirmation screens: what they show, which keys work, what they return."""

from __future__ import annotations

from datetime import datetime

import pytest
from textual.widgets import DataTable

from critifusion_tui.tui.screens.confirm import ConfirmScreen
from critifusion_tui.tui.screens.help import HelpScreen
from critifusion_tui.tui.screens.log import LogScreen
from critifusion_tui.tui.widgets.log_view import LogBuffer, LogView
from tests.tui.screens.host import Host, plain, static_text

T = datetime(2026, 3, 1, 9, 30, 0).timestamp()
ENTRIES = [
    (T, "info", "run", "started [bold]a fox[/]"),
    (T + 1, "warning", "tags", "together:x failed: 429 \x1b[31mslow down"),
    (T + 2, "error", "base", "CUDA out of memory"),
    (T + 3, "debug", "router", "retry 1"),
    (T + 4, "warn", "critique", "no rating"),
]


def log_lines(screen: LogScreen) -> list[str]:
    view = screen.query_one("#log-view", LogView)
    return ["".join(segment.text for segment in strip).rstrip() for strip in view.lines]


async def test_log_shows_every_entry_as_plain_text_then_filters():
    screen = LogScreen(ENTRIES)
    app = Host(screen)
    async with app.run_test(size=(80, 24)) as pilot:
        lines = log_lines(screen)
        assert lines[0] == "09:30:00 INFO  run started [bold]a fox[/]"
        assert lines[1] == "09:30:01 WARN  tags together:x failed: 429 slow down"  # no escape code
        assert len(lines) == 5
        assert static_text(screen, "#log-filter").startswith("All entries (5)")
        await pilot.press("2")
        assert [line[9:14].strip() for line in log_lines(screen)] == ["WARN", "ERROR", "WARN"]
        assert static_text(screen, "#log-filter").startswith("Warnings and errors (3 of 5)")
        await pilot.press("1")
        assert len(log_lines(screen)) == 5
        await pilot.press("escape")
        await pilot.pause()
    assert app.results == [None]


async def test_log_shows_the_ledger_on_3_as_plain_text_and_follows_it():
    from critifusion_tui.engine.ledger import summarize, summary_lines

    calls = [
        {
            "model": "together:[bold]x",
            "role": "candidate",
            "tokens_in": 120,
            "tokens_out": 30,
            "seconds": 1.5,
            "retries": 1,
            "throttled": 1,
            "error": None,
            "source": "provider",
            "usage": "reported",
        },
    ]
    screen = LogScreen(ENTRIES, ledger=lambda: summary_lines(summarize(calls)))
    app = Host(screen)
    async with app.run_test(size=(160, 24)) as pilot:
        await pilot.press("3")
        shown = " ".join(log_lines(screen))  # long lines wrap
        assert shown.startswith(
            "together:[bold]x as candidate: 1 call, 120 tokens in, 30 out, 1.5 s (1 retried, 1 throttled (429))"
        )
        assert "total: 1 call, 120 tokens in" in shown
        assert static_text(screen, "#log-filter").startswith("Ledger")
        calls.append({**calls[0], "role": "aggregator", "tokens_in": 10, "source": "cache"})
        for _ in range(40):  # polled twice a second, as the entries are
            if "as aggregator" in " ".join(log_lines(screen)):
                break
            await pilot.pause(0.05)
        assert "1 from cache/replay" in " ".join(log_lines(screen))
        await pilot.press("1")
        assert len(log_lines(screen)) == 5


async def test_log_reads_the_apps_buffer_and_closes_on_ctrl_l():
    buffer = LogBuffer()
    buffer.add("info", "run", "first")
    screen = LogScreen(buffer)
    app = Host(screen)
    async with app.run_test(size=(80, 24)) as pilot:

        async def until(predicate, timeout=10.0):  # the screen polls its buffer twice a second
            for _ in range(int(timeout / 0.05)):
                if predicate():
                    return
                await pilot.pause(0.05)
            raise AssertionError("the log never showed the new entries")

        assert len(log_lines(screen)) == 1
        buffer.add("error", "refine", "later")  # arrives while the log is open
        await until(lambda: len(log_lines(screen)) == 2)
        assert log_lines(screen)[1].endswith("ERROR refine later")
        assert static_text(screen, "#log-filter").startswith("All entries (2)")
        await pilot.press("2")
        assert log_lines(screen) == [log_lines(screen)[0]]
        assert log_lines(screen)[0].endswith("ERROR refine later")
        buffer.add("info", "refine", "not shown under the filter")
        buffer.add("warning", "refine", "shown")
        await until(lambda: len(log_lines(screen)) == 2 and log_lines(screen)[1].endswith("shown"))
        assert [line[-5:] for line in log_lines(screen)] == ["later", "shown"]
        assert static_text(screen, "#log-filter").startswith("Warnings and errors (2 of 4)")
        await pilot.press("ctrl+l")
        await pilot.pause()
    assert app.results == [None]


async def test_log_without_warnings_says_so():
    screen = LogScreen(iter([(T, "info", "run", "all good")]))
    async with Host(screen).run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        assert log_lines(screen) == ["No warnings or errors."]


async def test_help_shows_text_and_keys_and_closes():
    keys = [("ctrl+r", "Run / continue", "run.advance"), ("f1", "Help", "app.help")]
    screen = HelpScreen("PromptEditor", "Edit the [b]prompt[/b].\nctrl+r runs it.", keys)
    app = Host(screen)
    async with app.run_test(size=(80, 24)) as pilot:
        assert static_text(screen, "#help-text") == "Edit the [b]prompt[/b].\nctrl+r runs it."
        assert "Help: PromptEditor" in plain(screen.query_one("#help-dialog").border_title)
        table = screen.query_one("#help-keys", DataTable)
        assert [[plain(c) for c in table.get_row_at(i)] for i in range(table.row_count)] == [
            ["ctrl+r", "Run / continue", "run.advance"],
            ["f1", "Help", "app.help"],
        ]
        await pilot.press("f1")
        await pilot.pause()
    assert app.results == [None]


async def test_help_closes_on_escape():
    app = Host(HelpScreen("App", "", []))
    async with app.run_test(size=(80, 24)) as pilot:
        assert "No help text" in static_text(app.screen, "#help-text")
        await pilot.press("escape")
        await pilot.pause()
    assert app.results == [None]


@pytest.mark.parametrize(("key", "answer"), [("y", True), ("enter", True), ("n", False), ("escape", False)])
async def test_confirm_answers(key: str, answer: bool):
    screen = ConfirmScreen("A stage is running. Quit [b]anyway[/b]?")
    app = Host(screen)
    async with app.run_test(size=(80, 24)) as pilot:
        assert static_text(screen, "#confirm-question") == "A stage is running. Quit [b]anyway[/b]?"
        assert "Quit [y]" in plain(screen.query_one("#confirm-yes").label)
        assert "Stay [n]" in plain(screen.query_one("#confirm-no").label)
        await pilot.press(key)
        await pilot.pause()
    assert app.results == [answer]


async def test_confirm_custom_labels():
    screen = ConfirmScreen("Discard the edits?", yes="Discard", no="Keep")
    app = Host(screen)
    async with app.run_test(size=(80, 24)) as pilot:
        assert "Discard [y]" in plain(screen.query_one("#confirm-yes").label)
        await pilot.press("n")
        await pilot.pause()
    assert app.results == [False]


def test_every_binding_has_an_id_and_description():
    for screen in (LogScreen, HelpScreen, ConfirmScreen):
        for binding in screen.BINDINGS:
            assert binding.id and binding.description, (screen, binding)


LONG_ENTRIES = [
    (
        T + i,
        "info",
        "together:Qwen/Qwen2.5-72B",
        f"line {i}: " + "the quick brown fox jumps over the lazy dog " * 3 + f"END{i}",
    )
    for i in range(30)
]


def assert_nothing_under_the_scrollbar(view: LogView) -> None:
    room = view.scrollable_content_region.width
    assert room == view.size.width - view.styles.scrollbar_size_vertical  # the scrollbar's room kept
    assert max(strip.cell_length for strip in view.lines) <= room
    assert view.max_scroll_x == 0  # nothing to scroll sideways to: every character is in view
    shown = " ".join(" ".join("".join(s.text for s in strip) for strip in view.lines).split())
    for _, _, source, text in LONG_ENTRIES:
        assert f"{source} {text}" in shown  # wrapped, not cut


async def test_log_lines_wrap_before_the_scrollbar_at_80_columns_and_after_a_resize():
    screen = LogScreen(LONG_ENTRIES)
    app = Host(screen)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        view = screen.query_one("#log-view", LogView)
        assert view.scrollable_content_region.width == 76  # 80 less the border and the scrollbar
        assert_nothing_under_the_scrollbar(view)
        await pilot.resize_terminal(140, 40)  # the wide layout: 94% of 140 columns
        await pilot.pause()
        assert view.scrollable_content_region.width > 100
        assert_nothing_under_the_scrollbar(view)
        assert any(strip.cell_length > 80 for strip in view.lines)  # wrapped again, wider
        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        assert_nothing_under_the_scrollbar(view)
        assert view.is_vertical_scroll_end  # still following the newest entry


async def test_lines_written_before_the_scrollbar_appears_fit_beside_it():
    buffer = LogBuffer()
    screen = LogScreen(buffer)
    app = Host(screen)
    async with app.run_test(size=(80, 24)) as pilot:
        buffer.add("info", "run", "a first line, long enough to reach the right edge of the log at eighty columns")
        await pilot.pause(0.7)  # the screen polls its source twice a second
        view = screen.query_one("#log-view", LogView)
        assert view.max_scroll_y == 0  # one entry: no scrollbar yet
        for i in range(40):
            buffer.add("info", "run", f"entry {i} " + "word " * 20)
        await pilot.pause(0.7)
        assert view.max_scroll_y > 0
        room = view.scrollable_content_region.width
        assert max(strip.cell_length for strip in view.lines) <= room
        assert view.max_scroll_x == 0


async def test_the_log_shows_that_it_has_the_keys():
    from textual.color import Color

    screen = LogScreen(ENTRIES)
    app = Host(screen)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert isinstance(app.focused, LogView)
        accent = Color.parse(app.get_css_variables()["accent"]).rgb
        assert screen.query_one("#log-dialog").styles.border_top[1].rgb == accent
