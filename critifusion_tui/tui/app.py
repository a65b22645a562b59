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
import time
from functools import partial
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import ContentSwitcher, Footer, Header, Input, Static
from textual.worker import Worker, WorkerState

from critifusion_tui.config import LoadedConfig, load_config
from critifusion_tui.engine.events import (
    CandidateDelta,
    CandidateFinished,
    CandidateStarted,
    DiffusionStep,
    Event,
    ImageReady,
    ModelLoaded,
    Notice,
    StageFailed,
    StageFinished,
    StageSkipped,
    StageStarted,
)
from critifusion_tui.tui.widgets.candidate_pane import CandidatePane
from critifusion_tui.tui.widgets.diffusion_progress import DiffusionProgress
from critifusion_tui.tui.widgets.image_view import ImageView
from critifusion_tui.tui.widgets.log_view import LogBuffer
from critifusion_tui.tui.widgets.prompt_editor import ComponentsEditor, PromptEditor
from critifusion_tui.tui.widgets.stage_rail import StageRail

# Which view shows which stage, and which pane container holds its models' answers.
VIEW_OF = {
    "prompt": "view-prompt", "tags": "view-tags", "components": "view-components",
    "base": "view-images", "critique": "view-critique", "refine": "view-images", "done": "view-images",
}
PANES_OF = {"tags": "#tags-panes", "components": "#components-panes", "critique": "#critique-panes"}
# Where the app stands between stages; ctrl+r moves it on.
PROMPT, TAGS_GATE, REFINE_GATE, DONE = "prompt", "tags-gate", "refine-gate", "done"
NEXT_HINT = {
    PROMPT: "Type a prompt, then ctrl+r to expand and decompose it.",
    TAGS_GATE: "Edit the tags, negative or components, then ctrl+r to draw the base image (ctrl+k skips the critique).",
    REFINE_GATE: "Edit the refinement prompt, then ctrl+r to refine (SpecFusion).",
    DONE: "Done. ctrl+r starts a new run; ctrl+o opens earlier runs.",
}


BUSY = "A stage is running: wait, or press escape to cancel it."
RUNNING_HINT = {
    "tags": "Expanding the prompt into tags", "components": "Decomposing the prompt into components",
    "base": "Drawing the base image", "critique": "The critics are looking at the image",
    "refine": "Refining with SpecFusion",
}


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


class EngineEvent(Message):
    """An engine event, delivered to the app's one handler on the loop thread."""

    def __init__(self, event: Event) -> None:
        super().__init__()
        self.event = event


class CritiFusionApp(App):
    """CritiFusion, stage by stage."""

    TITLE = "critifusion"
    CSS_PATH = "app.tcss"
    BINDINGS = [
        Binding("ctrl+r", "advance", "Run / continue", id="run.advance", priority=True,
                tooltip="Run the next stage, or continue past the gate you are at"),
        Binding("escape", "cancel", "Cancel", id="run.cancel",
                tooltip="Stop the running stage; everything done is kept"),
        Binding("f5", "rerun_stage", "Re-run stage", id="run.rerun",
                tooltip="Run the shown stage again with the inputs as they are now"),
        Binding("ctrl+k", "skip_critique", "Skip critique", id="run.skip_critique",
                tooltip="At the tags gate: refine from the tags alone, without a VLM critique"),
        Binding("ctrl+b", "step_back", "Back", id="run.back",
                tooltip="Go back to the previous gate to change its inputs"),
        Binding("ctrl+l", "show_log", "Log", id="app.log", tooltip="Every provider call, retry and warning"),
        Binding("ctrl+s", "settings", "Settings", id="app.settings", tooltip="Routing, seed, size, steps, SpecFusion"),
        Binding("ctrl+o", "history", "History", id="app.history", tooltip="Earlier runs: reopen, view, compare"),
        Binding("f1", "help", "Help", id="app.help", tooltip="Help for the focused widget"),
        Binding("ctrl+q", "quit_app", "Quit", id="app.quit", priority=True, tooltip="Quit (asks when a run is in flight)"),
    ]

    def __init__(self, loaded: LoadedConfig, prompt: str = "", *, image_mode: str | None = None,
                 image_class: Any = None, session: Any = None) -> None:
        super().__init__()
        self.loaded = loaded
        self.initial_prompt = prompt
        self.image_mode = image_mode or loaded.settings.tui.images
        self.image_class = image_class  # tests pin a renderer; None lets the mode decide
        self.session = session
        # What the engine reported loading (source, variant, device, scheduler), once it has.
        self._loaded_model: str | None = None
        # The editors' texts as last filled from the run: an edit is a change from these.
        self._shown: dict[str, Any] = {}
        self.active_run: Any = None
        self.phase = PROMPT
        self.skip_next_critique = False
        self.worker: Worker | None = None
        self.log_buffer = LogBuffer()
        self.stage_started: dict[str, float] = {}
        self.failures: dict[str, list[str]] = {}
        self.panes: dict[tuple[str, str, str], CandidatePane] = {}

    def get_system_commands(self, screen):
        """Every action of the app is also in the command palette (ctrl+p), with its key."""
        yield from super().get_system_commands(screen)
        for binding in self.BINDINGS:
            yield SystemCommand(
                f"{binding.description} ({binding.key})", binding.tooltip or binding.description,
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
                    yield Vertical(id="critique-panes", classes="panes")
                    yield Static("", id="critique-summary", markup=False)
                    yield PromptEditor("Refinement prompt", id="refinement")
                with Vertical(id="view-images"):
                    with Horizontal(id="images"):
                        yield ImageView("Base", mode=self.image_mode, image_class=self.image_class, id="image-base")
                        yield ImageView("Refined", mode=self.image_mode, image_class=self.image_class, id="image-refined")
                    yield Static("", id="images-summary", markup=False)
        yield Static(NEXT_HINT[PROMPT], id="hint", markup=False)
        yield DiffusionProgress(id="progress")
        yield Footer()

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
            f"seed {s.diffusion.seed}; SpecFusion {s.specfusion.mode}"
        )

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
        self._set_phase(PROMPT)
        self._apply_width(self.size.width)

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
        diffusion = diffusion or Diffusion.from_config(settings.diffusion, capture_fds=(1,))
        return Session(settings, diffusion=diffusion)

    @property
    def busy(self) -> bool:
        return self.worker is not None and self.worker.state in (WorkerState.PENDING, WorkerState.RUNNING)

    def _emit(self, event: Event) -> None:
        """The engine's event sink: runs on the loop thread; only posts a message."""
        self.post_message(EngineEvent(event))

    def _set_phase(self, phase: str) -> None:
        self.phase = phase
        self.query_one("#hint", Static).update(NEXT_HINT[phase])
        rail = self.query_one(StageRail)
        # The stage after a gate shows that it waits for you, unless it just failed: the
        # failure stays visible until it runs again.
        if phase == TAGS_GATE and rail.state("base") != "failed":
            rail.set_state("base", "gate")
        elif phase == REFINE_GATE and rail.state("refine") != "failed":
            rail.set_state("refine", "gate")
        elif phase == DONE:
            rail.set_state("done", "done")

    def _show(self, stage: str) -> None:
        self.query_one("#views", ContentSwitcher).current = VIEW_OF[stage]

    def _start(self, work_coro, description: str) -> None:
        """Run engine work in a worker; only one at a time."""
        if self.busy:
            work_coro.close()  # never started: close it rather than leave it unawaited
            self.bell()
            self.notify(BUSY, severity="warning")
            return
        self.worker = self.run_worker(work_coro, name=description, group="stage", exclusive=True, exit_on_error=False)

    # ---------------------------------------------------------------- ctrl+r: the next stage

    def _main_screen_active(self) -> bool:
        """ctrl+r and ctrl+q are priority keys: they must not act under a pushed screen."""
        return self.screen is self.screen_stack[0]

    def action_advance(self) -> None:
        if not self._main_screen_active():
            return
        if self.busy:
            self.notify(BUSY, severity="warning")
            return
        if self.phase in (PROMPT, DONE):
            self._new_run()
        elif self.phase == TAGS_GATE:
            self._apply_tag_edits()
            self._start(self._base_and_critique(), "base image and critique")
        elif self.phase == REFINE_GATE:
            self._apply_refinement_edit()
            self._start(self._refine(), "refinement")

    def _new_run(self) -> None:
        prompt = self.query_one("#prompt", Input).value.strip()
        if not prompt:
            self.bell()
            self.notify("Type a prompt first.", severity="warning")
            self._show("prompt")
            self.query_one("#prompt", Input).focus()
            return
        try:
            self.active_run = self._session().new_run(prompt, emit=self._emit)
        except Exception as exc:  # a run folder that cannot be made: say why, stay usable
            self.notify(f"Cannot start the run: {exc}", severity="error", timeout=10)
            return
        self._reset_views()
        self.log_buffer.add("info", "run", f"run folder {self.active_run.folder}")
        self._start(self._text_stages(), "tags and components")

    async def _text_stages(self) -> str:
        await self.active_run.text_stages()
        return TAGS_GATE

    async def _base_and_critique(self) -> str:
        if not self.active_run.done("base"):
            await self.active_run.base_stage()
        if not self.active_run.done("critique"):
            if self.skip_next_critique:
                self.active_run.skip_critique()
            else:
                await self.active_run.critique_stage()
        return REFINE_GATE

    async def _refine(self) -> str:
        await self.active_run.refine_stage()
        self.active_run.store.finish("done")
        return DONE

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker is not self.worker:
            return
        if event.state == WorkerState.SUCCESS and isinstance(event.worker.result, str):
            self._set_phase(event.worker.result)
            self._after_stage()
        elif event.state == WorkerState.CANCELLED:
            self.notify("Cancelled. Everything done so far is kept; ctrl+r goes on, f5 re-runs a stage.")
            self._set_phase(self._phase_from_run())
        elif event.state == WorkerState.ERROR:
            error = event.worker.error
            message = getattr(error, "message", None) or str(error)
            self.notify(f"{event.worker.name} failed: {message}", severity="error", timeout=15)
            self.log_buffer.add("error", event.worker.name, message)
            self._set_phase(self._phase_from_run())

    def _phase_from_run(self) -> str:
        """Where a run stands after a cancel or a failure: the last gate it passed."""
        if self.active_run is None or not (self.active_run.done("tags") and self.active_run.done("components")):
            return PROMPT
        if self.active_run.done("refine"):
            return DONE
        if self.active_run.done("base") and self.active_run.done("critique"):
            return REFINE_GATE
        return TAGS_GATE

    def _after_stage(self) -> None:
        """Put the engine's current prompts into the editors and focus what comes next."""
        run = self.active_run
        if run is None:
            return
        if self.phase == TAGS_GATE:
            self._fill_editor("#positive", "positive")
            self._fill_editor("#negative", "negative")
            components = run.text("components") or []
            editor = self.query_one("#components", ComponentsEditor)
            editor.items = list(components)
            self._shown_text()["components"] = list(editor.items)  # as shown, after the widget's cleaning
            self._show("tags")
            self._focus_editor("#positive")
        elif self.phase == REFINE_GATE:
            self._fill_editor("#refinement", "refinement")
            self._show("critique")
            self._focus_editor("#refinement")
        elif self.phase == DONE:
            self._show("done")
            self._summarise_images()

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
        self._shown_text()[name] = editor.text.strip()
        if entry:
            editor.set_author("you" if entry["by"] == "user" else entry["by"])

    def _shown_text(self) -> dict:
        """The editors' texts as last filled from the run, per prompt name."""
        return self._shown

    def _changed(self, name: str, now):
        """True when the person changed `name` from what the editor showed."""
        shown = self._shown_text().get(name)
        before = shown if shown is not None else (self.active_run.text(name) or ("" if name != "components" else []))
        return now != before

    def _apply_tag_edits(self) -> None:
        for selector, name in (("#positive", "positive"), ("#negative", "negative")):
            text = self.query_one(selector, PromptEditor).text.strip()
            if self._changed(name, text):
                self.active_run.edit(name, text)
        items = self.query_one("#components", ComponentsEditor).items
        if self._changed("components", items):
            self.active_run.edit("components", items)

    def _apply_refinement_edit(self) -> None:
        text = self.query_one("#refinement", PromptEditor).text.strip()
        if self._changed("refinement", text):
            self.active_run.edit("refinement", text)

    # ---------------------------------------------------------------- other actions

    def action_cancel(self) -> None:
        if self.busy:
            self.worker.cancel()

    def action_rerun_stage(self) -> None:
        """f5: run again the stage the rail has selected (or the one shown)."""
        if self.active_run is None:
            self.notify("No run yet: ctrl+r starts one.", severity="warning")
            return
        if self.busy:
            self.notify(BUSY, severity="warning")
            return
        stage = self.query_one(StageRail).selected or "tags"
        if stage in ("tags", "components"):
            coro = getattr(self.active_run, f"{stage}_stage")()
            self._start(self._then(coro, TAGS_GATE), f"re-run {stage}")
        elif stage == "base":
            self._apply_tag_edits()
            self.active_run.forget("base")  # else the step below would find it done and skip it
            self._start(self._base_and_critique(), "re-run base")
        elif stage == "critique":
            self._start(self._then(self.active_run.critique_stage(), REFINE_GATE), "re-run critique")
        elif stage in ("refine", "done"):
            self._apply_refinement_edit()
            self._start(self._refine(), "re-run refinement")
        else:
            self.notify("Select a stage in the rail to re-run it.", severity="warning")

    async def _then(self, coro, phase: str) -> str:
        await coro
        return phase

    def action_skip_critique(self) -> None:
        self.skip_next_critique = not self.skip_next_critique
        state = "will be skipped" if self.skip_next_critique else "will run"
        self.notify(f"The critique {state}.")

    def action_step_back(self) -> None:
        if self.busy:
            self.bell()
            return
        if self.phase in (REFINE_GATE, DONE):
            self._set_phase(TAGS_GATE)
            self._after_stage()
        elif self.phase == TAGS_GATE:
            self._set_phase(PROMPT)
            self._show("prompt")
            self.query_one("#prompt", Input).focus()

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

        try:
            self.loaded = load_config(path, self.loaded.overrides)
        except ConfigError as exc:
            self.notify(str(exc), severity="error", timeout=15)
            return
        old = self.session
        # The loaded model serves on only if nothing that decides the load changed.
        load_keys = ("model", "device", "dtype", "variant", "single_file_config", "cpu_offload", "vae_tiling", "compile")
        keep_model = old is not None and all(
            getattr(old.settings.diffusion, k) == getattr(self.loaded.settings.diffusion, k) for k in load_keys
        )
        self.session = self._new_session(old.diffusion if keep_model else None)
        if not keep_model:
            self._loaded_model = None
        self.query_one("#config-summary", Static).update(self._config_summary())
        self.notify(f"Saved {len(changes)} setting(s); they apply to the next run.")

    def action_history(self) -> None:
        from critifusion_tui.tui.screens.history import HistoryScreen

        self.push_screen(
            HistoryScreen(self.loaded.settings.output.path(), image_mode=self.image_mode, image_class=self.image_class,
                          scorers=lambda: self._session().scorers)
        )

    def on_history_screen_reopen(self, message) -> None:
        self._reopen(Path(message.folder))

    def _reopen(self, folder: Path) -> None:
        if self.busy:
            self.notify("A stage is running: cancel it first.", severity="warning")
            return
        try:
            self.active_run = self._session().resume(folder, emit=self._emit)
        except Exception as exc:
            self.notify(f"Cannot reopen {folder}: {exc}", severity="error", timeout=10)
            return
        self._reset_views()
        self.query_one("#prompt", Input).value = self.active_run.prompt
        rail = self.query_one(StageRail)
        for stage in ("tags", "components", "base", "critique", "refine"):
            record = self.active_run.store.stages.get(stage)
            if record:
                rail.set_state(stage, record.get("status", "waiting"), seconds=record.get("seconds"))
        for stage, view in (("base", "#image-base"), ("refine", "#image-refined")):
            record = self.active_run.store.stage(stage)
            if record:
                self.query_one(view, ImageView).show(self.active_run.store.path(record["image"]), self._noise_label())
        self._set_phase(self._phase_from_run())
        self._after_stage()
        self.notify(f"Reopened {folder.name}.")

    def action_help(self) -> None:
        from critifusion_tui.tui.screens.help import HelpScreen

        widget = self.focused
        title, text = "critifusion", (self.__doc__ or "").strip()
        while widget is not None:
            help_text = getattr(widget, "HELP", None)
            if help_text:
                title, text = type(widget).__name__, help_text
                break
            widget = widget.parent if hasattr(widget, "parent") else None
        # Every key active here: the focused widget's, its screen's and the app's.
        keys = [
            (key, active.binding.description, active.binding.id or "")
            for key, active in self.active_bindings.items()
            if active.binding.description
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
                self.worker.cancel()
                self.exit()

        self.push_screen(ConfirmScreen("A stage is running. Quit anyway? Completed stages are saved."), answered)

    # ---------------------------------------------------------------- messages from widgets

    def on_stage_rail_selected(self, message: StageRail.Selected) -> None:
        """Enter on a stage in the rail shows that stage's view (stages 1 and 2 run at once)."""
        self._show(message.stage)

    @on(CandidatePane.Retry)
    def retry_candidate(self, message: CandidatePane.Retry) -> None:
        if self.active_run is None or self.busy:
            self.bell()
            return
        if message.role == "aggregator":
            message.stop()
            self.action_rerun_stage()
            return
        stage_method = {"tags": self.active_run.tags_stage, "components": self.active_run.components_stage,
                        "critique": self.active_run.critique_stage}[message.stage]
        phase = REFINE_GATE if message.stage == "critique" else TAGS_GATE
        self._start(self._then(stage_method(only=[message.model]), phase), f"retry {message.model}")

    @on(CandidatePane.UseAnswer)
    def use_answer(self, message: CandidatePane.UseAnswer) -> None:
        if self.active_run is None or self.busy:
            self.bell()
            return
        try:
            self.active_run.use_answer(message.stage, message.model)
        except ValueError as exc:
            self.notify(str(exc), severity="warning")
            return
        self._set_phase(REFINE_GATE if message.stage == "critique" else TAGS_GATE)
        self._after_stage()
        self.notify(f"Using {message.model}'s answer.")

    # ---------------------------------------------------------------- engine events

    def on_engine_event(self, message: EngineEvent) -> None:
        event = message.event
        rail = self.query_one(StageRail)
        stage = "critique" if event.stage == "critique_original" else event.stage
        if isinstance(event, StageStarted):
            self.stage_started[event.stage] = time.monotonic()
            self.failures[event.stage] = []
            rail.set_state(stage, "running", detail=event.detail)
            if stage in VIEW_OF:
                self._show(stage)
            self.query_one("#hint", Static).update(f"{RUNNING_HINT.get(stage, stage)}… escape cancels (what is done is kept).")
            self.log_buffer.add("info", event.stage, f"started {event.detail}".strip())
        elif isinstance(event, CandidateStarted):
            self._pane(stage, event.role, event.model).start()
            what = "offline rules, no request" if event.model == "rules" else "request sent"
            self.log_buffer.add("info", event.stage, f"{event.role} {event.model}: {what}")
        elif isinstance(event, CandidateDelta):
            self._pane(stage, event.role, event.model).append(event.text)
        elif isinstance(event, CandidateFinished):
            self._pane(stage, event.role, event.model).finish(
                event.text, event.error, event.seconds, event.notes, origin=event.origin
            )
            if event.error:
                self.failures.setdefault(event.stage, []).append(event.error)
                self.log_buffer.add("warning", event.stage, f"{event.role} {event.model} failed: {event.error}")
            else:
                notes = f" ({'; '.join(event.notes)})" if event.notes else ""
                where = {"cache": " from the cache", "replay": " (replayed)"}.get(event.origin, "")
                self.log_buffer.add(
                    "info", event.stage, f"{event.role} {event.model} answered{where} in {event.seconds:.1f} s{notes}"
                )
        elif isinstance(event, DiffusionStep):
            self.query_one(DiffusionProgress).update_step(event.stage, event.step, event.total, event.elapsed)
        elif isinstance(event, ImageReady):
            view = "#image-base" if event.stage in ("base", "base_original") else "#image-refined"
            self.query_one(view, ImageView).show(event.path, event.label)
            self.log_buffer.add("info", event.stage, f"image {event.path}")
        elif isinstance(event, StageFinished):
            rail.set_state(stage, "done", seconds=event.seconds)
            self.query_one(DiffusionProgress).reset()
            self._report_failures(event.stage)
            self.log_buffer.add("info", event.stage, f"done in {event.seconds:.1f} s")
        elif isinstance(event, StageFailed):
            rail.set_state(stage, "failed", seconds=event.seconds)
            self.query_one(DiffusionProgress).reset()
            if event.error != "cancelled":
                # The error may quote model output or paths: plain text, never markup.
                self.notify(f"{event.stage} failed: {event.error}\nf5 retries it.", severity="error", timeout=20, markup=False)
            self.log_buffer.add("error", event.stage, event.error)
        elif isinstance(event, StageSkipped):
            rail.set_state(stage, "skipped")
            self.log_buffer.add("info", event.stage, f"skipped: {event.reason}")
        elif isinstance(event, ModelLoaded):
            self.log_buffer.add("info", event.stage, f"model: {event.summary}")
            self._loaded_model = event.summary
            self.query_one("#config-summary", Static).update(self._config_summary())
        elif isinstance(event, Notice):
            self.log_buffer.add(event.level, event.stage or "run", event.message)
            if event.stage == "critique" and event.level == "info":
                self.query_one("#critique-summary", Static).update(Text(event.message))
        if isinstance(event, StageFinished) and stage == "critique":
            self._summarise_critique()

    def _report_failures(self, stage: str) -> None:
        """One notification per stage with failures: how many, and the first reason with its fix."""
        failed = self.failures.get(stage) or []
        if failed:
            more = f" (and {len(failed) - 1} more; ctrl+l shows all)" if len(failed) > 1 else ""
            self.notify(f"{stage}: {failed[0]}{more}", severity="warning", timeout=15)

    def _pane(self, stage: str, role: str, model: str) -> CandidatePane:
        """The pane of one model in one stage, made when its first event arrives."""
        key = (stage, role, model)
        pane = self.panes.get(key)
        if pane is None:
            pane = self.panes[key] = CandidatePane(stage, role, model)
            self.query_one(PANES_OF[stage], Vertical).mount(pane)
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
        self.query_one("#images-summary", Static).update(Text(
            f"{self.active_run.folder}\nrefined with strength {record['strength']:.2f}, guidance {record['guidance']:g}, "
            f"{record['steps']} steps, rho_t {record['rho_t']:g}, seed {record['seed']} ({record['mode']}{rated})"
        ))

    def _noise_label(self) -> str:
        return "tiny-random: noise" if self.loaded.settings.diffusion.model == "tiny-random" else ""

    def _reset_views(self) -> None:
        for selector in PANES_OF.values():
            self.query_one(selector, Vertical).remove_children()
        self.panes.clear()
        rail = self.query_one(StageRail)
        for stage in ("tags", "components", "base", "critique", "refine", "done"):
            rail.set_state(stage, "waiting")
        rail.set_state("prompt", "done")
        for view in ("#image-base", "#image-refined"):
            self.query_one(view, ImageView).clear()
        self.query_one("#critique-summary", Static).update("")
        self.query_one("#images-summary", Static).update("")
        self.skip_next_critique = False


def run_app(loaded: LoadedConfig, prompt: str = "", *, image_mode: str | None = None) -> int:
    app = CritiFusionApp(loaded, prompt, image_mode=image_mode)
    app.run()
    return app.return_code or 0
