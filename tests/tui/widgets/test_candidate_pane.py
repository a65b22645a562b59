"""A candidate pane: model title, streamed text, final text, errors in place, r/u messages."""

from __future__ import annotations

import pytest
from textual.app import App, ComposeResult
from textual.widgets import Input
from textual.color import Color
from textual.containers import VerticalScroll
from textual.widgets import Static

from critifusion_tui.tui.widgets.candidate_pane import AnswerText, CandidatePane
from tests.tui.conftest import screen_text as full_screen_text
from tests.tui.widgets._support import FakeClock

MODEL = "together:Qwen/Qwen2.5-72B-Instruct-Turbo"


class PaneApp(App):
    def __init__(self, clock: FakeClock, model: str = MODEL) -> None:
        super().__init__()
        self.clock = clock
        self.model = model
        self.messages: list[tuple[str, str, str, str]] = []
        self.bells = 0

    def compose(self) -> ComposeResult:
        yield CandidatePane("tags", "candidate", self.model, clock=self.clock, id="pane")

    def on_candidate_pane_retry(self, message: CandidatePane.Retry) -> None:
        self.messages.append(("retry", message.stage, message.role, message.model))

    def on_candidate_pane_use_answer(self, message: CandidatePane.UseAnswer) -> None:
        self.messages.append(("use", message.stage, message.role, message.model))

    def bell(self) -> None:
        self.bells += 1


# The pane is these apps' one focus stop, so it is drawn focused (heavy lines); the tests of
# what it says read the border as light lines, and the focus is tested on its own below.
_LIGHT = str.maketrans("┏┓┗┛━┃", "╭╮╰╯─│")


def screen_text(app: App) -> str:
    return full_screen_text(app).translate(_LIGHT)


def border_lines(app: App) -> tuple[str, str]:
    lines = screen_text(app).splitlines()
    return lines[0], lines[-1]


async def test_title_is_the_model_and_subtitle_the_state():
    clock = FakeClock()
    app = PaneApp(clock)
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.query_one(CandidatePane)
        top, bottom = border_lines(app)
        assert f"─ {MODEL} ─" in top
        assert bottom.rstrip().endswith("─ waiting ─╯")
        assert (pane.stage, pane.role, pane.model, pane.state) == (
            "tags", "candidate", MODEL, "waiting",
        )  # fmt: skip
        pane.start()
        clock.advance(1.23)
        await pilot.pause(0.4)  # the pane's own timer redraws the time
        assert "─ answering 1.2 s ─╯" in border_lines(app)[1]
        assert pane.state == "answering"


async def test_model_ref_with_brackets_is_not_markup():
    app = PaneApp(FakeClock(), model="ollama:[bold]llava[/]:7b")
    async with app.run_test(size=(80, 24)):
        assert "─ ollama:[bold]llava[/]:7b ─" in border_lines(app)[0]


async def test_streamed_deltas_accumulate_in_one_widget_as_plain_text():
    app = PaneApp(FakeClock())
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.query_one(CandidatePane)
        widgets_before = len(list(pane.walk_children()))
        pane.start()
        for delta in ["red fox, ", "[bold]snow[/], ", "\x1b[31mforest", ", dusk"]:
            pane.append(delta)
        for i in range(300):
            pane.append(f" w{i}")
        await pilot.pause()
        assert len(list(pane.walk_children())) == widgets_before
        assert len(pane.query(AnswerText)) == 1
        assert pane.text.startswith("red fox, [bold]snow[/], \x1b[31mforest, dusk w0 w1")
        assert pane.text.endswith(" w299")
        pane.action_scroll_answer("home")
        await pilot.pause()
        text = screen_text(app)
        assert "red fox, [bold]snow[/], forest, dusk w0 w1" in text  # escape gone, markup literal
        assert "\x1b" not in text


async def test_streaming_keeps_the_end_in_view():
    app = PaneApp(FakeClock())
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.query_one(CandidatePane)
        for batch in range(3):  # deltas arrive while frames are drawn in between
            for i in range(20 * batch, 20 * batch + 20):
                pane.append(f"line {i}\n")
            await pilot.pause()
        await pilot.pause()
        body = pane.query_one(VerticalScroll)
        assert body.max_scroll_y > 0
        assert body.scroll_y == body.max_scroll_y
        assert "line 59" in screen_text(app)


async def test_finish_replaces_the_streamed_text():
    app = PaneApp(FakeClock())
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.query_one(CandidatePane)
        pane.append("partial stre")
        pane.finish("red fox, snow, forest", None, 3.44)
        await pilot.pause()
        text = screen_text(app)
        assert "red fox, snow, forest" in text
        assert "partial" not in text
        assert "─ done 3.4 s · r retry · u use ─╯" in border_lines(app)[1]
        assert (pane.state, pane.text, pane.error) == ("done", "red fox, snow, forest", None)


async def test_the_panes_keys_are_told_in_its_bottom_line_only_while_it_has_the_focus():
    # Not in the footer: with the app's keys, a pane's two would push Help past 80 columns.
    app = PaneApp(FakeClock())
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.query_one(CandidatePane)
        pane.finish("red fox", None, 1.0)
        await pilot.pause()
        assert str(pane.border_subtitle) == "done 1.0 s · r retry · u use"
        assert not {"retry", "use_answer"} & {key.action for key in app.screen.query("FooterKey")}
        elsewhere = Input()
        await app.mount(elsewhere)
        elsewhere.focus()
        await pilot.pause()
        assert str(pane.border_subtitle) == "done 1.0 s"
        pane.focus()
        pane.finish("", "HTTP 500", 2.0)
        await pilot.pause()
        assert str(pane.border_subtitle) == "failed 2.0 s · r retry"  # nothing to use
        await pilot.press("r")
        assert app.messages[-1][0] == "retry"


async def test_error_is_shown_in_place_in_the_error_colour_with_the_text_kept():
    app = PaneApp(FakeClock())
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.query_one(CandidatePane)
        pane.append("red fox, sn")
        pane.finish("red fox, sn", "timed out after 30 s [retry 2/2]", 30.04)
        await pilot.pause()
        lines = screen_text(app).splitlines()
        assert lines[1].startswith("│ red fox, sn ")
        assert lines[3].startswith("│ ✗ timed out after 30 s [retry 2/2] ")
        assert "─ failed 30.0 s · r retry ─╯" in lines[-1]
        assert pane.state == "failed" and pane.error == "timed out after 30 s [retry 2/2]"
        error_view = pane.query_one(".candidate-pane--error", Static)
        assert error_view.styles.color == Color.parse(app.get_css_variables()["error"])


async def test_notes_of_the_answer_check_are_shown_under_a_used_answer():
    app = PaneApp(FakeClock())
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.query_one(CandidatePane)
        pane.finish("red fox, [b]snow[/b]", None, 1.0, ("1 sentence dropped (not tags)", "2 tags (asked for 16 to 26)"))
        await pilot.pause()
        lines = screen_text(app).splitlines()
        assert lines[1].startswith("│ red fox, [b]snow[/b] ")
        assert lines[2].startswith("│ ! 1 sentence dropped (not tags); 2 tags (asked for 16 to 26) ")
        assert pane.state == "done"  # flagged, still usable
        pane.reset()
        await pilot.pause()
        assert "sentence dropped" not in screen_text(app)


async def test_an_unusable_answer_shows_its_text_and_the_reason():
    app = PaneApp(FakeClock())
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.query_one(CandidatePane)
        reason = 'together:x: unusable answer: it repeats our instructions ("put the subject phrase first")'
        pane.finish("Put the subject phrase first, cat", reason, 1.0)
        await pilot.pause()
        text = screen_text(app)
        assert "Put the subject phrase first, cat" in text and "✗ together:x: unusable answer" in text
        assert pane.state == "failed"


async def test_error_without_text_takes_the_first_line():
    app = PaneApp(FakeClock())
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.query_one(CandidatePane)
        pane.start()
        pane.finish("", "HTTP 401: check TOGETHER_API_KEY", 0.21)
        await pilot.pause()
        lines = screen_text(app).splitlines()
        assert lines[1].startswith("│ ✗ HTTP 401: check TOGETHER_API_KEY ")
        assert "─ failed 0.2 s · r retry ─╯" in lines[-1]


async def test_r_posts_retry_and_u_posts_use_answer_when_done():
    app = PaneApp(FakeClock())
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.query_one(CandidatePane)
        assert pane.has_focus
        pane.finish("red fox", None, 1.0)
        await pilot.press("r", "u")
        await pilot.pause()
        assert app.messages == [
            ("retry", "tags", "candidate", MODEL),
            ("use", "tags", "candidate", MODEL),
        ]
        assert app.bells == 0


async def test_u_rings_the_bell_unless_done_without_error():
    app = PaneApp(FakeClock())
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.query_one(CandidatePane)
        await pilot.press("u")  # waiting
        pane.start()
        pane.append("red")
        await pilot.press("u")  # answering
        pane.finish("red", "connection reset", 2.0)
        await pilot.press("u")  # failed
        await pilot.press("r")  # retry is always allowed
        await pilot.pause()
        assert app.bells == 3
        assert app.messages == [("retry", "tags", "candidate", MODEL)]


async def test_reset_goes_back_to_waiting():
    app = PaneApp(FakeClock())
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.query_one(CandidatePane)
        pane.finish("old answer", "boom", 1.0)
        pane.reset()
        await pilot.pause()
        text = screen_text(app)
        assert "old answer" not in text and "boom" not in text
        assert (pane.state, pane.text, pane.error) == ("waiting", "", None)
        assert "─ waiting ─╯" in border_lines(app)[1]


async def test_cancel_while_waiting_says_cancelled_dim_not_failed():
    clock = FakeClock()
    app = PaneApp(clock)
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.query_one(CandidatePane)
        assert pane.cancel() is True
        await pilot.pause()
        assert (pane.state, pane.text, pane.error, pane.seconds) == ("cancelled", "", None, None)
        assert pane.has_class("-cancelled") and not pane.has_class("-failed")
        assert "─ cancelled · r retry ─╯" in border_lines(app)[1]
        assert "cancelled before an answer" in screen_text(app)
        # Dim, not red: the border and the subtitle are not the error colour.
        error = app.get_css_variables()["error"]
        assert pane.styles.border_bottom[1] != Color.parse(error)
        assert pane.styles.border_subtitle_color != Color.parse(error)
        await pilot.press("u")  # a cancelled pane has no answer to use
        await pilot.pause()
        assert app.bells == 1 and app.messages == []


async def test_cancel_while_answering_stops_the_clock_and_keeps_the_partial_answer():
    clock = FakeClock()
    app = PaneApp(clock)
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.query_one(CandidatePane)
        pane.start()
        pane.append("red fox, snow")
        clock.advance(2.04)
        pane.cancel()
        clock.advance(10.0)
        await pilot.pause(0.6)  # two ticks of the pane's timer: the time does not move on
        assert (pane.state, pane.text) == ("cancelled", "red fox, snow")
        assert pane.seconds == pytest.approx(2.04)
        assert "─ cancelled 2.0 s · r retry ─╯" in border_lines(app)[1]
        # r asks the model again: the pane starts over.
        await pilot.press("r")
        pane.start()
        assert pane.state == "answering" and pane.text == ""


async def test_cancel_leaves_a_finished_pane_as_it_is():
    app = PaneApp(FakeClock())
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.query_one(CandidatePane)
        pane.finish("red fox", None, 1.0)
        assert pane.cancel() is False
        pane2 = CandidatePane("tags", "candidate", "rules", id="two")
        await app.mount(pane2)
        pane2.finish("", "boom", 0.5)
        assert pane2.cancel() is False
        await pilot.pause()
        assert (pane.state, pane2.state) == ("done", "failed")


async def test_keys_scroll_a_long_answer():
    app = PaneApp(FakeClock())
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.query_one(CandidatePane)
        pane.finish("\n".join(f"line {i}" for i in range(100)), None, 1.0)
        await pilot.pause()
        body = pane.query_one(VerticalScroll)
        await pilot.press("home")
        assert body.scroll_y == 0
        assert "line 0" in screen_text(app)
        await pilot.press("down", "down")
        assert body.scroll_y == 2
        await pilot.press("pagedown")
        assert body.scroll_y > 2
        await pilot.press("end")
        await pilot.pause()
        assert body.scroll_y == body.max_scroll_y
        assert "line 99" in screen_text(app)


async def test_reading_higher_up_is_not_interrupted_by_new_text():
    app = PaneApp(FakeClock())
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.query_one(CandidatePane)
        pane.append("".join(f"line {i}\n" for i in range(50)))
        await pilot.pause()
        body = pane.query_one(VerticalScroll)
        assert body.scroll_y == body.max_scroll_y > 0
        await pilot.press("home")
        pane.append("".join(f"more {i}\n" for i in range(10)))
        await pilot.pause()
        assert body.scroll_y == 0 and "line 0" in screen_text(app)
        await pilot.press("end")  # back at the end: follows the stream again
        pane.append("".join(f"last {i}\n" for i in range(10)))
        await pilot.pause()
        assert body.scroll_y == body.max_scroll_y
        assert "last 9" in screen_text(app)


def test_every_binding_has_an_id_and_tooltip():
    for binding in CandidatePane.BINDINGS:
        assert binding.id and binding.description and binding.tooltip
    assert CandidatePane.HELP


async def test_focus_draws_heavy_lines_in_the_accent_or_the_error_colour():
    app = PaneApp(FakeClock())
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.query_one(CandidatePane)
        accent = Color.parse(app.get_css_variables()["accent"]).rgb
        error = Color.parse(app.get_css_variables()["error"]).rgb
        for finish, mark in ((("red fox", None, 1.0), accent), (("", "boom", 1.0), error)):
            pane.finish(*finish)
            pane.focus()
            await pilot.pause()
            top = full_screen_text(app).splitlines()[0]
            assert top.startswith("┏━") and pane.styles.border_top[1].rgb == mark
            app.set_focus(None)
            await pilot.pause()
            top = full_screen_text(app).splitlines()[0]
            assert top.startswith("╭─")  # blurred: round, light lines (a failed pane's stay red)
            if mark == accent:
                assert pane.styles.border_top[1].rgb != accent
