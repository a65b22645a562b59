"""The app's view of a step in flight: the engine's events, applied to the widgets.

The engine emits typed events (engine/events.py) through `Run.emit`; the app posts each as an
:class:`EngineEvent` message, and :meth:`EngineEventsView.on_engine_event` is the one place that
applies them: the rail's running stage, each model's pane (made on its first event, stopped when
its stage fails or is cancelled), the loading line and the diffusion progress on the rail's clock,
the images as they are written, and the log. It reads nothing of the run's flow: where the run
stands between steps is the app's `_show_where`, read from the engine.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Static

from critifusion_tui.engine.events import (
    BaseCandidates,
    CandidateDelta,
    CandidateFinished,
    CandidateStarted,
    DiffusionStep,
    Event,
    ImageReady,
    ModelLoaded,
    ModelLoading,
    Notice,
    RoundScored,
    StageCancelled,
    StageFailed,
    StageFinished,
    StageSkipped,
    StageStarted,
)
from critifusion_tui.engine.stages import ORIGINAL, TABLE, branch_of, spec
from critifusion_tui.tui.app_surface import AppSurface
from critifusion_tui.tui.widgets.base_candidates import BaseCandidatesView
from critifusion_tui.tui.widgets.candidate_pane import CandidatePane
from critifusion_tui.tui.widgets.diffusion_progress import DiffusionProgress
from critifusion_tui.tui.widgets.image_view import ImageView
from critifusion_tui.tui.widgets.stage_rail import StageRail

# Which container holds a stage's models' panes, by the kind of stage.
PANES_OF_KIND = {
    "tags": "#tags-panes",
    "components": "#components-panes",
    "critique": "#critique-panes",
    "rounds": "#critique-panes",  # each round's critics, below the first critique's
}
RUNNING_HINT = {
    "tags": "Expanding the prompt into tags",
    "components": "Decomposing the prompt into components",
    "base": "Drawing the base image",
    "critique": "The critics are looking at the image",
    "refine": "Refining with SpecFusion",
    "rounds": "Critique rounds: criticising and refining again",
}
# The stages that draw an image; each has an ImageView "#image-<stage>".
IMAGE_STAGES = tuple(stage for stage, stage_spec in TABLE.items() if stage_spec.image)


def kind_of(stage: str) -> str:
    """The stage's kind (tags ... refine) from the stage table; the rail's own rows as is."""
    try:
        return spec(stage).kind
    except ValueError:
        return stage


def one_line(text: str, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


class EngineEvent(Message):
    """An engine event, delivered to the app's one handler on the loop thread."""

    def __init__(self, event: Event) -> None:
        super().__init__()
        self.event = event


class EngineEventsView(AppSurface):
    """Mixed into the app: what a step in flight shows. The app supplies the widgets, the log
    buffer, the hint line and the run."""

    # Supplied by CritiFusionApp.
    log_buffer: Any
    panes: dict[tuple[str, str, str], CandidatePane]
    stage_started: dict[str, float]
    failures: dict[str, list[str]]
    _loading_since: float | None
    _loaded_model: str | None

    if TYPE_CHECKING:  # CritiFusionApp's own helpers (tui/app_surface.py has the rest)

        def _config_summary(self) -> str: ...
        def _show(self, stage: str) -> None: ...
        def _show_critique_image(self, run: Any) -> None: ...
        def _on_round_scored(self, event: RoundScored) -> None: ...
        def _on_rounds_started(self) -> None: ...

    def on_engine_event(self, message: EngineEvent) -> None:
        event = message.event
        rail = self.query_one(StageRail)
        stage = event.stage
        on_rail = stage in rail.rows
        if isinstance(event, StageStarted):
            self.stage_started[stage] = time.monotonic()
            self.failures[stage] = []
            if on_rail:
                rail.set_state(stage, "running", detail=event.detail)
            self._show(stage)
            if kind_of(stage) == "critique" and self.active_run is not None:
                self._show_critique_image(self.active_run)
            if stage == "rounds":
                self._on_rounds_started()
            self._hint(f"{RUNNING_HINT.get(kind_of(stage), stage)}… escape cancels (what is done is kept).")
            self.log_buffer.add("info", stage, f"started {event.detail}".strip())
            self._refresh_keys()
        elif isinstance(event, BaseCandidates):
            self.query_one(BaseCandidatesView).show(event)
        elif isinstance(event, CandidateStarted | CandidateDelta) and kind_of(stage) not in PANES_OF_KIND:
            pass  # critics rating best-of-N bases: no pane (their ratings are on the thumbnails)
        elif isinstance(event, CandidateStarted):
            self._pane(stage, event.role, event.model).start()
            what = "offline rules, no request" if event.model == "rules" else "request sent"
            self.log_buffer.add("info", stage, f"{event.role} {event.model}: {what}")
        elif isinstance(event, CandidateDelta):
            self._pane(stage, event.role, event.model).append(event.text)
        elif isinstance(event, CandidateFinished):
            if kind_of(stage) in PANES_OF_KIND:
                self._pane(stage, event.role, event.model).finish(
                    event.text, event.error, event.seconds, event.notes, origin=event.origin
                )
            if event.error:
                self.failures.setdefault(stage, []).append(event.error)
                self.log_buffer.add("warning", stage, f"{event.role} {event.model} failed: {event.error}")
            else:
                notes = f" ({'; '.join(event.notes)})" if event.notes else ""
                where = {"cache": " from the cache", "replay": " (replayed)"}.get(event.origin, "")
                self.log_buffer.add(
                    "info", stage, f"{event.role} {event.model} answered{where} in {event.seconds:.1f} s{notes}"
                )
        elif isinstance(event, ModelLoading):
            self._loading_since = time.monotonic()
            self._loading_model = event.model
            self._tick_loading()
            self.log_buffer.add("info", stage, f"loading {event.model}")
        elif isinstance(event, DiffusionStep):
            self._loading_since = None
            self.query_one(DiffusionProgress).update_step(
                stage, event.step, event.total, event.elapsed, since=self.stage_started.get(stage)
            )
        elif isinstance(event, RoundScored):
            self._on_round_scored(event)
        elif isinstance(event, ImageReady):
            self._show_image(stage, event.path, event.label)
            self.log_buffer.add("info", stage, f"image {event.path}")
        elif isinstance(event, StageFinished):
            if on_rail:
                rail.set_state(stage, "done", seconds=event.seconds)
            self._stop_progress()
            self._report_failures(stage)
            self.log_buffer.add("info", stage, f"done in {event.seconds:.1f} s")
        elif isinstance(event, StageFailed):
            if on_rail:
                rail.set_state(stage, "failed", seconds=event.seconds, detail=event.error)
            self._stop_progress()
            self._stop_panes(stage, cancelled=False)
            # The error may quote model output or paths: plain text, never markup.
            self._hint(f"{stage} failed: {one_line(event.error, 100)}  (f5 retries; ctrl+l: all)", error=True)
            self.log_buffer.add("error", stage, event.error)
        elif isinstance(event, StageCancelled):
            if on_rail:
                rail.set_state(stage, "cancelled", seconds=event.seconds, detail="cancelled by you")
            self._stop_progress()
            self._stop_panes(stage, cancelled=True)
            self.log_buffer.add("info", stage, f"cancelled after {event.seconds:.1f} s")
        elif isinstance(event, StageSkipped):
            if on_rail:
                rail.set_state(stage, "skipped")
            self.log_buffer.add("info", stage, f"skipped: {event.reason}")
        elif isinstance(event, ModelLoaded):
            self._loading_since = None
            self.log_buffer.add("info", stage, f"model: {event.summary}")
            self._loaded_model = event.summary
            self.query_one("#config-summary", Static).update(self._config_summary())
        elif isinstance(event, Notice):
            self.log_buffer.add(event.level, stage or "run", event.message)
            if stage == "critique" and event.level == "info":
                self.query_one("#critique-summary", Static).update(Text(event.message))
        if isinstance(event, StageFinished) and stage == "critique":
            self._summarise_critique()

    def _tick_loading(self) -> None:
        """While the model loads (seconds for a real one), the progress line says what loads
        and for how long, on the same clock as the rail."""
        if self._loading_since is None:
            return
        elapsed = time.monotonic() - self._loading_since
        self.query_one(DiffusionProgress).reset(f"loading {self._loading_model}… {elapsed:.1f} s")

    def _stop_progress(self) -> None:
        self._loading_since = None
        self.query_one(DiffusionProgress).reset()

    def _stop_panes(self, stage: str, *, cancelled: bool) -> None:
        """Panes of `stage` still waiting or answering stop counting: the stage ended."""
        for (pane_stage, _, _), pane in self.panes.items():
            if pane_stage == stage and pane.state in ("waiting", "answering"):
                if cancelled:
                    pane.cancel()
                else:
                    pane.finish("", "the stage failed before this model answered", pane.seconds or 0.0, ())

    def _show_image(self, stage: str, path: Path, label: str) -> None:
        if stage == "rounds":  # each round's image, in the refined image's place
            view = self.query_one("#image-refine", ImageView)
            view.border_title = "Refined, latest round"
            view.show(path, label)
            return
        if stage not in IMAGE_STAGES:
            return
        if branch_of(stage) is ORIGINAL:
            self.query_one("#images-original").remove_class("-hidden")
        self.query_one(f"#image-{stage}", ImageView).show(path, label)

    def _report_failures(self, stage: str) -> None:
        """One line per stage with failures: how many, and the first reason with its fix."""
        failed = self.failures.get(stage) or []
        if failed:
            more = f" (and {len(failed) - 1} more; ctrl+l shows all)" if len(failed) > 1 else ""
            self.notify(f"{stage}: {failed[0]}{more}", severity="warning", timeout=8, markup=False)

    def _pane(self, stage: str, role: str, model: str) -> CandidatePane:
        """The pane of one model in one stage, made when its first event arrives."""
        key = (stage, role, model)
        pane = self.panes.get(key)
        if pane is None:
            pane = self.panes[key] = CandidatePane(stage, role, model)
            self.query_one(PANES_OF_KIND[kind_of(stage)], Vertical).mount(pane)
        return pane

    def _summarise_critique(self) -> None:
        record = self.active_run.store.stage("critique") if self.active_run else None
        if not record or record.get("skipped"):
            return
        issues = [f"  - {issue}" for issue in record.get("issues", [])] or ["  (none)"]
        lines = ["Merged issues:", *issues]
        if record.get("alignment") is not None:
            lines.append(f"Alignment rating: {record['alignment']:g} / 100")
        lines.append(f"Critic's refined prompt: {record.get('refined', '')}")
        self.query_one("#critique-summary", Static).update(Text("\n".join(lines)))

    def _summarise_images(self) -> None:
        record = self.active_run.store.stage("refine") if self.active_run else None
        if not record:
            return
        source = record.get("alignment_from")
        rated = ""
        if isinstance(source, dict) and isinstance(source.get("alignment"), (int, float)):
            value = source.get("value")
            raw = f" {value:.4g}" if isinstance(value, (int, float)) else ""
            rated = f", alignment {source['alignment']:g} / 100 from {source.get('source')}{raw}"
        self.query_one("#images-summary", Static).update(
            Text(
                f"{self.active_run.folder}\nrefined with strength {record['strength']:.2f}, guidance {record['guidance']:g}, "
                f"{record['steps']} steps, rho_t {record['rho_t']:g}, seed {record['seed']} ({record['mode']}{rated})"
            )
        )
