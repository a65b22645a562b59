"""One line of diffusion progress: stage, bar, steps, speed and time left.

    base    ━━━━━━━━━━━━━━━━━━╸━━━━━━━━━━━━━━━━━━━━━━━━  12/50 · 3.10 steps/s · ETA 12 s

Hidden while idle. Fed from the engine's DiffusionStep events (step is 1-based, `elapsed`
counts from the start of the pass), so speed and ETA come from the engine's own clock.
"""

from __future__ import annotations

import time

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Label, ProgressBar

from critifusion_tui.tui.widgets._safe import safe_str
from critifusion_tui.tui.widgets.stage_rail import format_seconds

__all__ = ["DiffusionProgress", "format_duration", "progress_text"]


def format_duration(seconds: float) -> str:
    """ "12 s", "2 min 05 s"."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    return f"{seconds // 60} min {seconds % 60:02d} s"


def progress_text(step: int, total: int, elapsed: float) -> str:
    """The text right of the bar: "12/50 · 3.10 steps/s · ETA 12 s"."""
    parts = [f"{step}/{total}"]
    rate = step / elapsed if step > 0 and elapsed > 0 else None
    if rate is not None:
        parts.append(f"{rate:.2f} steps/s" if rate >= 1 else f"{1 / rate:.2f} s/step")
    if total > 0 and step >= total:
        parts.append(f"done in {format_duration(elapsed)}")
    elif rate is not None:
        parts.append(f"ETA {format_duration((total - step) / rate)}")
    return " · ".join(parts)


class DiffusionProgress(Horizontal):
    """A stage name, a progress bar and a status text, on one line; hidden while idle."""

    HELP = """\
Progress of the current diffusion pass (base image or refinement):
steps done of all steps, speed, and the estimated time left."""

    DEFAULT_CSS = """
    DiffusionProgress {
        height: 1;
        width: 1fr;
        padding: 0 1;
        &.-idle { display: none; }
        & > .diffusion-progress--stage { width: auto; min-width: 6; margin-right: 1; text-style: bold; }
        & > ProgressBar { width: 1fr; }
        & > ProgressBar Bar { width: 1fr; }
        & > .diffusion-progress--status { width: auto; margin-left: 1; color: $text-muted; }
        &.-message > ProgressBar { display: none; }
    }
    """

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.add_class("-idle")
        self._stage_label = Label("", classes="diffusion-progress--stage", markup=False)
        # Never total=None: an indeterminate bar animates at 15 Hz, even while hidden.
        self._bar = ProgressBar(total=1, show_eta=False, show_percentage=False, classes="diffusion-progress--bar")
        self._status = Label("", classes="diffusion-progress--status", markup=False)
        self._stage = ""
        self._status_text = ""
        self._step = 0
        self._total = 0

    def compose(self) -> ComposeResult:
        yield self._stage_label
        yield self._bar
        yield self._status

    @property
    def idle(self) -> bool:
        """True while nothing is shown (the widget is hidden)."""
        return self.has_class("-idle")

    @property
    def stage(self) -> str:
        return self._stage

    @property
    def step(self) -> int:
        return self._step

    @property
    def total(self) -> int:
        return self._total

    @property
    def status_text(self) -> str:
        """The text shown right of the bar (or the message after `reset(message)`)."""
        return self._status_text

    @property
    def bar(self) -> ProgressBar:
        return self._bar

    def update_step(self, stage: str, step: int, total: int, elapsed: float, *, since: float | None = None) -> None:
        """Step `step` (1-based) of `total` done, `elapsed` seconds since the pass began.

        `since` (a time.monotonic() reading) is when the stage started, on the rail's clock:
        the label then shows the stage's time as the rail does (loading included), so the
        two never disagree; speed and ETA stay the pass's own."""
        self._stage, self._step, self._total = stage, step, total
        label = stage if since is None else f"{stage} {format_seconds(time.monotonic() - since)}"
        self._stage_label.update(safe_str(label))
        self._bar.update(total=max(total, 1), progress=min(step, max(total, 1)))
        self._set_status(progress_text(step, total, elapsed))
        self.remove_class("-idle", "-message")

    def reset(self, message: str = "") -> None:
        """Clear the progress. With a message (e.g. "cancelled"), show it instead of hiding."""
        self._stage, self._step, self._total = "", 0, 0
        self._stage_label.update("")
        self._bar.update(total=1, progress=0)
        self._set_status(message)
        if message:
            self.remove_class("-idle")
            self.add_class("-message")
        else:
            self.add_class("-idle")
            self.remove_class("-message")

    def _set_status(self, text: str) -> None:
        self._status_text = safe_str(text)
        self._status.update(self._status_text)
