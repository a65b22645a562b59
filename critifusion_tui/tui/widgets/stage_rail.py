"""The stage rail: where the run is, one line pair per stage, in a 16-column strip.

    ✓ Prompt
      done 0.0s
    ▶ Tags
      running 3.2s
    ○ Components
      waiting

While any stage runs, a timer redraws the rail four times a second so the elapsed seconds move;
it is paused when nothing runs. The detail of the highlighted stage (what it is doing, or why
it failed) is shown under the list. Enter posts `StageRail.Selected`; the rail never changes
what the app shows by itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from rich.text import Text
from textual import events
from textual.app import RenderResult
from textual.binding import Binding
from textual.message import Message
from textual.reactive import reactive
from textual.timer import Timer
from textual.widget import Widget

from critifusion_tui.engine.stages import TABLE, Stage
from critifusion_tui.engine.stages import stages_of as steps_stages
from critifusion_tui.tui.widgets._safe import safe_str

__all__ = ["STAGES", "STAGE_STATES", "STAGE_TITLES", "StageRail", "format_seconds", "rows_for"]


def rows_for(stages) -> list[tuple[str, str]]:
    """The rail's rows for a run's stages (from the engine's stage table): the prompt, each
    stage with its title, and the end."""
    return [("prompt", "Prompt"), *((str(stage), TABLE[Stage(stage)].title) for stage in stages), ("done", "Done")]


# The rows of a run of the method alone, until a run says which stages it has.
STAGE_TITLES = dict(rows_for(steps_stages("full")))
STAGES = tuple(STAGE_TITLES)
STAGE_STATES = ("waiting", "running", "gate", "done", "failed", "cancelled", "skipped")
_GLYPHS = {
    "waiting": "○",
    "running": "▶",
    "gate": "◆",
    "done": "✓",
    "failed": "✗",
    "cancelled": "⊘",
    "skipped": "–",
}
_TICK_S = 0.25


def format_seconds(seconds: float) -> str:
    """At most five columns: "0.4s", "12.3s", "123s", "17m"."""
    if seconds < 0:
        seconds = 0.0
    if seconds < 99.95:
        return f"{seconds:.1f}s"
    if seconds < 999.5:
        return f"{seconds:.0f}s"
    return f"{seconds // 60:.0f}m"


@dataclass
class _Stage:
    state: str = "waiting"
    seconds: float | None = None
    detail: str = ""
    started: float | None = None


class StageRail(Widget, can_focus=True):
    """A vertical list of the run's stages with their states. Up/down move, enter selects."""

    HELP = """\
Stages of the run, top to bottom. Each shows a state:
○ waiting · ▶ running (seconds so far) · ◆ gate (waiting for you) · ✓ done · ✗ failed · – skipped.
Up/down (or k/j) move the highlight; Enter opens the highlighted stage.
Under the list: what the highlighted stage is doing, or why it failed."""

    BINDINGS = [
        Binding(
            "up,k",
            "cursor_up",
            "Previous stage",
            show=False,
            id="stage-rail.up",
            tooltip="Highlight the stage above",
        ),
        Binding(
            "down,j",
            "cursor_down",
            "Next stage",
            show=False,
            id="stage-rail.down",
            tooltip="Highlight the stage below",
        ),
        Binding(
            "home",
            "cursor_first",
            "First stage",
            show=False,
            id="stage-rail.first",
            tooltip="Highlight the first stage",
        ),
        Binding(
            "end",
            "cursor_last",
            "Last stage",
            show=False,
            id="stage-rail.last",
            tooltip="Highlight the last stage",
        ),
        Binding(
            "enter",
            "select",
            "Open stage",
            id="stage-rail.select",
            tooltip="Show the highlighted stage's panes",
        ),
    ]

    COMPONENT_CLASSES = {
        "stage-rail--waiting",
        "stage-rail--running",
        "stage-rail--gate",
        "stage-rail--done",
        "stage-rail--failed",
        "stage-rail--cancelled",
        "stage-rail--skipped",
        "stage-rail--cursor",
        "stage-rail--cursor-blurred",
        "stage-rail--detail",
    }

    DEFAULT_CSS = """
    StageRail {
        width: 16;
        height: 1fr;
        min-height: 14;
        border-right: vkey $foreground 20%;
        overflow: hidden hidden;
        &:focus { border-right: vkey $accent; }
        & > .stage-rail--waiting { color: $text-muted; }
        & > .stage-rail--running { color: $accent; text-style: bold; }
        & > .stage-rail--gate { color: $warning; text-style: bold; }
        & > .stage-rail--done { color: $success; }
        & > .stage-rail--failed { color: $error; text-style: bold; }
        & > .stage-rail--cancelled { color: $warning-muted; }
        & > .stage-rail--skipped { color: $text-disabled; }
        & > .stage-rail--cursor {
            background: $block-cursor-background;
            color: $block-cursor-foreground;
        }
        & > .stage-rail--cursor-blurred { background: $boost; }
        & > .stage-rail--detail { color: $text-muted; }
    }
    """

    highlighted: reactive[int] = reactive(0)
    """Index in STAGES of the highlighted stage."""

    class Selected(Message):
        """The user chose a stage (Enter on the rail, or a click)."""

        def __init__(self, stage: str) -> None:
            super().__init__()
            self.stage = stage

        @property
        def rail(self) -> StageRail:
            return self._sender  # type: ignore[return-value]

        @property
        def control(self) -> StageRail:
            return self.rail

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        follow: bool = True,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
        disabled: bool = False,
    ) -> None:
        """`clock` gives the running stages' elapsed time (tests pass a fake one).

        With `follow`, a stage that starts running or opens a gate is highlighted, unless the
        rail has focus (the user's highlight is never moved under their hands).
        """
        super().__init__(name=name, id=id, classes=classes, disabled=disabled)
        self.clock = clock
        self.follow = follow
        self._rows: tuple[str, ...] = STAGES
        self._titles = dict(STAGE_TITLES)
        self._stages = {stage: _Stage() for stage in STAGES}
        # Stages whose next run will be skipped by the person's choice (shown as "will skip").
        self._will_skip: set[str] = set()
        self._selected: str | None = None
        self._timer: Timer | None = None

    # --- public API -------------------------------------------------------------------------

    def set_rows(self, rows: list[tuple[str, str]]) -> None:
        """The stages to show, as (key, title) in order (a run's stages come from the engine's
        stage table); every row starts waiting."""
        self._rows = tuple(key for key, _ in rows)
        self._titles = dict(rows)
        self._stages = {key: _Stage() for key in self._rows}
        self._will_skip.clear()
        self.highlighted = min(self.highlighted, len(self._rows) - 1)
        self._update_timer()
        self.refresh()

    @property
    def rows(self) -> tuple[str, ...]:
        return self._rows

    def set_will_skip(self, stage: str, skip: bool) -> None:
        """Mark a waiting stage as one the person chose to skip (or no longer)."""
        self._check(stage)
        (self._will_skip.add if skip else self._will_skip.discard)(stage)
        self.refresh()

    def will_skip(self, stage: str) -> bool:
        return stage in self._will_skip

    def set_state(self, stage: str, state: str, *, seconds: float | None = None, detail: str = "") -> None:
        """Set one stage's state.

        For "running", `seconds` is time already spent and the rail counts on from it; when
        omitted, a stage that was already running keeps its clock and any other starts at 0.
        For "done" and "failed", `seconds` is the time shown; when omitted, the time since the
        stage started running (if it did) is used.
        """
        info = self._stage(stage)
        if state not in STAGE_STATES:
            raise ValueError(f"unknown stage state {state!r}; expected one of {STAGE_STATES}")
        now = self.clock()
        if state == "running":
            if seconds is not None or info.state != "running" or info.started is None:
                info.started = now - (seconds or 0.0)
            info.seconds = None
        elif state in ("done", "failed", "cancelled"):
            if seconds is None and info.started is not None:
                seconds = now - info.started
            info.started = None
            info.seconds = seconds
        else:
            info.started = None
            info.seconds = seconds
        info.state = state
        info.detail = detail
        if self.follow and state in ("running", "gate") and not self.has_focus:
            self.highlighted = self._rows.index(stage)
        self._update_timer()
        self.refresh()

    def set_detail(self, stage: str, detail: str) -> None:
        """Change what `stage` says it is doing, keeping its state and clock."""
        self._stage(stage).detail = detail
        self.refresh()

    def state(self, stage: str) -> str:
        """The state of `stage`: one of STAGE_STATES."""
        return self._stage(stage).state

    def detail(self, stage: str) -> str:
        return self._stage(stage).detail

    def seconds(self, stage: str) -> float | None:
        """Seconds shown for `stage`: elapsed so far while running, else the time it took."""
        info = self._stage(stage)
        if info.state == "running" and info.started is not None:
            return self.clock() - info.started
        return info.seconds

    def select(self, stage: str) -> None:
        """Highlight `stage` and make it the selected one (posts nothing)."""
        self.highlighted = self._rows.index(self._check(stage))
        self._selected = stage

    @property
    def selected(self) -> str | None:
        """The stage last chosen (Enter, a click or `select`); None until one is."""
        return self._selected

    @property
    def highlighted_stage(self) -> str:
        """The stage under the highlight (moves with up/down and, with `follow`, the run)."""
        return self._rows[self.highlighted]

    @property
    def running(self) -> bool:
        """Whether any stage is running (the timer ticks only then)."""
        return any(info.state == "running" for info in self._stages.values())

    # --- actions ----------------------------------------------------------------------------

    def action_cursor_up(self) -> None:
        self.highlighted = max(0, self.highlighted - 1)

    def action_cursor_down(self) -> None:
        self.highlighted = min(len(self._rows) - 1, self.highlighted + 1)

    def action_cursor_first(self) -> None:
        self.highlighted = 0

    def action_cursor_last(self) -> None:
        self.highlighted = len(self._rows) - 1

    def action_select(self) -> None:
        self._selected = self.highlighted_stage
        self.post_message(self.Selected(self._selected))

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        index = offset.y // 2
        if 0 <= index < len(self._rows):
            self.highlighted = index
            self._selected = self._rows[index]
            self.post_message(self.Selected(self._selected))

    # --- internals --------------------------------------------------------------------------

    def _check(self, stage: str) -> str:
        if stage not in self._stages:
            raise ValueError(f"unknown stage {stage!r}; expected one of {self._rows}")
        return stage

    def _stage(self, stage: str) -> _Stage:
        return self._stages[self._check(stage)]

    def on_mount(self) -> None:
        self._timer = self.set_interval(_TICK_S, self.refresh, pause=True)
        self._update_timer()

    def _update_timer(self) -> None:
        if self._timer is None:
            return
        if self.running:
            self._timer.resume()
        else:
            self._timer.pause()

    def watch_highlighted(self) -> None:
        self.refresh()

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    def _word(self, stage: str) -> str:
        info = self._stages[stage]
        seconds = self.seconds(stage)
        if info.state == "gate":
            return "gate (you)"
        if info.state == "waiting" and stage in self._will_skip:
            return "will skip"
        if info.state in ("running", "done", "failed", "cancelled") and seconds is not None:
            return f"{info.state} {format_seconds(seconds)}"
        return info.state

    def render(self) -> RenderResult:
        width = max(1, self.size.width)
        cursor_style = self.get_component_rich_style(
            "stage-rail--cursor" if self.has_focus else "stage-rail--cursor-blurred"
        )
        lines: list[Text] = []
        for index, stage in enumerate(self._rows):
            info = self._stages[stage]
            state = "skipped" if info.state == "waiting" and stage in self._will_skip else info.state
            style = self.get_component_rich_style(f"stage-rail--{state}")
            head = Text(f"{_GLYPHS[state]} {self._titles[stage]}", style=style)
            word = Text(f"  {self._word(stage)}", style=style)
            for line in (head, word):
                line.truncate(width, overflow="ellipsis", pad=True)
                if index == self.highlighted:
                    line.stylize(cursor_style)
                lines.append(line)
        text = Text("\n").join(lines)
        detail = safe_str(self._stages[self.highlighted_stage].detail).strip()
        if detail:
            text.append("\n\n")
            text.append(detail, style=self.get_component_rich_style("stage-rail--detail"))
        return text
