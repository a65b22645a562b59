"""The strip of critique rounds (docs/method.md 10.1), under the images:

    Rounds  r1 62 · r2 84 ★ · r3 …        stopped: the score 84 reached stop_at 80
    r2 (seed 5141): its critique found: the lantern is missing; the fox faces away

One item per round with its score (… while it waits for one, ? when nobody rated it, – when
the rounds stopped before its critique), ★ on the final image. Left and
right move the highlight (the app shows that round's image); enter makes the highlighted
round the final image, `+` asks for one more round, `s` stops the rounds in flight. The second
line says what the highlighted round's critique found in its image (what the next round was
asked to fix). The strip only posts messages: the app makes the moves through the engine.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import RenderResult
from textual.binding import Binding
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget

from critifusion_tui.tui.widgets._safe import safe_str


class RoundStrip(Widget, can_focus=True):
    """The rounds of a run with their scores; hidden until a run has rounds."""

    HELP = """\
Critique rounds: each round criticised the image before it and refined it again.
Each item is a round and its score (0-100); ★ marks the final image.
Left/right (or h/l) highlight a round and show its image; the line under the
strip says what that round's critique found in it.
Enter makes the highlighted round the final image.
+ runs one more round (whatever the stop rules say); s stops rounds in flight."""

    BINDINGS = [
        Binding("left,h", "move(-1)", "Previous round", show=False, id="rounds.left"),
        Binding("right,l", "move(1)", "Next round", show=False, id="rounds.right"),
        Binding("enter", "pick", "Final", id="rounds.pick", tooltip="Make the highlighted round the final image"),
        Binding("plus", "more", "One more", id="rounds.more", tooltip="Run one more critique round"),
        Binding("s", "stop", "Stop", id="rounds.stop", tooltip="Stop the rounds, keeping the ones done"),
    ]

    DEFAULT_CSS = """
    RoundStrip { height: 2; width: 1fr; }
    RoundStrip.-hidden { display: none; }
    """

    highlighted: reactive[int] = reactive(0)

    class Highlighted(Message):
        """A round was highlighted: show its image."""

        def __init__(self, number: int, image: str) -> None:
            super().__init__()
            self.number = number
            self.image = image

    class Picked(Message):
        def __init__(self, number: int) -> None:
            super().__init__()
            self.number = number

    class MoreWanted(Message):
        pass

    class StopWanted(Message):
        pass

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rounds: list[dict[str, Any]] = []
        self.final = 0
        self.stopped = ""
        self.running = False

    # ---------------------------------------------------------------- what the app tells it

    def show_rounds(self, rounds, *, final: int = 0, stopped: str = "", running: bool = False) -> None:
        self.rounds = [dict(r) for r in rounds]
        self.final, self.stopped, self.running = final, stopped, running
        self.set_class(not self.rounds, "-hidden")
        if self.rounds and not 1 <= self.highlighted <= len(self.rounds):
            self.highlighted = final or len(self.rounds)
        self.refresh()
        if self.app is not None:
            self.app.refresh_bindings()

    def clear(self) -> None:
        self.show_rounds([])
        self.highlighted = 0

    def item(self, number: int) -> dict[str, Any] | None:
        return next((r for r in self.rounds if r.get("round") == number), None)

    # ---------------------------------------------------------------- drawing

    def render(self) -> RenderResult:
        text = Text("Rounds  ", style="bold")
        for index, entry in enumerate(self.rounds):
            if index:
                text.append(" · ", style="dim")
            number = entry.get("round", index + 1)
            score = entry.get("score")
            if score is not None:
                shown = f"{score:g}"
            elif "scored" in entry:
                shown = "?"  # asked, but nobody rated it
            else:
                shown = "…" if self.running else "–"  # waiting for its critique, or stopped before it
            label = f"r{number} {shown}"
            if number == self.final:
                label += " ★"
            style = "reverse" if self.has_focus and number == self.highlighted else ""
            text.append(safe_str(label), style=style)
        if self.running:
            text.append("  (running: s stops)", style="dim")
        elif self.stopped:
            # The reason is the engine's words, never markup (Text.append takes it as is).
            text.append(f"  {safe_str(self.stopped)}", style="dim")
        text.append("\n")
        text.append(self.detail(), style="dim")
        text.no_wrap, text.overflow = True, "ellipsis"
        return text

    def detail(self) -> str:
        """What the highlighted round's critique found: the critics' words, as plain text."""
        entry = self.item(self.highlighted)
        if entry is None:
            return ""
        head = f"r{self.highlighted}" + (f" (seed {entry['seed']})" if entry.get("seed") is not None else "")
        issues = [safe_str(str(issue)) for issue in entry.get("issues") or []]
        if issues:
            return f"{head}: its critique found: " + "; ".join(issues)
        if entry.get("critique"):
            return f"{head}: its critique found nothing left to fix"
        if entry.get("scored"):
            return f"{head}: scored without a critique"
        return f"{head}: " + ("waiting for its critique" if self.running else "not criticised (the rounds ended first)")

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    # ---------------------------------------------------------------- keys

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop":
            return self.running
        if action in ("pick", "more"):
            return bool(self.rounds) and not self.running
        return True

    def action_move(self, delta: int) -> None:
        if not self.rounds:
            return
        self.highlighted = max(1, min(len(self.rounds), self.highlighted + delta))
        entry = self.item(self.highlighted)
        if entry is not None:
            self.post_message(self.Highlighted(self.highlighted, str(entry.get("image", ""))))
        self.refresh()

    def action_pick(self) -> None:
        if self.rounds and not self.running:
            self.post_message(self.Picked(self.highlighted))

    def action_more(self) -> None:
        if self.rounds and not self.running:
            self.post_message(self.MoreWanted())

    def action_stop(self) -> None:
        if self.running:
            self.post_message(self.StopWanted())
