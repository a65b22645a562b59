"""One model's part in a stage: its streamed answer, its final text or its error.

The border title is the model reference, the subtitle the state ("waiting", "answering 1.2 s",
"done 3.4 s", "failed 0.2 s", "cancelled" or "cancelled 1.2 s": the stage was cancelled before
this model answered, which is no failure of the model, so it is drawn dim, not red). The answer is model text: it is shown as plain text, never as
markup, without terminal control. Streaming is cheap: `append` adds the delta to a list and
marks one widget for repaint; the text is joined and drawn once per frame however many deltas
came in between.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.text import Text
from textual.app import ComposeResult, RenderResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import Static

from critifusion_tui.tui.widgets._safe import safe_str, safe_text

__all__ = ["PANE_STATES", "AnswerText", "CandidatePane", "format_pane_seconds"]

PANE_STATES = ("waiting", "answering", "done", "failed", "cancelled")
_TICK_S = 0.25


# What a pane says of an answer that came without a request.
ORIGIN_LABELS = {"cache": "from the cache", "replay": "replayed"}


def format_pane_seconds(seconds: float) -> str:
    """ "0.2 s", "12.3 s", "125 s"."""
    seconds = max(0.0, seconds)
    return f"{seconds:.1f} s" if seconds < 99.95 else f"{seconds:.0f} s"


class AnswerText(Widget):
    """The answer text: a list of pieces, joined and made safe when drawn."""

    DEFAULT_CSS = """
    AnswerText { height: auto; width: 1fr; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._pieces: list[str] = []
        self._placeholder = ""

    @property
    def text(self) -> str:
        if len(self._pieces) > 1:
            self._pieces[:] = ["".join(self._pieces)]
        return self._pieces[0] if self._pieces else ""

    def set_text(self, text: str) -> None:
        self._pieces[:] = [text] if text else []
        self._changed()

    def append(self, delta: str) -> None:
        if delta:
            self._pieces.append(delta)
            self._changed()

    def set_placeholder(self, placeholder: str) -> None:
        self._placeholder = placeholder
        self._changed()

    def _changed(self) -> None:
        # Nothing to say takes no line (an error then sits at the top of the pane).
        self.display = bool(self._pieces or self._placeholder)
        self.refresh(layout=True)

    def render(self) -> RenderResult:
        text = self.text
        if not text:
            return Text(self._placeholder, style="italic dim")
        return safe_text(text)


class CandidatePane(Vertical, can_focus=True):
    """One model's answer in one stage (role: candidate, aggregator or vlm)."""

    HELP = """\
One model's answer in this stage. The title is the model, the bottom line its state and time.
r: ask this model again (retry). u: use this answer (only once it is done without error).
Up/down, PgUp/PgDn, Home/End scroll a long answer."""

    BINDINGS = [
        Binding(
            "r",
            "retry",
            "Retry",
            show=False,  # told in the focused pane's bottom line: the footer keeps its 80 columns
            id="candidate-pane.retry",
            tooltip="Ask this model again for this stage",
        ),
        Binding(
            "u",
            "use_answer",
            "Use answer",
            show=False,  # told in the focused pane's bottom line: the footer keeps its 80 columns
            id="candidate-pane.use",
            tooltip="Use this model's answer for the stage (when it is done without error)",
        ),
        Binding(
            "up",
            "scroll_answer('up')",
            "Scroll up",
            show=False,
            id="candidate-pane.scroll-up",
            tooltip="Scroll the answer up one line",
        ),
        Binding(
            "down",
            "scroll_answer('down')",
            "Scroll down",
            show=False,
            id="candidate-pane.scroll-down",
            tooltip="Scroll the answer down one line",
        ),
        Binding(
            "pageup",
            "scroll_answer('page_up')",
            "Page up",
            show=False,
            id="candidate-pane.page-up",
            tooltip="Scroll the answer up one page",
        ),
        Binding(
            "pagedown",
            "scroll_answer('page_down')",
            "Page down",
            show=False,
            id="candidate-pane.page-down",
            tooltip="Scroll the answer down one page",
        ),
        Binding(
            "home",
            "scroll_answer('home')",
            "Top",
            show=False,
            id="candidate-pane.top",
            tooltip="Scroll to the start of the answer",
        ),
        Binding(
            "end",
            "scroll_answer('end')",
            "Bottom",
            show=False,
            id="candidate-pane.bottom",
            tooltip="Scroll to the end of the answer",
        ),
    ]

    DEFAULT_CSS = """
    CandidatePane {
        height: 1fr;
        min-height: 5;
        border: round $foreground 30%;
        border-title-color: $text;
        border-subtitle-color: $text-muted;
        padding: 0 1;
        &.-answering { border-subtitle-color: $accent; }
        &.-done { border-subtitle-color: $success; }
        &.-failed { border: round $error 60%; border-subtitle-color: $error; }
        &.-cancelled { border: round $foreground 15%; border-subtitle-color: $text-muted; color: $text-muted; }
        /* Focus changes the border's shape (round to heavy), not only its colour, so it shows
           on a failed pane (already red) and in a terminal with few colours. After the states:
           a focused pane is drawn as focused whatever its state. */
        &:focus {
            border: heavy $accent;
            border-title-color: $accent;
            border-title-style: bold;
            background-tint: $foreground 4%;
        }
        &.-failed:focus { border: heavy $error; border-title-color: $error; background-tint: $error 10%; }
        & > .candidate-pane--body {
            height: 1fr;
            scrollbar-size-vertical: 1;
        }
        & .candidate-pane--error { color: $error; height: auto; margin-top: 1; }
        & .candidate-pane--note { color: $warning; height: auto; }
        & .candidate-pane--error.-empty-answer { margin-top: 0; }
    }
    """

    class PaneMessage(Message):
        """A request about one model's part in one stage (what the app acts on)."""

        def __init__(self, stage: str, role: str, model: str) -> None:
            super().__init__()
            self.stage = stage
            self.role = role
            self.model = model

        @property
        def pane(self) -> CandidatePane:
            return self._sender  # type: ignore[return-value]

        @property
        def control(self) -> CandidatePane:
            return self.pane

    class Retry(PaneMessage):
        """The user asked this model to answer this stage again."""

    class UseAnswer(PaneMessage):
        """The user chose this model's answer for the stage."""

    def __init__(
        self,
        stage: str,
        role: str,
        model: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        **kwargs,
    ) -> None:
        """`kwargs` go to `Vertical` (id, classes, name, disabled)."""
        super().__init__(**kwargs)
        self._stage = stage
        self._role = role
        self._model = model
        self.clock = clock
        self._state = "waiting"
        self._error: str | None = None
        self._seconds: float | None = None
        self._started: float | None = None
        self._timer: Timer | None = None
        # A growing answer keeps its end in view until the user scrolls away from the end.
        # (Textual's `anchor()` would also push a short answer to the bottom of the pane.)
        self._stick_to_end = True
        self._end_pending = False
        self._answer = AnswerText(classes="candidate-pane--text")
        self._error_view = Static("", classes="candidate-pane--error", markup=False)
        self._error_view.display = False
        # What the answer check dropped or flagged in an answer it still used.
        self._note_view = Static("", classes="candidate-pane--note", markup=False)
        self._note_view.display = False
        # A Text title is kept as it is: a model ref is data, never markup.
        # The model, and its role when it is not one of the ensemble (the aggregator's pane
        # would otherwise look like a candidate's when both are the same model).
        role_note = f"  · {role}" if role not in ("candidate", "") else ""
        self.border_title = Text(safe_str(model) + role_note)
        self._set_state("waiting")

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="candidate-pane--body", can_focus=False):
            yield self._answer
            yield self._note_view
            yield self._error_view

    def on_mount(self) -> None:
        self._timer = self.set_interval(_TICK_S, self._show_state, pause=self._state != "answering")

    # --- read-only properties ---------------------------------------------------------------

    @property
    def stage(self) -> str:
        return self._stage

    @property
    def role(self) -> str:
        return self._role

    @property
    def model(self) -> str:
        return self._model

    @property
    def text(self) -> str:
        """The answer so far (streamed) or the final text."""
        return self._answer.text

    @property
    def error(self) -> str | None:
        return self._error

    @property
    def state(self) -> str:
        """One of PANE_STATES: waiting, answering, done, failed, cancelled."""
        return self._state

    @property
    def seconds(self) -> float | None:
        """Time so far while answering, the call's time once finished, None while waiting."""
        if self._state == "answering" and self._started is not None:
            return self.clock() - self._started
        return self._seconds

    # --- updates ----------------------------------------------------------------------------

    def start(self) -> None:
        """The model's call began: clears any earlier answer and starts the clock."""
        self._origin = "provider"
        self._answer.set_text("")
        self._set_notes(())
        self._set_error(None)
        self._seconds = None
        self._stick_to_end = True
        self._started = self.clock()
        self._set_state("answering")

    def append(self, text: str) -> None:
        """Add a streamed piece of the answer (starts the pane if it was waiting)."""
        if self._state == "waiting":
            self.start()
        self._answer.append(text)
        self._keep_end_in_view()

    def finish(
        self, text: str, error: str | None, seconds: float, notes: tuple[str, ...] = (), origin: str = "provider"
    ) -> None:
        """The call ended. `text` replaces what was streamed; an error is shown under it, and
        so are `notes`, what the answer check dropped or flagged in an answer it used.
        `origin` "cache" or "replay": the answer came without a request, and the pane says so."""
        self._origin = origin
        self._answer.set_text(text)
        self._set_notes(notes)
        self._set_error(error)
        self._seconds = seconds
        self._started = None
        self._set_state("failed" if error is not None else "done")
        self._keep_end_in_view()

    def cancel(self) -> bool:
        """The stage was cancelled before this model finished: stop the clock and say
        "cancelled" (dim, not the red of a failure), keeping what was streamed so far.

        A pane that already finished (done or failed) keeps its result: returns False and
        changes nothing; True when the pane is now cancelled. `start` or `reset` leave the
        cancelled state (a retry with r starts the pane again)."""
        if self._state in ("done", "failed"):
            return False
        if self._state == "answering" and self._started is not None:
            self._seconds = self.clock() - self._started
        self._started = None
        self._set_error(None)
        self._set_state("cancelled")
        return True

    def reset(self) -> None:
        """Back to waiting, with no text and no error."""
        self._answer.set_text("")
        self._set_notes(())
        self._set_error(None)
        self._seconds = None
        self._started = None
        self._stick_to_end = True
        self._set_state("waiting")

    # --- actions ----------------------------------------------------------------------------

    def action_retry(self) -> None:
        self.post_message(self.Retry(self._stage, self._role, self._model))

    def action_use_answer(self) -> None:
        if self._usable():
            self.post_message(self.UseAnswer(self._stage, self._role, self._model))
        else:
            self.app.bell()

    def action_scroll_answer(self, how: str) -> None:
        body = self._body()
        {
            "up": body.scroll_up,
            "down": body.scroll_down,
            "page_up": body.scroll_page_up,
            "page_down": body.scroll_page_down,
            "home": body.scroll_home,
            "end": body.scroll_end,
        }[how](animate=False)
        self._stick_to_end = how == "end" or (
            how in ("down", "page_down") and body.scroll_target_y >= body.max_scroll_y
        )

    # --- internals --------------------------------------------------------------------------

    def _set_notes(self, notes: tuple[str, ...]) -> None:
        self._note_view.update(safe_str("! " + "; ".join(notes)) if notes else "")
        self._note_view.display = bool(notes)

    def _set_error(self, error: str | None) -> None:
        self._error = error
        if error is None:
            self._error_view.update("")
            self._error_view.display = False
        else:
            self._error_view.update(safe_str(f"✗ {error}" if error else "✗ failed"))
            self._error_view.set_class(not self._answer.text, "-empty-answer")
            self._error_view.display = True

    def _set_state(self, state: str) -> None:
        self._state = state
        self._answer.set_placeholder(
            {
                "waiting": self._role,
                "answering": f"{self._role}: waiting for the first words…",
                "done": "(empty answer)",
                "failed": "",
                "cancelled": "cancelled before an answer",
            }[state]
        )
        for name in PANE_STATES:
            self.set_class(name == state, f"-{name}")
        if self._timer is not None:
            if state == "answering":
                self._timer.resume()
            else:
                self._timer.pause()
        self._show_state()

    def _show_state(self) -> None:
        seconds = self.seconds
        if self._state == "waiting" or seconds is None:  # a pane cancelled while waiting, too
            self.border_subtitle = self._state
        else:
            self.border_subtitle = f"{self._state} {format_pane_seconds(seconds)}"
        origin = getattr(self, "_origin", "provider")
        if self._state in ("done", "failed") and origin in ORIGIN_LABELS:
            self.border_subtitle += f" · {ORIGIN_LABELS[origin]}"
        if self.has_focus and self._state in ("done", "failed", "cancelled"):
            # The pane's own keys, where the person is looking (the footer has no room).
            self.border_subtitle += " · r retry" + (" · u use" if self._usable() else "")

    def _usable(self) -> bool:
        return self._state == "done" and self._error is None

    def watch_has_focus(self, has_focus: bool) -> None:
        super().watch_has_focus(has_focus)  # Widget's: the :focus styles
        self._show_state()  # the keys show in the bottom line only while focused

    def _body(self) -> VerticalScroll:
        return self.query_one(".candidate-pane--body", VerticalScroll)

    def _keep_end_in_view(self) -> None:
        """Scroll to the end once the new text is laid out (once per frame, however many
        deltas arrive), unless the user scrolled up to read."""
        if not self._stick_to_end or self._end_pending or not self.is_mounted:
            return
        self._end_pending = True
        self.call_after_refresh(self._scroll_to_end)

    def _scroll_to_end(self) -> None:
        self._end_pending = False
        if self._stick_to_end:
            self._body().scroll_end(animate=False, immediate=True)
