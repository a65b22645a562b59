"""History: the runs under the output folder, newest first; reopen, view or compare them.

A run is a folder directly under the output folder that holds a ``manifest.json`` of schema
``critifusion.run/1``, read by the engine's one reader (:func:`~critifusion_tui.engine.manifest.read_manifest`:
the same checks as a resume). A folder without a manifest is not a run and is passed over; one
whose manifest cannot be read (a bad field, another or a newer schema) is counted and named at
the top ("2 folders could not be read"), never silently dropped.

Keys: enter reopens the highlighted run (posts :class:`HistoryScreen.Reopen` to the app and
dismisses the screen with the folder), v shows its base and refined images side by side,
space marks it for comparison (two marks, A and B), c compares the two marked runs, e scores
the highlighted run with the eval metrics (``[eval]``; in a worker thread, with a progress
bar), r reads the folder again, escape goes back. The view and compare screens show the
scores a manifest holds (``critifusion eval`` writes the same field) and score with e too.

Everything a manifest holds (prompts above all) is data: shown as plain Text without
terminal control, never as markup.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import DataTable, Footer, ProgressBar, Static
from textual.worker import Worker, get_current_worker

from critifusion_tui.engine.manifest import RunManifest, holds_manifest, read_manifest
from critifusion_tui.engine.stages import image_field
from critifusion_tui.engine.store_paths import MANIFEST, StoreError, confined
from critifusion_tui.eval.runs import VARIANTS, scores_of
from critifusion_tui.tui.widgets._safe import safe_str
from critifusion_tui.tui.widgets.image_view import ImageView

REFINEMENT_ROW = "refinement prompt"
STATUS_STYLE = {
    "done": "green",
    "failed": "bold red",
    "cancelled": "yellow",
    "running": "cyan",
    "paused": "magenta",
    "abandoned": "dim yellow",
}
NOISE_LABEL = "tiny-random: noise"

# What "key parameters" means when two runs are compared: (label, where in the manifest).
KEY_PARAMETERS: list[tuple[str, tuple[str, ...]]] = [
    ("model", ("config", "diffusion", "model")),
    ("seed", ("seed",)),
    ("size", ()),  # width x height, assembled below
    ("steps", ("config", "diffusion", "steps")),
    ("guidance", ("config", "diffusion", "guidance")),
    ("negative", ("config", "diffusion", "negative")),
    ("preset", ("config", "criticore", "preset")),
    ("candidates", ("config", "criticore", "candidates")),
    ("aggregator", ("config", "criticore", "aggregator")),
    ("critics (VLM)", ("config", "criticore", "vlms")),
    ("SpecFusion mode", ("config", "specfusion", "mode")),
    ("total_steps", ("config", "specfusion", "total_steps")),
    ("last_k", ("config", "specfusion", "last_k")),
    ("SpecFusion guidance", ("config", "specfusion", "guidance")),
    ("rho_t", ("config", "specfusion", "rho_t")),
    ("base_c", ("config", "specfusion", "base_c")),
    ("noise_std", ("config", "specfusion", "noise_std")),
    ("refine strength (used)", ("stages", "refine", "strength")),
    ("refine guidance (used)", ("stages", "refine", "guidance")),
    ("refine steps (used)", ("stages", "refine", "steps")),
    ("variants", ("variants",)),
    ("status", ("status",)),
]


def _dig(data: Any, path: Iterable[str]) -> Any:
    for part in path:
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def _one_line(text: str) -> str:
    return " ".join(safe_str(str(text)).split())


def _shorten(text: str, width: int) -> str:
    text = _one_line(text)
    if width <= 1:
        return text[: max(width, 0)]
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {rest:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


@dataclass
class RunSummary:
    """What the history shows of one run folder: its manifest, read and checked by the
    engine's one reader (engine/manifest.py)."""

    folder: Path
    record: RunManifest
    created: datetime | None
    sort_key: float = field(default=0.0)

    @cached_property
    def data(self) -> dict[str, Any]:
        """The manifest as data, for the comparison's key parameters (paths into `config`)."""
        return self.record.to_data()

    @property
    def prompt(self) -> str:
        return self.record.prompt

    @property
    def status(self) -> str:
        return self.record.status

    @property
    def created_text(self) -> str:
        if self.created is None:
            return "?"
        return self.created.astimezone().strftime("%Y-%m-%d %H:%M")

    @property
    def seconds(self) -> float | None:
        """Time spent in the stages (their recorded seconds, summed)."""
        values = [r.seconds for r in self.record.stages.records().values() if r.seconds is not None]
        return sum(values) if values else None

    @property
    def tiny_random(self) -> bool:
        return bool(
            self.record.tiny_random
            or self.record.versions.get("model") == "tiny-random"
            or _dig(self.record.config, ("diffusion", "model")) == "tiny-random"
        )

    def image(self, stage: str) -> Path | None:
        """The image a completed stage ("base", "refine"; "rounds": the final round) saved, if
        it is on disk."""
        record = self.record.stages.records().get(stage)
        field = image_field(stage)
        name = getattr(record, field, None)
        if not isinstance(name, str):
            return None
        try:  # a run folder from elsewhere: never show a file outside it
            path = confined(self.folder, name, f"stages.{stage}.{field}")
        except StoreError:
            return None
        return path if path.is_file() else None

    def parameter(self, label: str, path: tuple[str, ...]) -> str:
        if label == "size":
            width = _dig(self.data, ("config", "diffusion", "width"))
            height = _dig(self.data, ("config", "diffusion", "height"))
            return f"{width}x{height}" if width or height else "–"
        value = _dig(self.data, path)
        if value is None:
            return "auto" if label == "SpecFusion guidance" and _dig(self.data, path[:-1]) else "–"
        if isinstance(value, list):
            return ", ".join(str(v) for v in value)
        return str(value)

    @property
    def scores(self) -> dict[str, dict[str, float]]:
        """{variant: {metric: value}} of the eval scores the manifest holds."""
        return scores_of(self.record)

    def refined_prompt(self) -> str:
        refinement = self.record.prompt_value("refinement")
        if isinstance(refinement, str):
            return refinement
        refine = self.record.stages.refine
        return (refine.prompt or "") if refine is not None else ""


def read_run(folder: Path) -> RunSummary:
    """One run folder's summary; raises ValueError (with the reason) when it cannot be read."""
    try:
        record = read_manifest(folder)
    except StoreError as exc:
        raise ValueError(str(exc)) from None
    created = record.created_at
    if created is not None:
        sort_key = created.timestamp()
    else:
        try:
            sort_key = (folder / MANIFEST).stat().st_mtime
        except OSError:
            sort_key = 0.0
    return RunSummary(folder, record, created, sort_key)


def scan_runs(output_dir: Path) -> tuple[list[RunSummary], list[tuple[Path, str]]]:
    """The runs under `output_dir`, newest first, and the folders that could not be read."""
    runs: list[RunSummary] = []
    unreadable: list[tuple[Path, str]] = []
    try:
        children = sorted(Path(output_dir).iterdir())
    except OSError:
        return runs, unreadable
    for child in children:
        if not holds_manifest(child):
            continue
        try:
            runs.append(read_run(child))
        except ValueError as exc:
            unreadable.append((child, str(exc)))
    runs.sort(key=lambda r: (r.sort_key, r.folder.name), reverse=True)
    return runs, unreadable


def format_score(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def _metrics_in(*score_sets: dict[str, dict[str, float]]) -> list[str]:
    from critifusion_tui.eval import METRICS

    seen = {m for scores in score_sets for values in scores.values() for m in values}
    return [m for m in METRICS if m in seen] + sorted(seen - set(METRICS))


def run_scores_table(run: RunSummary) -> Table | Text:
    """One run's scores: a row per metric, a column per variant it has scores for."""
    scores = run.scores
    if not scores:
        return Text("No eval scores yet: e scores this run's images.", style="dim")
    variants = [v for v in VARIANTS if v in scores]
    table = Table(title="Eval scores", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("metric", style="bold", no_wrap=True)
    for variant in variants:
        table.add_column(variant, justify="right")
    for metric in _metrics_in(scores):
        table.add_row(Text(metric), *(Text(format_score(scores[v].get(metric))) for v in variants))
    return table


def compare_scores_table(a: RunSummary, b: RunSummary) -> Table | Text:
    """Two runs' scores side by side: a row per variant and metric either has, and B - A."""
    sa, sb = a.scores, b.scores
    if not sa and not sb:
        return Text("No eval scores yet: e scores both runs' images.", style="dim")
    table = Table(title="Eval scores", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("variant", style="bold", no_wrap=True)
    table.add_column("metric", no_wrap=True)
    table.add_column("A", justify="right")
    table.add_column("B", justify="right")
    table.add_column("B - A", justify="right")
    for variant in VARIANTS:
        if variant not in sa and variant not in sb:
            continue
        left, right = sa.get(variant, {}), sb.get(variant, {})
        for metric in _metrics_in({variant: left}, {variant: right}):
            x, y = left.get(metric), right.get(metric)
            diff = (
                Text("–")
                if x is None or y is None
                else Text(f"{y - x:+.3g}", style="green" if y > x else ("red" if y < x else ""))
            )
            table.add_row(Text(variant), Text(metric), Text(format_score(x)), Text(format_score(y)), diff)
    return table


class ScoringProgress(Message):
    """From the scoring worker: `done` of `total` images of `metric` scored."""

    def __init__(self, metric: str, done: int, total: int) -> None:
        super().__init__()
        self.metric, self.done, self.total = metric, done, total


class ScoringDone(Message):
    """From the scoring worker: it finished (or stopped); the runs' manifests may have changed."""

    def __init__(self, folders: list[Path], scored: int, problems: list[str], cancelled: bool = False) -> None:
        super().__init__()
        self.folders, self.scored, self.problems, self.cancelled = folders, scored, problems, cancelled


SCORING_CSS = """
    #eval-bar {
        height: 1;
        display: none;
        padding: 0 1;
    }
    #eval-bar.-running {
        display: block;
    }
    #eval-bar #eval-label {
        width: auto;
        padding-right: 1;
    }
"""


class ScoringMixin:
    """`e` scores runs with the eval metrics in a thread worker. The worker only posts
    ScoringProgress and ScoringDone; their handlers (on the screen) move the bar, notify,
    and call `scores_changed` so the screen shows the new scores.

    `scorers`: a callable returning the session's ScorerCache (called on the UI thread when
    scoring starts); None where no settings are at hand (scoring then says so)."""

    scorers: Callable[[], Any] | None = None
    scoring: Worker | None = None

    def scoring_bar(self) -> ComposeResult:
        with Horizontal(id="eval-bar"):
            yield Static("Scoring", id="eval-label")
            yield ProgressBar(id="eval-progress", show_eta=False)

    def start_scoring(self, runs: list[RunSummary]) -> None:
        screen: Any = self
        if not runs:
            screen.notify("No run to score.", severity="warning")
            return
        if self.scorers is None:
            screen.notify("Scoring needs the app's settings: run critifusion eval RUN_DIR instead.", severity="warning")
            return
        if self.scoring is not None and self.scoring.is_running:
            screen.notify("Already scoring; wait for it to finish.", severity="warning")
            return
        try:
            cache = self.scorers()
        except Exception as exc:  # a session that cannot be made: say why, no traceback
            screen.notify(safe_str(f"Cannot score: {exc}"), severity="error", timeout=15, markup=False)
            return
        folders = [run.folder for run in runs]
        bar = screen.query_one("#eval-bar")
        bar.add_class("-running")
        screen.query_one("#eval-label", Static).update(Text("Scoring: finding weights"))
        screen.query_one("#eval-progress", ProgressBar).update(total=None, progress=0)
        self.scoring = self._score_in_thread(folders, cache)

    @work(thread=True, group="eval", exclusive=True, exit_on_error=False)
    def _score_in_thread(self, folders: list[Path], cache) -> None:
        from critifusion_tui.eval.scoring import score_folders

        screen: Any = self
        worker = get_current_worker()
        try:
            report = score_folders(
                folders,
                cache,
                on_progress=lambda m, d, t: screen.post_message(ScoringProgress(m, d, t)),
                cancelled=lambda: worker.is_cancelled,
            )
        except Exception as exc:  # an unreadable image, a model that fails mid-way
            screen.post_message(ScoringDone(folders, 0, [f"scoring failed: {type(exc).__name__}: {exc}"]))
            return
        screen.post_message(ScoringDone(folders, report.scored, report.problems, report.cancelled))

    def on_scoring_progress(self, message: ScoringProgress) -> None:
        screen: Any = self
        screen.query_one("#eval-label", Static).update(Text(f"Scoring {message.metric}"))
        screen.query_one("#eval-progress", ProgressBar).update(total=message.total, progress=message.done)

    def on_scoring_done(self, message: ScoringDone) -> None:
        screen: Any = self
        screen.query_one("#eval-bar").remove_class("-running")
        for problem in message.problems:
            screen.notify(safe_str(problem), severity="error", timeout=20, markup=False)
        what = f"{message.scored} image{'s' if message.scored != 1 else ''} scored"
        if message.cancelled:
            screen.notify(f"Scoring stopped; {what}.", severity="warning")
        elif message.scored or not message.problems:
            screen.notify(f"{what}." if message.scored else "Nothing new to score: every image has its scores.")
        self.scores_changed(message.folders)

    def scores_changed(self, folders: list[Path]) -> None:
        """Re-read the runs in `folders` and show their scores (each screen says how)."""


def differences_summary(same_prompt: bool, rows: list[tuple[str, str, str]]) -> str:
    """What differs between two runs, given whether their prompts are equal and the rows of
    `CompareScreen.differences` (key settings, and the refinement prompt)."""
    settings = [label for label, _, _ in rows if label != REFINEMENT_ROW]
    parts = [] if same_prompt else ["the prompts (above)"]
    if len(settings) < len(rows):
        parts.append("the refinement prompts")
    if settings:
        parts.append(f"{len(settings)} key setting{'' if len(settings) == 1 else 's'}")
    if not parts:
        return "Nothing differs: the same prompt and the same key settings."
    said = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    if same_prompt:
        return f"Differs: {said}. The prompts are the same."
    if not settings:
        return f"Differs: {said}. The key settings are the same."
    return f"Differs: {said}."


def _status_text(status: str) -> Text:
    return Text(safe_str(status), style=STATUS_STYLE.get(status, ""))


# ----------------------------------------------------------------------------------- screens


class RunTable(DataTable):
    """The run list: home and end jump to the newest and the oldest run."""

    BINDINGS = [
        Binding("home", "scroll_top", "Newest", id="history.first", show=False, tooltip="Jump to the newest run"),
        Binding("end", "scroll_bottom", "Oldest", id="history.last", show=False, tooltip="Jump to the oldest run"),
    ]


class HistoryScreen(ScoringMixin, Screen[Path | None]):
    """Earlier runs: enter reopens, v views, space marks, c compares two, e scores, escape goes back."""

    HELP = (
        "Earlier runs in the output folder, newest first.\n"
        "enter reopens the highlighted run in the main screen (finished stages are not run again).\n"
        "v shows its base and refined images side by side.\n"
        "space marks a run for comparison (A, then B); c compares the two marked runs: their "
        "refined images, prompts, eval scores and the settings that differ.\n"
        "e scores the highlighted run with the eval metrics ([eval] in the config).\n"
        "r reads the folder again; escape goes back."
    )

    BINDINGS = [
        Binding(
            "enter",
            "reopen",
            "Reopen",
            id="history.reopen",
            priority=True,
            tooltip="Reopen the highlighted run in the main screen",
        ),
        Binding("v", "view", "View images", id="history.view", tooltip="Base and refined images side by side"),
        Binding(
            "space", "mark", "Mark", id="history.mark", tooltip="Mark (or unmark) the highlighted run for comparison"
        ),
        Binding("c", "compare", "Compare", id="history.compare", tooltip="Compare the two marked runs"),
        Binding("r", "rescan", "Rescan", id="history.refresh", tooltip="Read the output folder again"),
        Binding("escape", "back", "Back", id="history.back", tooltip="Back to the main screen"),
        # Last, so that 80 columns still show "esc Back"; F1 and ctrl+p list it too.
        Binding(
            "e",
            "score",
            "Score",
            id="history.score",
            tooltip="Score the highlighted run's images with the eval metrics",
        ),
    ]

    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (140, "-wide")]

    DEFAULT_CSS = (
        """
    HistoryScreen #history-title {
        height: 1;
        padding: 0 1;
        background: $panel;
        text-style: bold;
    }
    HistoryScreen #history-summary {
        height: auto;
        padding: 0 1;
        color: $text-muted;
    }
    HistoryScreen #history-summary.-problem {
        color: $warning;
    }
    HistoryScreen #history-body {
        height: 1fr;
        layout: vertical;
    }
    HistoryScreen.-wide #history-body {
        layout: horizontal;
    }
    HistoryScreen #runs {
        height: 1fr;
    }
    HistoryScreen.-wide #runs {
        width: 3fr;
    }
    HistoryScreen #run-side {
        height: auto;
        max-height: 7;
        border-top: solid $primary 50%;
    }
    HistoryScreen #run-detail {
        height: auto;
        padding: 0 1;
    }
    HistoryScreen #run-preview {
        display: none;
    }
    HistoryScreen.-wide #run-side {
        width: 2fr;
        height: 1fr;
        max-height: 100%;
        border-top: none;
        border-left: solid $primary 50%;
    }
    HistoryScreen.-wide #run-preview {
        display: block;
        height: 1fr;
        max-height: 32;
        margin-top: 1;
    }
    HistoryScreen #history-empty {
        padding: 1 2;
        color: $text-muted;
    }
    """
        + SCORING_CSS
    )

    class Reopen(Message):
        """The person asked to reopen the run in `folder` (sent to the app)."""

        def __init__(self, folder: Path) -> None:
            super().__init__()
            self.folder = Path(folder)

    def __init__(
        self,
        output_dir: Path,
        *,
        image_mode: str = "auto",
        image_class: type[Widget] | None = None,
        scorers: Callable[[], Any] | None = None,
        name: str | None = None,
        id: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id)
        self.output_dir = Path(output_dir)
        self.image_mode = image_mode
        self.image_class = image_class
        self.scorers = scorers
        self.runs: list[RunSummary] = []
        self.unreadable: list[tuple[Path, str]] = []
        self.marked: list[Path] = []
        self._prompt_width = 0
        self._preview_timer: Timer | None = None

    # ---------------------------------------------------------------- layout

    def compose(self) -> ComposeResult:
        yield Static(Text(f"History: {safe_str(str(self.output_dir))}"), id="history-title")
        yield Static(id="history-summary")
        with Horizontal(id="history-body"):
            table = RunTable(id="runs", cursor_type="row", zebra_stripes=True)
            table.cursor_foreground_priority = "renderable"
            yield table
            with Vertical(id="run-side"):
                yield Static(id="run-detail")
                yield ImageView("Refined", mode=self.image_mode, image_class=self.image_class, id="run-preview")
        yield from self.scoring_bar()
        yield Footer()

    def on_mount(self) -> None:
        self.rescan()
        self.query_one("#runs", DataTable).focus()

    def on_resize(self) -> None:
        # The table's own size is known only after the layout that follows a resize.
        self.call_after_refresh(self._refit)

    def _refit(self) -> None:
        if self.runs and self._prompt_width_for() != self._prompt_width:
            self._fill_table()

    # ---------------------------------------------------------------- data

    def rescan(self) -> None:
        self.runs, self.unreadable = scan_runs(self.output_dir)
        live = {run.folder for run in self.runs}
        self.marked = [folder for folder in self.marked if folder in live]
        self._show_summary()
        self._fill_table()

    @property
    def current(self) -> RunSummary | None:
        table = self.query_one("#runs", DataTable)
        if not self.runs or table.row_count == 0:
            return None
        return self.runs[min(max(table.cursor_row, 0), len(self.runs) - 1)]

    def _show_summary(self) -> None:
        count = len(self.runs)
        parts = [f"{count} run{'s' if count != 1 else ''}" if count else "No runs here yet"]
        bad = len(self.unreadable)
        if bad:
            names = ", ".join(folder.name for folder, _ in self.unreadable[:3])
            more = f" and {bad - 3} more" if bad > 3 else ""
            parts.append(f"{bad} folder{'s' if bad != 1 else ''} could not be read ({names}{more})")
        summary = self.query_one("#history-summary", Static)
        summary.update(Text(_one_line(" · ".join(parts))))
        summary.set_class(bool(bad), "-problem")

    def _prompt_width_for(self) -> int:
        table = self.query_one("#runs", DataTable)
        width = table.size.width or self.size.width or 80
        # Mark, created, status, time and tiny columns, plus two cells of padding each.
        return max(12, width - (1 + 16 + 9 + 8 + 4) - 2 * 6 - 1)

    def _fill_table(self) -> None:
        table = self.query_one("#runs", DataTable)
        keep = self.current.folder if self.current and table.row_count else None
        self._prompt_width = self._prompt_width_for()
        table.clear(columns=True)
        table.add_column("", key="mark", width=1)
        table.add_column("Created", key="created", width=16)
        table.add_column("Status", key="status", width=9)
        table.add_column("Time", key="time", width=8)
        table.add_column("", key="tiny", width=4)
        table.add_column("Prompt", key="prompt", width=self._prompt_width)
        for run in self.runs:
            table.add_row(
                self._mark_text(run.folder),
                Text(run.created_text),
                _status_text(run.status),
                Text(format_seconds(run.seconds), justify="right"),
                Text("tiny", style="dim") if run.tiny_random else Text(""),
                Text(_shorten(run.prompt, self._prompt_width)),
                key=str(run.folder),
            )
        if keep is not None:
            index = next((i for i, r in enumerate(self.runs) if r.folder == keep), 0)
            table.move_cursor(row=index, animate=False)
        self._show_detail()

    def _mark_text(self, folder: Path) -> Text:
        if folder in self.marked:
            return Text("AB"[self.marked.index(folder)], style="bold reverse")
        return Text("")

    def _show_detail(self) -> None:
        detail = self.query_one("#run-detail", Static)
        run = self.current
        if run is None:
            detail.update(Text(f"No run folders in {safe_str(str(self.output_dir))}.", style="dim"))
            return
        text = Text()
        text.append("Prompt: ", style="bold")
        text.append(safe_str(run.prompt))
        refined = run.refined_prompt()
        if refined and refined != run.prompt:
            text.append("\nRefinement prompt: ", style="bold")
            text.append(safe_str(refined))
        text.append("\n")
        text.append(
            f"{run.status} · {format_seconds(run.seconds)} · seed {run.parameter('seed', ('seed',))}"
            f" · {run.parameter('size', ())} · {run.parameter('model', KEY_PARAMETERS[0][1])}",
            style="dim",
        )
        if run.tiny_random:
            text.append(f" · {NOISE_LABEL}", style="dim")
        scores = run.scores
        if scores:
            variant = next(v for v in ("final", "refined", "base", "refined_original", "base_original") if v in scores)
            shown = " · ".join(f"{m} {format_score(x)}" for m, x in scores[variant].items())
            text.append(f"\nScores ({variant}): {shown}", style="dim")
        text.append("\n")
        text.append(safe_str(str(run.folder)), style="dim")
        detail.update(text)

    @on(DataTable.RowHighlighted, "#runs")
    def _highlighted(self) -> None:
        self._show_detail()
        # The preview (wide screens only) waits for the cursor to settle: decoding an image
        # for every row passed over would make holding down an arrow key stutter.
        if self._preview_timer is not None:
            self._preview_timer.stop()
        self._preview_timer = self.set_timer(0.15, self.show_preview)

    def show_preview(self) -> None:
        """Show the highlighted run's refined image (its base image when it has none)."""
        self._preview_timer = None
        view = self.query_one("#run-preview", ImageView)
        run = self.current
        if not self.has_class("-wide") or run is None:
            view.clear()
            return
        for stage, title in (("rounds", "Final round"), ("refine", "Refined"), ("base", "Base (not refined)")):
            path = run.image(stage)
            if path is not None:
                view.border_title = title
                view.show(path, NOISE_LABEL if run.tiny_random else "")
                return
        view.border_title = "No image"
        view.clear("This run saved no image.")

    @on(DataTable.RowSelected, "#runs")
    def _selected(self) -> None:  # a mouse click on a highlighted row
        self.action_reopen()

    # ---------------------------------------------------------------- actions

    def action_reopen(self) -> None:
        run = self.current
        if run is None:
            self.notify("No run to reopen.", severity="warning")
            return
        self.app.post_message(self.Reopen(run.folder))
        self.dismiss(run.folder)

    def action_view(self) -> None:
        run = self.current
        if run is None:
            self.notify("No run to view.", severity="warning")
            return
        self.app.push_screen(RunImagesScreen(run, **self._child_options()))

    def action_mark(self) -> None:
        run = self.current
        if run is None:
            return
        if run.folder in self.marked:
            self.marked.remove(run.folder)
        else:
            self.marked.append(run.folder)
            if len(self.marked) > 2:
                self.marked.pop(0)  # the oldest mark makes room
        table = self.query_one("#runs", DataTable)
        for folder in {run.folder, *[r.folder for r in self.runs]}:
            if str(folder) in table.rows:
                table.update_cell(str(folder), "mark", self._mark_text(folder))
        table.action_cursor_down()

    def action_compare(self) -> None:
        if len(self.marked) < 2:
            self.notify("Mark two runs with space first, then press c.", severity="warning")
            return
        by_folder = {run.folder: run for run in self.runs}
        a, b = (by_folder[f] for f in self.marked)
        self.app.push_screen(CompareScreen(a, b, **self._child_options()))

    def _child_options(self) -> dict[str, Any]:
        return {"image_mode": self.image_mode, "image_class": self.image_class, "scorers": self.scorers}

    def action_score(self) -> None:
        run = self.current
        self.start_scoring([run] if run else [])

    def scores_changed(self, folders: list[Path]) -> None:
        self.rescan()

    def on_screen_resume(self) -> None:
        # The view and compare screens may have scored runs: show their new scores.
        if self.is_mounted:
            self.rescan()

    def action_rescan(self) -> None:
        self.rescan()

    def action_back(self) -> None:
        self.dismiss(None)


class ImagesScreenBase(ScoringMixin, Screen[None]):
    """Shared layout of the two image screens: image columns, then text, scrolled together."""

    BINDINGS = [
        Binding("escape", "back", "Back", id="history.close_view", tooltip="Back to the run list"),
        Binding(
            "e",
            "score",
            "Score",
            id="history.score_shown",
            tooltip="Score the shown runs' images with the eval metrics",
        ),
    ]

    DEFAULT_CSS = (
        """
    ImagesScreenBase #view-title {
        height: 1;
        padding: 0 1;
        background: $panel;
        text-style: bold;
    }
    ImagesScreenBase .images {
        height: 1fr;
        min-height: 8;
    }
    ImagesScreenBase .images ImageView {
        height: 1fr;
    }
    ImagesScreenBase .prompts {
        height: auto;
    }
    ImagesScreenBase .column {
        width: 1fr;
    }
    ImagesScreenBase .prompt {
        height: auto;
        padding: 0 1;
    }
    ImagesScreenBase #view-text {
        height: auto;
        max-height: 45%;
        border-left: blank;
    }
    ImagesScreenBase #view-text:focus {
        border-left: thick $accent;  /* the keys scroll this text: say so */
    }
    ImagesScreenBase .facts {
        height: auto;
        padding: 0 1;
    }
    """
        + SCORING_CSS
    )

    def __init__(
        self,
        *,
        image_mode: str = "auto",
        image_class: type[Widget] | None = None,
        scorers: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__()
        self.image_mode = image_mode
        self.image_class = image_class
        self.scorers = scorers

    def image_view(self, title: str, id: str) -> ImageView:
        return ImageView(title, mode=self.image_mode, image_class=self.image_class, id=id)

    def show_image(self, view: ImageView, run: RunSummary, stages: tuple[str, ...], missing: str) -> None:
        for stage in stages:
            path = run.image(stage)
            if path is not None:
                label = NOISE_LABEL if run.tiny_random else ""
                if stage != stages[0]:
                    label = f"{stage} image, not refined" + (f" · {label}" if label else "")
                view.show(path, label)
                return
        view.clear(missing)

    def on_mount(self) -> None:
        self.query_one("#view-text", VerticalScroll).focus()

    def action_back(self) -> None:
        self.dismiss(None)


class RunImagesScreen(ImagesScreenBase):
    """One run's base and refined images side by side, with its prompts."""

    def __init__(self, run: RunSummary, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.run = run

    def compose(self) -> ComposeResult:
        run = self.run
        yield Static(Text(f"{run.created_text} · {_one_line(run.folder.name)}"), id="view-title")
        with Horizontal(classes="images"):
            yield self.image_view("Base", "view-base")
            yield self.image_view("Refined (SpecFusion)", "view-refined")
        with VerticalScroll(id="view-text"):
            yield Static(self._prompts(), classes="prompt", id="view-prompts")
            yield Static(run_scores_table(run), classes="facts", id="view-scores")
        yield from self.scoring_bar()
        yield Footer()

    def action_score(self) -> None:
        self.start_scoring([self.run])

    def scores_changed(self, folders: list[Path]) -> None:
        try:
            self.run = read_run(self.run.folder)
        except ValueError as exc:
            self.notify(safe_str(f"Cannot read the run again: {exc}"), severity="error", markup=False)
            return
        self.query_one("#view-scores", Static).update(run_scores_table(self.run))

    def _prompts(self) -> Text:
        run = self.run
        text = Text()
        text.append("Prompt: ", style="bold")
        text.append(safe_str(run.prompt))
        refined = run.refined_prompt()
        if refined:
            text.append("\nRefinement prompt: ", style="bold")
            text.append(safe_str(refined))
        text.append(f"\n{run.status} · {format_seconds(run.seconds)}", style="dim")
        return text

    def on_mount(self) -> None:
        super().on_mount()
        base = self.query_one("#view-base", ImageView)
        refined = self.query_one("#view-refined", ImageView)
        self.show_image(base, self.run, ("base",), "No base image in this run.")
        status = self.run.status
        why = (
            "the run was cancelled"
            if status == "cancelled"
            else ("the run failed" if status == "failed" else "not refined yet")
        )
        self.show_image(refined, self.run, ("refine",), f"No refined image: {why}.")


class CompareScreen(ImagesScreenBase):
    """Two runs side by side: refined images, prompts, and the key settings that differ."""

    def __init__(self, a: RunSummary, b: RunSummary, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.a = a
        self.b = b

    def compose(self) -> ComposeResult:
        yield Static(Text("Compare A and B"), id="view-title")
        with Horizontal(classes="images"):
            for tag, run in (("A", self.a), ("B", self.b)):
                yield self.image_view(f"{tag}: {_one_line(run.folder.name)}", f"compare-{tag.lower()}")
        with VerticalScroll(id="view-text"):
            with Horizontal(classes="prompts"):
                for tag, run in (("A", self.a), ("B", self.b)):
                    yield Static(self._prompt(tag, run), classes="prompt column", id=f"prompt-{tag.lower()}")
            yield Static(compare_scores_table(self.a, self.b), classes="facts", id="scores")
            yield Static(self.differences_table(), classes="facts", id="differences")
        yield from self.scoring_bar()
        yield Footer()

    def action_score(self) -> None:
        self.start_scoring([self.a, self.b])

    def scores_changed(self, folders: list[Path]) -> None:
        try:
            self.a, self.b = read_run(self.a.folder), read_run(self.b.folder)
        except ValueError as exc:
            self.notify(safe_str(f"Cannot read the runs again: {exc}"), severity="error", markup=False)
            return
        self.query_one("#scores", Static).update(compare_scores_table(self.a, self.b))

    @staticmethod
    def _prompt(tag: str, run: RunSummary) -> Text:
        text = Text()
        text.append(f"{tag} prompt: ", style="bold")
        text.append(safe_str(run.prompt))
        text.append(f"\n{run.created_text} · {run.status} · {format_seconds(run.seconds)}", style="dim")
        return text

    def differences(self) -> list[tuple[str, str, str]]:
        """(parameter, value in A, value in B) for each key parameter that differs."""
        rows = []
        for label, path in KEY_PARAMETERS:
            left, right = self.a.parameter(label, path), self.b.parameter(label, path)
            if left != right:
                rows.append((label, left, right))
        refined_a, refined_b = self.a.refined_prompt(), self.b.refined_prompt()
        if refined_a != refined_b:
            rows.append((REFINEMENT_ROW, refined_a or "–", refined_b or "–"))
        return rows

    def differences_summary(self) -> str:
        """One sentence saying truthfully what differs: nothing, the prompts, the settings."""
        return differences_summary(self.a.prompt == self.b.prompt, self.differences())

    def differences_table(self) -> Table | Text | Group:
        rows = self.differences()
        summary = Text(self.differences_summary(), style="dim")
        if not rows:
            return summary
        table = Table(box=box.SIMPLE_HEAD, expand=True)  # the summary above says what it lists
        table.add_column("setting", style="bold", no_wrap=True)
        table.add_column("A", ratio=3, overflow="fold")
        table.add_column("B", ratio=3, overflow="fold")
        for label, left, right in rows:
            table.add_row(Text(label), Text(_shorten(left, 300)), Text(_shorten(right, 300)))
        return Group(summary, table)

    def on_mount(self) -> None:
        super().on_mount()
        for tag, run in (("a", self.a), ("b", self.b)):
            view = self.query_one(f"#compare-{tag}", ImageView)
            self.show_image(view, run, ("refine", "base"), "No image in this run.")
