"""The Textual app: one main screen that shows every stage of a run as it happens and lets
a person steer the prompt between stages.

It re-implements no stage: it drives the engine's :class:`~critifusion_tui.engine.pipeline.Run`
one stage at a time in workers, and turns the engine's events into messages that one handler
applies to the widgets (workers never touch a widget). The heavy work runs in the engine's
own threads, so the app answers keys while the GPU works.

This module imports textual-image (through the image widget) at the top, as NOTES advise:
it is imported only when the app really starts, never on the `--help` path.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

from textual import on
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.notifications import SeverityLevel
from textual.widgets import ContentSwitcher, Footer, Header, Input, Static
from textual.worker import Worker, WorkerState

from critifusion_tui.config import LoadedConfig, load_config
from critifusion_tui.engine.base_candidates import candidates_of
from critifusion_tui.engine.events import (
    Event,
)
from critifusion_tui.engine.flow import Phase
from critifusion_tui.engine.stages import spec
from critifusion_tui.tui.widgets.base_candidates import BaseCandidatesView
from critifusion_tui.tui.widgets.candidate_pane import CandidatePane
from critifusion_tui.tui.widgets.diffusion_progress import DiffusionProgress
from critifusion_tui.tui.widgets.image_view import ImageView
from critifusion_tui.tui.widgets.log_view import LogBuffer
from critifusion_tui.tui.widgets.prompt_editor import ComponentsEditor, PromptEditor
from critifusion_tui.tui.widgets.round_strip import RoundStrip
from critifusion_tui.tui.rounds_view import RoundsView
from critifusion_tui.tui.engine_view import (
    IMAGE_STAGES,
    PANES_OF_KIND,
    EngineEvent,
    EngineEventsView,
    kind_of,
    one_line,
)
from critifusion_tui.tui.widgets.stage_rail import StageRail, rows_for

# Which view shows a stage, by the kind of stage (the stage table says each stage's kind),
# and which container holds its models' panes.
VIEW_OF_KIND = {
    "prompt": "view-prompt",
    "tags": "view-tags",
    "components": "view-components",
    "base": "view-images",
    "critique": "view-critique",
    "refine": "view-images",
    "rounds": "view-images",
    "done": "view-images",
}
# Where the app stands: composing a prompt, or where the engine's run stands (engine/flow.py).
PROMPT = "prompt"
TAGS_GATE, REFINE_GATE, DONE = Phase.TAGS_GATE.value, Phase.REFINE_GATE.value, Phase.DONE.value
NEXT_HINT = {
    PROMPT: "Type a prompt, then ctrl+r to expand and decompose it.",
    Phase.TEXT.value: "The text stages did not finish: ctrl+r goes on with them.",
    TAGS_GATE: "Edit tags/negative (ctrl+g: components); ctrl+r draws; ctrl+t: no critique",
    REFINE_GATE: "Edit the refinement prompt, then ctrl+r to refine (SpecFusion).",
    Phase.COMPARISON.value: "The comparison on your own prompt did not finish: ctrl+r goes on.",
    DONE: "Done. ctrl+r: a new run from the prompt; ctrl+b: back to the refine gate.",
}
BUSY = "A stage is running: wait, or press escape to cancel it."
PRELOAD_AFTER_S = 1.0  # after start-up, the model's load waits this long for the first paint and keys


# Loggers of the client libraries that say what the engine's events cannot: httpx logs every
# HTTP request with its status, the together client every retry it makes on its own.
PROVIDER_LOGGERS = ("httpx", "together._base_client")


class ProviderLogHandler(logging.Handler):
    """Copies the clients' INFO records (requests, retries) into the app's log buffer.

    Nothing here prints: with no handler on the root logger, INFO records go nowhere else.
    """

    def __init__(self, buffer: LogBuffer) -> None:
        super().__init__(logging.INFO)
        self.buffer = buffer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = "warning" if record.levelno >= logging.WARNING else "info"
            self.buffer.add(level, record.name.split(".")[0], record.getMessage())
        except Exception:
            self.handleError(record)  # logging's own way to report a broken handler


class CritiFusionApp(EngineEventsView, RoundsView, App):
    """CritiFusion, stage by stage."""

    TITLE = "critifusion"
    CSS_PATH = "app.tcss"
    # The footer fits 80 columns: only the keys that act where the person is are shown
    # (check_action), the most used first; every key is in help (f1) and the palette.
    BINDINGS = [
        Binding(
            "ctrl+r",
            "advance",
            "Continue",
            id="run.advance",
            priority=True,
            tooltip="Run the next stage, or continue past the gate you are at",
        ),
        Binding(
            "escape", "cancel", "Cancel", id="run.cancel", tooltip="Stop the running stage; everything done is kept"
        ),
        Binding(
            "ctrl+b",
            "step_back",
            "Back",
            id="run.back",
            tooltip="Go back to the previous gate to change its inputs (asks before discarding work)",
        ),
        Binding(
            "ctrl+t",
            "skip_critique",
            "Skip critique",
            id="run.skip_critique",
            priority=True,
            tooltip="At the tags gate: refine from the tags alone, without a VLM critique (toggles)",
        ),
        Binding(
            "ctrl+g",
            "edit_components",
            "Components",
            id="run.components",
            priority=True,
            show=False,
            tooltip="At the tags gate: edit the components the critic checks",
        ),
        Binding(
            "ctrl+n",
            "new_run",
            "New run",
            id="run.new",
            show=False,
            tooltip="Write a prompt for a new run (the current run is kept; asks if it is unfinished)",
        ),
        Binding(
            "f5",
            "rerun_stage",
            "Re-run",
            id="run.rerun",
            tooltip="Run the stage highlighted in the rail again (asks before discarding work)",
        ),
        Binding(
            "ctrl+l", "show_log", "Log", id="app.log", show=False, tooltip="Every provider call, retry and warning"
        ),
        Binding("ctrl+o", "history", "History", id="app.history", tooltip="Earlier runs: reopen, view, compare"),
        Binding(
            "ctrl+s",
            "settings",
            "Settings",
            id="app.settings",
            show=False,
            tooltip="Routing, seed, size, steps, SpecFusion",
        ),
        Binding("f1", "help", "Help", id="app.help", tooltip="Help for the focused widget"),
        Binding(
            "ctrl+q", "quit_app", "Quit", id="app.quit", priority=True, tooltip="Quit (asks when a run is in flight)"
        ),
    ]

    def __init__(
        self,
        loaded: LoadedConfig,
        prompt: str = "",
        *,
        image_mode: str | None = None,
        image_class: Any = None,
        session: Any = None,
        variants: str = "full",
    ) -> None:
        super().__init__()
        self.loaded = loaded
        self.initial_prompt = prompt
        self.image_mode = image_mode or loaded.settings.tui.images
        self.image_class = image_class  # tests pin a renderer; None lets the mode decide
        self.session = session
        self.variants = variants
        # What the engine reported loading (source, variant, device, scheduler), once it has.
        self._loaded_model: str | None = None
        # The editors' texts as last filled from the run: an edit is a change from these.
        self._shown: dict[str, Any] = {}
        self.active_run: Any = None
        # True while the person writes a prompt for a new run (no run yet, or they left one).
        self.composing = True
        self.worker: Worker | None = None
        self.log_buffer = LogBuffer()
        self.stage_started: dict[str, float] = {}
        self.failures: dict[str, list[str]] = {}
        self.panes: dict[tuple[str, str, str], CandidatePane] = {}
        self._loading_since: float | None = None
        self._phase = PROMPT

    def get_system_commands(self, screen):
        """Every action of the app is also in the command palette (ctrl+p), with its key."""
        yield from super().get_system_commands(screen)
        for binding in self.BINDINGS:
            yield SystemCommand(
                f"{binding.description} ({binding.key})",
                binding.tooltip or binding.description,
                partial(self.call_later, self.run_action, binding.action),
            )

    # ---------------------------------------------------------------- layout

    def compose(self) -> ComposeResult:
        yield Header(icon="*")  # ASCII: Textual's default icon (U+2B58) is tofu in DejaVu Sans Mono
        with Horizontal(id="body"):
            yield StageRail(id="rail")
            with ContentSwitcher(initial="view-prompt", id="views"):
                with Vertical(id="view-prompt"):
                    yield Input(value=self.initial_prompt, placeholder="Describe the image…", id="prompt")
                    yield Static(self._config_summary(), id="config-summary", markup=False)
                with VerticalScroll(id="view-tags", can_focus=False):
                    yield Vertical(id="tags-panes", classes="panes")
                    yield PromptEditor("Positive prompt (tags)", id="positive")
                    yield PromptEditor("Negative prompt", id="negative")
                with VerticalScroll(id="view-components", can_focus=False):
                    yield Vertical(id="components-panes", classes="panes")
                    yield ComponentsEditor("Components (one per line)", id="components")
                with VerticalScroll(id="view-critique", can_focus=False):
                    with Horizontal(id="critique-top"):
                        # The base image the critics looked at, beside what they said of it.
                        yield ImageView(
                            "Base (criticised)", mode=self.image_mode, image_class=self.image_class, id="critique-image"
                        )
                        yield Static("", id="critique-summary", markup=False)
                    yield BaseCandidatesView(mode=self.image_mode, image_class=self.image_class, id="base-candidates")
                    yield Vertical(id="critique-panes", classes="panes")
                    yield PromptEditor("Refinement prompt", id="refinement")
                with Vertical(id="view-images"):
                    with Horizontal(id="images"):
                        yield ImageView("Base", mode=self.image_mode, image_class=self.image_class, id="image-base")
                        yield ImageView(
                            "Refined", mode=self.image_mode, image_class=self.image_class, id="image-refine"
                        )
                    yield RoundStrip(id="rounds", classes="-hidden")
                    with Horizontal(id="images-original", classes="-hidden"):
                        yield ImageView(
                            "Base (your prompt)",
                            mode=self.image_mode,
                            image_class=self.image_class,
                            id="image-base_original",
                        )
                        yield ImageView(
                            "Refined (your prompt)",
                            mode=self.image_mode,
                            image_class=self.image_class,
                            id="image-refine_original",
                        )
                    yield Static("", id="images-summary", markup=False)
        yield Static(NEXT_HINT[PROMPT], id="hint", markup=False)
        yield DiffusionProgress(id="progress")
        # Compact, and without the palette's own entry (ctrl+p still opens it; help says so):
        # at 80 columns the keys of the current place fit.
        yield Footer(compact=True, show_command_palette=False)

    def _config_summary(self) -> str:
        s = self.loaded.settings
        where = str(self.loaded.path) if self.loaded.path else self.loaded.source
        noise = "  (tiny-random: images are noise)" if s.diffusion.model == "tiny-random" else ""
        return (
            f"config      {where}\n"
            f"candidates  {', '.join(s.criticore.candidates)}\n"
            f"aggregator  {', '.join(s.criticore.aggregator)}\n"
            f"vlms        {', '.join(s.criticore.vlms)}\n"
            f"model       {self._loaded_model or s.diffusion.model}{noise}\n"
            f"image       {self._size_summary()}, {s.diffusion.steps} steps, "
            f"seed {s.diffusion.seed}; SpecFusion {s.specfusion.mode}; variants {self.variants}"
            f"{self._beyond_the_paper()}"
        )

    def _beyond_the_paper(self) -> str:
        """Best-of-N bases and critique rounds, when set (nothing for the paper's run)."""
        s = self.loaded.settings
        parts = []
        if s.diffusion.base_candidates > 1:
            parts.append(f"best of {s.diffusion.base_candidates} bases ({s.diffusion.base_pick_from})")
        if s.loop.rounds > 1:
            stop = f", stop at {s.loop.stop_at:g}" if s.loop.stop_at is not None else ""
            parts.append(f"up to {s.loop.rounds} critique rounds ({s.loop.score_from}{stop})")
        return "\nbeyond      " + "; ".join(parts) if parts else ""

    def _size_summary(self) -> str:
        from critifusion_tui.engine.model_source import native_size_hint

        cfg = self.loaded.settings.diffusion
        if "auto" not in (cfg.width, cfg.height):
            return f"{cfg.width}x{cfg.height}"
        native = native_size_hint(cfg.model, cfg.single_file_config)
        width = cfg.width if cfg.width != "auto" else (native[0] if native else "auto")
        height = cfg.height if cfg.height != "auto" else (native[1] if native else "auto")
        return f"{width}x{height} (model's native size)"

    async def on_unmount(self) -> None:
        for name in PROVIDER_LOGGERS:
            logging.getLogger(name).removeHandler(self._provider_log)
        if self.active_run is not None and not self.busy:
            self._leave_run()  # closing the app at a gate: the run is recorded as left
        # The provider clients belong to this event loop: close them before it ends.
        if self.session is not None:
            await self.session.aclose()

    def on_mount(self) -> None:
        self._provider_log = ProviderLogHandler(self.log_buffer)
        for name in PROVIDER_LOGGERS:
            logger = logging.getLogger(name)
            logger.addHandler(self._provider_log)
            if logger.getEffectiveLevel() > logging.INFO:
                logger.setLevel(logging.INFO)
        self.query_one("#prompt", Input).focus()
        self.query_one(StageRail).set_rows(rows_for(self._planned_stages()))
        self._show_where()
        self._apply_width(self.size.width)
        self.set_interval(0.25, self._tick_loading)
        # Once the app is up and idle, the model loads while the person writes a prompt.
        self.set_timer(PRELOAD_AFTER_S, self._preload_model)

    def _preload_model(self) -> None:
        try:
            self._session().preload()
        except Exception as exc:  # the first run says what is wrong; the app stays usable
            self.log_buffer.add("warning", "run", f"could not start loading the model: {exc}")

    def on_resize(self, event) -> None:
        self._apply_width(event.size.width)

    def _apply_width(self, width: int) -> None:
        # Wide terminals get candidate panes side by side; 80 columns stack them.
        self.screen.set_class(width >= 140, "wide")

    # ---------------------------------------------------------------- session and run

    def _session(self):
        if self.session is None:
            self.session = self._new_session()
        return self.session

    def _new_session(self, diffusion=None):
        from critifusion_tui.engine.diffusion import Diffusion
        from critifusion_tui.engine.pipeline import Session

        settings = self.loaded.settings
        # Textual draws on fd 2: the model load may capture only fd 1 (library prints).
        make = partial(Diffusion.from_config, capture_fds=(1,))
        return Session(settings, diffusion=diffusion, make_diffusion=make, overrides=self.loaded.overrides)

    @property
    def busy(self) -> bool:
        return self.worker is not None and self.worker.state in (WorkerState.PENDING, WorkerState.RUNNING)

    @property
    def phase(self) -> str:
        """Where the app shows the run standing: composing a prompt, or the run's phase
        (engine/flow.py) as of the last time the screen was brought up to date."""
        return self._phase

    def _engine_phase(self) -> str:
        if self.composing or self.active_run is None:
            return PROMPT
        return self.active_run.phase.value

    def _emit(self, event: Event) -> None:
        """The engine's event sink: runs on the loop thread; only posts a message."""
        self.post_message(EngineEvent(event))

    def _start(self, work_coro, description: str) -> None:
        """Run engine work in a worker; only one at a time."""
        if self.busy:
            work_coro.close()  # never started: close it rather than leave it unawaited
            self.bell()
            self.notify(BUSY, severity="warning")
            return
        self.worker = self.run_worker(work_coro, name=description, group="stage", exclusive=True, exit_on_error=False)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Keys show in the footer only where they act (help lists them all)."""
        phase = self.phase
        run = self.active_run
        if action == "cancel":
            return self.busy
        if action == "step_back":
            return not self.busy and run is not None and phase != PROMPT
        if action in ("skip_critique", "edit_components"):
            return not self.busy and phase == TAGS_GATE
        if action == "rerun_stage":
            return not self.busy and run is not None and phase != PROMPT
        if action == "advance":
            return not self.busy
        return True

    def _refresh_keys(self) -> None:
        self.refresh_bindings()

    # ---------------------------------------------------------------- showing where the run stands

    def _show(self, stage: str) -> None:
        self.query_one("#views", ContentSwitcher).current = VIEW_OF_KIND[kind_of(stage)]

    def _hint(self, text: str, *, error: bool = False) -> None:
        hint = self.query_one("#hint", Static)
        hint.update(text)
        hint.set_class(error, "-error")

    def _show_where(self) -> None:
        """Make the rail, the hint, the editors and the focus say where the run stands.

        Everything is read from the engine (the run's stages and phase), so after any move
        (advance, back, re-run, cancel, a failure, a reopen) the rail is true."""
        run = self.active_run
        rail = self.query_one(StageRail)
        phase = self._phase = self._engine_phase()
        self._hint(NEXT_HINT.get(phase, ""))
        if run is None:
            self._refresh_keys()
            return
        for stage in run.stages:
            record = run.store.stages.get(stage) or {}
            state = run.stage_state(stage)
            rail.set_state(stage, state, seconds=record.get("seconds"), detail=record.get("error", "") or "")
        rail.set_state("prompt", "done")
        gate = run.current_step().stages[0] if run.gate is not None else None
        if gate is not None and rail.state(gate) not in ("failed", "cancelled"):
            rail.set_state(gate, "gate")
        rail.set_state("done", "done" if run.phase is Phase.DONE else "waiting")
        rail.set_will_skip("critique", run.skip_critique_next and not run.done("critique"))
        self.query_one(BaseCandidatesView).show(candidates_of(run))
        if self.composing:
            self._refresh_keys()
            return
        self._fill_views(run)
        self._refresh_keys()

    def _fill_views(self, run) -> None:
        """The editors hold the run's current prompts; the gate's view is shown and focused."""
        phase = run.phase
        if phase in (Phase.TAGS_GATE, Phase.TEXT):
            self._fill_editor("#positive", "positive")
            self._fill_editor("#negative", "negative")
            editor = self.query_one("#components", ComponentsEditor)
            editor.items = list(run.text("components") or [])
            self._shown["components"] = list(editor.items)  # as shown, after the widget's cleaning
            if phase is Phase.TAGS_GATE:
                self._show("tags")
                self._focus_editor("#positive")
        elif phase is Phase.REFINE_GATE:
            self._fill_editor("#refinement", "refinement")
            self._show_critique_image(run)
            self._show("critique")
            self._focus_editor("#refinement")
        elif phase in (Phase.DONE, Phase.COMPARISON):
            self._show("done")
            self._summarise_images()
        self._fill_rounds(run)

    def _show_critique_image(self, run) -> None:
        record = run.store.stage("base")
        view = self.query_one("#critique-image", ImageView)
        if record:
            view.show(run.store.path(record["image"]), self._noise_label())
        else:
            view.clear()

    def _focus_editor(self, selector: str) -> None:
        """At a gate, the prompt to steer is what the user sees first, focused."""
        editor = self.query_one(selector, PromptEditor)
        editor.text_area.focus()
        # After the new text has been laid out (its height changes with it), bring the
        # editor's label to the top of the view.
        self.set_timer(0.1, lambda: editor.scroll_visible(top=True, animate=False))

    def _fill_editor(self, selector: str, name: str) -> None:
        entry = self.active_run.prompts.get(name) if self.active_run else None
        editor = self.query_one(selector, PromptEditor)
        editor.text = entry["value"] if entry else ""
        # What the person sees may differ from the run's value (the widget drops control
        # characters): an edit is what differs from what was shown, nothing else.
        self._shown[name] = editor.text.strip()
        if entry:
            editor.set_author("you" if entry["by"] == "user" else entry["by"])

    def _changed(self, name: str, now):
        """True when the person changed `name` from what the editor showed."""
        shown = self._shown.get(name)
        before = shown if shown is not None else (self.active_run.text(name) or ("" if name != "components" else []))
        return now != before

    def _editor_value(self, name: str):
        if name == "components":
            return self.query_one("#components", ComponentsEditor).items
        return self.query_one(f"#{name}", PromptEditor).text.strip()

    def _gate_edits(self) -> dict[str, Any]:
        """What the person changed of the gate's fields (only those; nothing else is sent)."""
        gate = self.active_run.gate if self.active_run else None
        if gate is None:
            return {}
        edits = {}
        for name in gate.fields:
            value = self._editor_value(name)
            if self._changed(name, value):
                edits[name] = value
        return edits

    # ---------------------------------------------------------------- ctrl+r: the next step

    def _main_screen_active(self) -> bool:
        """ctrl+r and ctrl+q are priority keys: they must not act under a pushed screen."""
        return self.screen is self.screen_stack[0]

    def action_advance(self) -> None:
        if not self._main_screen_active():
            return
        if self.busy:
            self.notify(BUSY, severity="warning")
            return
        run = self.active_run
        if self.composing or run is None:
            self._start_from_prompt()
        elif run.phase is Phase.DONE:
            # A new run starts from the prompt, which the person may edit first.
            self._compose_prompt("Edit the prompt, then ctrl+r to start a new run (the finished run stays in history).")
        else:
            self._drive(run.advance(self._gate_edits()), "continue")

    def _compose_prompt(self, hint: str) -> None:
        self.composing = True
        self._show("prompt")
        self.query_one("#prompt", Input).focus()
        self._show_where()
        self._hint(hint)

    def _start_from_prompt(self) -> None:
        prompt = self.query_one("#prompt", Input).value.strip()
        if not prompt:
            self.bell()
            self._hint("Type a prompt first.", error=True)
            self._show("prompt")
            self.query_one("#prompt", Input).focus()
            return
        run = self.active_run
        if run is not None and run.phase is not Phase.DONE:
            if prompt == run.prompt:
                # The same prompt: go on with the run the person stepped back from.
                self.composing = False
                if run.gate is not None:
                    self._show_where()
                else:
                    self._drive(run.advance(), "continue")
                return
            self._confirm(
                f"The current run is not finished ({run.phase.value}). Start a new run? "
                "The current one stays in history as abandoned; ctrl+o reopens it.",
                self._new_run,
                yes="New run",
                no="Stay",
            )
            return
        self._new_run()

    def _leave_run(self) -> None:
        if self.active_run is None:
            return
        try:
            self.active_run.leave()
        except Exception as exc:  # a refused write: say so, never lose the app over it
            self.log_buffer.add("error", "run", f"could not record the run as left: {exc}")

    def _new_run(self) -> None:
        prompt = self.query_one("#prompt", Input).value.strip()
        self._leave_run()
        try:
            run = self._session().new_run(prompt, emit=self._emit, variants=self.variants)
        except Exception as exc:  # a run folder that cannot be made: say why, stay usable
            self._hint(f"Cannot start the run: {exc}", error=True)
            self.notify(f"Cannot start the run: {exc}", severity="error", timeout=10, markup=False)
            return
        self.active_run = run
        self.composing = False
        self._reset_views()
        self.log_buffer.add("info", "run", f"run folder {run.folder}")
        self._drive(run.advance(), "tags and components")

    def _drive(self, move, description: str) -> None:
        """Run one of the engine's moves in a worker; when it ends, show where the run stands."""

        async def work() -> None:
            await move

        self._start(work(), description)
        self._refresh_keys()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        from critifusion_tui.engine.pipeline import RunFailed

        if event.worker is not self.worker:
            return
        if event.state == WorkerState.SUCCESS:
            self._show_where()
            self._offer_proposals()
        elif event.state == WorkerState.CANCELLED:
            self._show_where()
            self._hint("Cancelled. Everything done so far is kept; ctrl+r goes on, f5 re-runs a stage.")
        elif event.state == WorkerState.ERROR:
            error = event.worker.error
            message = getattr(error, "message", None) or str(error)
            self._show_where()
            # A failed stage was already said where it happened (rail, pane, log, hint).
            if not isinstance(error, RunFailed) or error.stage == "run":
                self.log_buffer.add("error", event.worker.name, message)
            self._hint(
                f"{getattr(error, 'stage', event.worker.name)} failed: {one_line(message)}  (f5 retries it)",
                error=True,
            )
        self._refresh_keys()

    def _offer_proposals(self) -> None:
        """The models wrote a new value for a prompt the person had edited: show both and let
        the person choose (their edit stays until they do)."""
        run = self.active_run
        if run is None or not run.proposals:
            return
        name, proposal = next(iter(run.proposals.items()))
        mine, new = _as_shown(run.text(name)), _as_shown(proposal["value"])

        def chosen(use_new: bool | None) -> None:
            if use_new:
                run.take_proposal(name)
            else:
                run.drop_proposal(name)
            self._show_where()
            self._offer_proposals()  # the next one, if any

        from critifusion_tui.tui.screens.confirm import ConfirmScreen

        self.push_screen(
            ConfirmScreen(
                f"{proposal['by']} wrote a new {name} prompt, but you had edited it.\n\n"
                f"Yours:\n{mine}\n\nNew:\n{new}\n\nUse the new one?",
                yes="Use the new one",
                no="Keep mine",
            ),
            chosen,
        )

    # ---------------------------------------------------------------- other actions

    def action_cancel(self) -> None:
        if self.busy and self.worker is not None:
            self.worker.cancel()

    def _confirm(self, question: str, then, *, yes: str = "Yes", no: str = "No") -> None:
        from critifusion_tui.tui.screens.confirm import ConfirmScreen

        def answered(ok: bool | None) -> None:
            if ok:
                then()

        self.push_screen(ConfirmScreen(question, yes=yes, no=no), answered)

    def action_rerun_stage(self) -> None:
        """f5: run again the stage the rail highlights, asking first when done work would go."""
        from critifusion_tui.engine.flow import FlowError

        run = self.active_run
        if run is None:
            self._hint("No run yet: ctrl+r starts one.", error=True)
            return
        if self.busy:
            self.notify(BUSY, severity="warning")
            return
        rail = self.query_one(StageRail)
        stage = rail.highlighted_stage
        if stage not in run.stages:
            self._hint("Highlight a stage in the rail (up/down there), then f5 re-runs it.", error=True)
            return
        problem = run.rerun_problem(stage)
        if problem:
            self._hint(f"Cannot re-run {spec(stage).title}: {problem}.", error=True)
            return

        def go() -> None:
            try:
                run.apply_edits(self._gate_edits())  # what the person typed is kept, not lost
            except FlowError as exc:
                self._hint(str(exc), error=True)
                return
            self.composing = False
            self._drive(run.rerun(stage), f"re-run {stage}")

        lost = [s for s in run.rerun_discards(stage) if s != stage]
        if run.done(stage) or lost:
            what = ", ".join(spec(s).title for s in [stage, *lost] if run.done(s))
            self._confirm(f"Re-run {spec(stage).title}? This replaces: {what}.", go, yes="Re-run", no="Keep")
        else:
            go()

    def action_skip_critique(self) -> None:
        run = self.active_run
        if run is None or self.phase != TAGS_GATE:
            self.bell()
            return
        run.set_skip_critique(not run.skip_critique_next)
        self.query_one(StageRail).set_will_skip("critique", run.skip_critique_next)
        state = "will be skipped (ctrl+t again to keep it)" if run.skip_critique_next else "will run"
        self._hint(f"The critique {state}. ctrl+r draws the base image.")

    def action_new_run(self) -> None:
        if self.busy:
            self.notify(BUSY, severity="warning")
            return
        self._compose_prompt("Edit the prompt, then ctrl+r to start a new run (the current run is kept).")

    def action_edit_components(self) -> None:
        if self.phase != TAGS_GATE:
            self.bell()
            return
        self._show("components")
        self.query_one("#components", ComponentsEditor).text_area.focus()

    def action_step_back(self) -> None:
        if self.busy:
            self.bell()
            return
        run = self.active_run
        if run is None or self.composing:
            self.bell()
            return
        if run.back_target() is None:
            # Before the first gate there is only the prompt: editing it means a new run.
            self._compose_prompt(
                "Edit the prompt: ctrl+r with a changed prompt starts a new run,"
                " with the same prompt goes back to the tags gate."
            )
            return
        lost = run.back_discards()

        def go() -> None:
            run.apply_edits(self._gate_edits())
            run.back()
            self._show_where()

        if lost:
            what = ", ".join(spec(s).title for s in lost)
            self._confirm(f"Go back? This discards: {what}.", go, yes="Go back", no="Stay")
        else:
            go()

    def action_show_log(self) -> None:
        from critifusion_tui.tui.screens.log import LogScreen

        # The buffer itself: the screen follows it live; the ledger is read when shown.
        self.push_screen(LogScreen(self.log_buffer, ledger=self._ledger_lines))

    def _ledger_lines(self) -> list[str]:
        from critifusion_tui.engine.ledger import summary_lines

        if self.active_run is None:
            return ["No run yet: the ledger fills as models are called."]
        return summary_lines(self.active_run.ledger_summary())

    def action_settings(self) -> None:
        from critifusion_tui.tui.screens.settings import SettingsScreen

        if self.busy:
            self.notify("Settings can change between runs, not during one.", severity="warning")
            return

        screen = SettingsScreen(self.loaded)

        def saved(changes: dict | None) -> None:
            if changes:
                self._reload_settings(changes, screen.saved_path or self.loaded.path)

        self.push_screen(screen, saved)

    def _reload_settings(self, changes: dict, path: Path | None) -> None:
        """Read back the file just written (it may be the user config dir's, not the one in
        use before), keeping this session's --set and --demo overrides on top."""
        from critifusion_tui.config import ConfigError
        from critifusion_tui.engine.resume import same_model

        try:
            self.loaded = load_config(path, self.loaded.overrides)
        except ConfigError as exc:
            self.notify(str(exc), severity="error", timeout=15, markup=False)
            return
        old = self.session
        # The loaded model serves on only if nothing that decides the load changed.
        keep_model = old is not None and same_model(old.settings.diffusion, self.loaded.settings.diffusion)
        self.session = self._new_session(old.diffusion if keep_model else None)
        if not keep_model:
            self._loaded_model = None
        self.query_one("#config-summary", Static).update(self._config_summary())
        self.notify(f"Saved {len(changes)} setting(s); they apply to the next run.")

    def action_history(self) -> None:
        from critifusion_tui.tui.screens.history import HistoryScreen

        self.push_screen(
            HistoryScreen(
                self.loaded.settings.output.path(),
                image_mode=self.image_mode,
                image_class=self.image_class,
                scorers=lambda: self._session().scorers,
            )
        )

    def on_history_screen_reopen(self, message) -> None:
        self._reopen(Path(message.folder))

    def _reopen(self, folder: Path) -> None:
        """Reopen a run as the engine restores it (Session.resume, as `critifusion run --resume`)."""
        if self.busy:
            self.notify("A stage is running: cancel it first.", severity="warning")
            return
        try:
            run = self._session().resume(folder, emit=self._emit)
        except Exception as exc:
            self.notify(f"Cannot reopen {folder}: {exc}", severity="error", timeout=10, markup=False)
            return
        if self.active_run is not None and self.active_run.folder != run.folder:
            self._leave_run()
        self.active_run = run
        self.composing = False
        self._reset_views()
        self.query_one("#prompt", Input).value = run.prompt
        for stage in run.stages:
            record = run.store.stage(stage)
            if record and record.get("image"):
                self._show_image(stage, run.store.path(record["image"]), self._noise_label())
        self._show_where()
        for text in run.differences:
            self.log_buffer.add("warning", "run", text)
        differs = f" It keeps its own settings ({len(run.differences)} note(s) in the log)." if run.differences else ""
        self.notify(f"Reopened {folder.name}.{differs}", markup=False)

    def action_help(self) -> None:
        from critifusion_tui.tui.screens.help import HelpScreen

        widget: Any = self.focused
        title, text = "critifusion", (self.__doc__ or "").strip()
        while widget is not None:
            help_text = getattr(widget, "HELP", None)
            if help_text:
                title, text = type(widget).__name__, help_text
                break
            widget = widget.parent if hasattr(widget, "parent") else None
        # Every key of the app, also those that do not act here (marked by the help screen).
        keys = [
            (key, active.binding.description, active.binding.id or "")
            for key, active in self.active_bindings.items()
            if active.binding.description
        ]
        known = {k for k, _, _ in keys}
        keys += [
            (b.key, b.description, b.id or "") for b in self.BINDINGS if isinstance(b, Binding) and b.key not in known
        ]
        self.push_screen(HelpScreen(title, text, keys))

    def action_quit_app(self) -> None:
        from critifusion_tui.tui.screens.confirm import ConfirmScreen

        if isinstance(self.screen, ConfirmScreen):
            return  # already asking
        if not self.busy:
            self.exit()
            return

        def answered(yes: bool | None) -> None:
            if yes:
                if self.worker is not None:
                    self.worker.cancel()
                self.exit()

        self.push_screen(ConfirmScreen("A stage is running. Quit anyway? Completed stages are saved."), answered)

    # ---------------------------------------------------------------- notifications

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = True,
    ) -> None:
        """A toast, unless the person is typing in an editor: then the hint line says it (a
        toast there would cover what they type). Errors stay on the hint line until the next
        move; the log keeps everything."""
        if _in_editor(self.focused) and self.screen is self.screen_stack[0]:
            self._hint(one_line(message), error=severity == "error")
            return
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=markup)

    # ---------------------------------------------------------------- messages from widgets

    def on_stage_rail_selected(self, message: StageRail.Selected) -> None:
        """Enter on a stage in the rail shows that stage's view (stages 1 and 2 run at once)."""
        self._show(message.stage)
        if message.stage == "critique" and self.active_run is not None:
            self._show_critique_image(self.active_run)

    def on_base_candidates_view_picked(self, message: BaseCandidatesView.Picked) -> None:
        from critifusion_tui.tui.base_pick import ask_and_pick

        ask_and_pick(self, message.number)

    @on(CandidatePane.Retry)
    def retry_candidate(self, message: CandidatePane.Retry) -> None:
        run = self.active_run
        if run is None or self.busy:
            self.bell()
            return
        message.stop()
        if message.role == "aggregator":
            self.query_one(StageRail).select(message.stage)
            self.action_rerun_stage()
            return
        # The person's edits in the editors are kept: a retry never replaces them silently.
        run.apply_edits(self._gate_edits())
        self._drive(run.rerun(message.stage, only=[message.model]), f"retry {message.model}")

    @on(CandidatePane.UseAnswer)
    def use_answer(self, message: CandidatePane.UseAnswer) -> None:
        if self.active_run is None or self.busy:
            self.bell()
            return
        try:
            self.active_run.use_answer(message.stage, message.model)
        except ValueError as exc:
            self.notify(str(exc), severity="warning", markup=False)
            return
        self._show_where()
        self.notify(f"Using {message.model}'s answer.", markup=False)

    def _noise_label(self) -> str:
        return "tiny-random: noise" if self.loaded.settings.diffusion.model == "tiny-random" else ""

    def _planned_stages(self):
        """The stages a new run will have (the rail's rows before there is a run)."""
        from critifusion_tui.engine.stages import stages_of

        return stages_of(self.variants, self.loaded.settings.loop.rounds)

    def _reset_views(self) -> None:
        for selector in PANES_OF_KIND.values():
            self.query_one(selector, Vertical).remove_children()
        self.panes.clear()
        rail = self.query_one(StageRail)
        stages = self.active_run.stages if self.active_run is not None else ()
        rail.set_rows(rows_for(stages or self._planned_stages()))
        rail.set_state("prompt", "done")
        for view in (*(f"#image-{stage}" for stage in IMAGE_STAGES), "#critique-image"):
            self.query_one(view, ImageView).clear()
        self.query_one("#images-original").add_class("-hidden")
        self.query_one(RoundStrip).clear()
        self.query_one("#image-refine", ImageView).border_title = "Refined"
        self.query_one("#critique-summary", Static).update("")
        self.query_one("#images-summary", Static).update("")
        self.query_one(BaseCandidatesView).show(None)


def _as_shown(value) -> str:
    if isinstance(value, (list, tuple)):
        return "\n".join(f"- {item}" for item in value)
    return str(value or "")


def _in_editor(widget) -> bool:
    """Whether `widget` is (inside) one of the prompt editors."""
    while widget is not None:
        if isinstance(widget, PromptEditor):
            return True
        widget = getattr(widget, "parent", None)
    return False


def run_app(loaded: LoadedConfig, prompt: str = "", *, image_mode: str | None = None, variants: str = "full") -> int:
    app = CritiFusionApp(loaded, prompt, image_mode=image_mode, variants=variants)
    app.run()
    return app.return_code or 0
