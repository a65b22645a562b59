"""The best-of-N bases of a run (docs/method.md 10.2): one thumbnail per candidate, with its
seed and rating, the base that was refined marked; a person can pick another.

Hidden when the run's base has no candidates (``diffusion.base_candidates = 1``). Focused,
left/right move between the thumbnails and enter (or p) asks to make the highlighted one the
base: the widget only posts :class:`BaseCandidatesView.Picked`; the app asks first (the
critique is redone) and calls the engine (``tui/base_pick.py``).

Each thumbnail is an :class:`~critifusion_tui.tui.widgets.image_view.ImageView`; there are as
many as the configuration allows (8), made once and shown as needed, so showing another run's
candidates mounts nothing.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Static

from critifusion_tui.engine.events import BaseCandidates
from critifusion_tui.tui.widgets.image_view import ImageView

__all__ = ["MAX_THUMBNAILS", "BaseCandidatesView", "thumbnail_label"]

MAX_THUMBNAILS = 8  # diffusion.base_candidates is at most 8 (config.py)
_BY = {"critic": "the critics' rating", "user": "you", "none": "rule: nothing was rated, so candidate 1"}


def thumbnail_label(score: float | None, picked: bool) -> str:
    """ "81 / 100 - picked", "not rated"."""
    rating = "not rated" if score is None else f"{score:g} / 100"
    return f"{rating} - picked" if picked else rating


class BaseCandidatesView(Vertical, can_focus=True):
    """The base candidates in a row; the refined one marked, the highlighted one framed."""

    HELP = """\
Best-of-N bases ([diffusion] base_candidates): every base drawn, from seed, seed + 10000,
seed + 20000 ..., with its 0-100 rating (diffusion.base_pick_from). The one marked "picked" is
the base the critics criticised and the refinement starts from.
left / right: highlight another candidate; enter or p: make it the base. The critique (and
what follows it) runs again on the new base; you are asked first."""

    BINDINGS = [
        Binding("left", "move(-1)", "Previous", show=False, id="base-candidates.previous"),
        Binding("right", "move(1)", "Next", show=False, id="base-candidates.next"),
        Binding(
            "enter,p",
            "pick",
            "Pick base",
            id="base-candidates.pick",
            tooltip="Make the highlighted candidate the base; the critique runs again",
        ),
    ]

    DEFAULT_CSS = """
    BaseCandidatesView {
        height: auto;
        margin: 0 0 1 0;
        & > #base-candidates-title { height: auto; color: $text-muted; padding: 0 1; }
        /* Eight thumbnails do not fit 80 columns: the row scrolls, and follows the highlight. */
        & > #base-candidates-row { height: auto; overflow-x: auto; scrollbar-size-horizontal: 1; }
        & ImageView { width: 20; height: 12; }
        & ImageView.-highlighted { border: round $accent; }
        &:focus ImageView.-highlighted { border: heavy $accent; }
    }
    """

    class Picked(Message):
        """The person asked to make candidate `number` (1-based) the base."""

        def __init__(self, number: int) -> None:
            super().__init__()
            self.number = number

    def __init__(self, *, mode: str = "auto", image_class: type[Widget] | None = None, id: str | None = None) -> None:
        super().__init__(id=id)
        self.thumbnails = [
            ImageView(f"{number}", mode=mode, image_class=image_class, classes="base-candidate")
            for number in range(1, MAX_THUMBNAILS + 1)
        ]
        self.candidates: BaseCandidates | None = None
        self.highlighted = 1
        self.display = False

    def compose(self) -> ComposeResult:
        yield Static("", id="base-candidates-title", markup=False)
        with Horizontal(id="base-candidates-row"):
            yield from self.thumbnails

    @property
    def picked(self) -> int | None:
        return self.candidates.picked if self.candidates is not None else None

    def show(self, candidates: BaseCandidates | None) -> None:
        """Show `candidates` (None: hide the widget); the highlight starts on the base that
        was refined."""
        self.candidates = candidates
        self.display = candidates is not None
        if candidates is None:
            for view in self.thumbnails:
                view.clear()
            return
        shown = candidates.candidates[:MAX_THUMBNAILS]
        for view, candidate in zip(self.thumbnails, shown, strict=False):
            view.display = True
            view.border_title = Text(f"{candidate.index} - seed {candidate.seed}")
            view.show(candidate.path, thumbnail_label(candidate.score, candidate.index == candidates.picked))
        for view in self.thumbnails[len(shown) :]:
            view.display = False
            view.clear()
        by = _BY.get(candidates.picked_by, candidates.picked_by)
        self.query_one("#base-candidates-title", Static).update(
            Text(
                f"Base candidates: {len(shown)} drawn; candidate {candidates.picked} is the base (picked by {by}). "
                "Focus here: left/right, enter picks another."
            )
        )
        self._highlight(candidates.picked)

    def _highlight(self, number: int) -> None:
        count = len(self.candidates.candidates) if self.candidates is not None else 0
        self.highlighted = max(1, min(number, count or 1))
        for index, view in enumerate(self.thumbnails, start=1):
            view.set_class(index == self.highlighted, "-highlighted")
        self.refresh_bindings()

    def action_move(self, delta: int) -> None:
        self._highlight(self.highlighted + delta)
        self.thumbnails[self.highlighted - 1].scroll_visible(animate=False)

    def action_pick(self) -> None:
        if self.candidates is None or self.highlighted == self.picked or getattr(self.app, "busy", False):
            self.app.bell()
            return
        self.post_message(self.Picked(self.highlighted))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The pick key shows only where it would change something: another candidate
        highlighted, and no step running."""
        if action == "pick":
            return self.highlighted != self.picked and not getattr(self.app, "busy", False)
        return True
