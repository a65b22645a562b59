"""SVG snapshots of the widgets at 80x24 (pytest-textual-snapshot; `snap_compare` is sync).

Regenerate after a deliberate visual change with `pytest tests/tui --snapshot-update`, then look
at the SVGs under __snapshots__/ before committing them.
"""

from __future__ import annotations

from pathlib import Path

from textual.app import App, ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Static
from textual_image.widget import HalfcellImage

from critifusion_tui.tui.widgets.candidate_pane import CandidatePane
from critifusion_tui.tui.widgets.image_view import ImageView
from critifusion_tui.tui.widgets.prompt_editor import PromptEditor
from critifusion_tui.tui.widgets.stage_rail import StageRail
from tests.tui.widgets._support import FakeClock, write_png
from tests.tui.widgets.test_prompt_editor import OVER

SIZE = (80, 24)


class RailMidRun(App):
    def compose(self) -> ComposeResult:
        clock = FakeClock()
        self.rail = StageRail(clock=clock)
        with Horizontal():
            yield self.rail
            yield Static("the stage panes go here", id="main")
        yield Footer()

    def on_mount(self) -> None:
        rail = self.rail
        rail.set_state("prompt", "done", seconds=0.0)
        rail.set_state("tags", "done", seconds=4.21)
        rail.set_state("components", "failed", seconds=30.0, detail="2 of 3 candidates timed out")
        rail.set_state("base", "running", seconds=12.3, detail="[denoise] step 12/50")
        rail.select("base")


class PaneFailed(App):
    def compose(self) -> ComposeResult:
        with Horizontal():
            self.ok = CandidatePane("tags", "candidate", "ollama:llama3.2:3b", id="ok")
            self.bad = CandidatePane("tags", "candidate", "together:Qwen/Qwen2.5-72B-Instruct-Turbo", id="bad")
            yield self.bad
            yield self.ok
        yield Footer()

    def on_mount(self) -> None:
        self.ok.finish("red fox, fresh snow, pine forest, dusk, soft rim light", None, 3.42)
        self.bad.append("red fox, [bold]snow[/], pine")
        self.bad.finish("red fox, [bold]snow[/], pine", "timed out after 30 s (2 retries)", 30.04)
        self.bad.focus()


class PaneStates(App):
    """Four panes at 80x24: done and focused; failed, not focused; cancelled while answering
    (its partial answer kept) and cancelled while waiting."""

    def compose(self) -> ComposeResult:
        clock = FakeClock()
        with Vertical():
            with Horizontal():
                self.done = CandidatePane("tags", "candidate", "ollama:llama3.2:3b", clock=clock, id="done")
                self.bad = CandidatePane("tags", "candidate", "together:flaky", clock=clock, id="bad")
                yield self.done
                yield self.bad
            with Horizontal():
                self.stopped = CandidatePane("tags", "candidate", "together:slow", clock=clock, id="stopped")
                self.never = CandidatePane("tags", "aggregator", "together:merger", clock=clock, id="never")
                yield self.stopped
                yield self.never
        yield Footer()

    def on_mount(self) -> None:
        self.done.finish("red fox, fresh snow, pine forest", None, 3.42)
        self.bad.finish("", "HTTP 500 from together", 0.21)
        self.stopped.start()
        self.stopped.append("red fox, snow")
        self.stopped.clock.advance(2.0)
        self.stopped.cancel()
        self.never.cancel()
        self.done.focus()


class EditorOverLimit(App):
    def compose(self) -> ComposeResult:
        with Vertical():
            self.editor = PromptEditor("Refinement prompt", OVER, id="refine")
            yield self.editor
        yield Footer()

    def on_mount(self) -> None:
        self.editor.text_area.cursor_blink = False
        self.editor.set_author("aggregator:together:Qwen/Qwen2.5-72B-Instruct-Turbo")


class ImageHalfcell(App):
    def __init__(self, png: Path) -> None:
        super().__init__()
        self.png = png

    def compose(self) -> ComposeResult:
        with Horizontal():
            self.base = ImageView("Base", image_class=HalfcellImage, id="base")
            self.refined = ImageView("Refined", image_class=HalfcellImage, id="refined")
            yield self.base
            yield self.refined
        yield Footer()

    def on_mount(self) -> None:
        self.base.show(self.png, "tiny-random: noise")
        self.refined.clear("waiting for the refined image")


def test_rail_mid_run(snap_compare):
    assert snap_compare(RailMidRun(), terminal_size=SIZE)


def test_pane_failed(snap_compare):
    assert snap_compare(PaneFailed(), terminal_size=SIZE)


def test_pane_states(snap_compare):
    assert snap_compare(PaneStates(), terminal_size=SIZE)


def test_prompt_editor_over_the_limit(snap_compare):
    assert snap_compare(EditorOverLimit(), terminal_size=SIZE)


def test_image_view_halfcell(snap_compare, tmp_path: Path):
    png = write_png(tmp_path / "base.png")
    assert snap_compare(ImageHalfcell(png), terminal_size=SIZE)
