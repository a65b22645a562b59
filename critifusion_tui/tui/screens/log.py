"""The app's log in a scrollable view, filtered by level: 1 shows everything, 2 only warnings
and errors, 3 the run's ledger (tokens, seconds, retries and 429s per model and role). Every
entry is plain text (model answers and paths are data, never markup)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

from critifusion_tui.tui.widgets.log_view import LogEntry, LogView, normalise_level

# (timestamp in seconds since the epoch, level, source, text), or the log widget's own entry.
RawEntry = tuple[float, str, str, str] | LogEntry
FILTERS = {"all": ("debug", "info", "warning", "error"), "warnings": ("warning", "error")}


def as_entry(raw: Any) -> LogEntry:
    """A LogEntry from a LogEntry or a (timestamp, level, source, text) tuple."""
    if isinstance(raw, LogEntry):
        return raw
    timestamp, level, source, text = raw
    when = timestamp if isinstance(timestamp, datetime) else datetime.fromtimestamp(float(timestamp))
    return LogEntry(normalise_level(str(level)), str(source), str(text), when)


class LogScreen(ModalScreen[None]):
    """The log: 1 all entries, 2 warnings and errors, escape or ctrl+l closes."""

    HELP = (
        "Every stage start and end, model call, retry, fallback and error of this session.\n"
        "1 shows all entries, 2 only warnings and errors. Up/down, page up/down, home/end scroll.\n"
        "3 shows the run's ledger: tokens in and out, seconds, retries and 429s per model and role.\n"
        "escape or ctrl+l closes the log."
    )

    BINDINGS = [
        Binding("1", "filter('all')", "All", id="log.all", tooltip="Show every entry"),
        Binding(
            "2", "filter('warnings')", "Warnings+errors", id="log.warnings", tooltip="Show only warnings and errors"
        ),
        Binding(
            "3",
            "filter('ledger')",
            "Ledger",
            id="log.ledger",
            tooltip="Tokens, seconds, retries and 429s per model and role",
        ),
        Binding("escape,ctrl+l", "close", "Close", id="log.close", tooltip="Close the log"),
    ]

    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]

    DEFAULT_CSS = """
    LogScreen {
        align: center middle;
    }
    LogScreen #log-dialog {
        width: 100%;
        height: 100%;
        border: round $primary;
        border-title-style: bold;
        background: $surface;
    }
    LogScreen #log-dialog:focus-within {
        border: round $accent;  /* the keys scroll the log inside */
    }
    LogScreen.-wide #log-dialog {
        width: 94%;
        height: 94%;
    }
    LogScreen #log-filter {
        height: 1;
        padding: 0 1;
        color: $text-muted;
    }
    LogScreen #log-view {
        height: 1fr;
        border: none;
    }
    """

    def __init__(
        self,
        entries: Iterable[RawEntry],
        *,
        ledger: Callable[[], list[str]] | None = None,
        name: str | None = None,
        id: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id)
        # The run's ledger as lines (engine/ledger.summary_lines), read each time it is shown.
        self._ledger = ledger
        # A re-iterable source (the app's LogBuffer, a list) is read again twice a second and
        # at each filter change, so entries added while the log is open show up; a one-shot
        # iterator is read once.
        self._source: Iterable[RawEntry] = list(entries) if iter(entries) is entries else entries
        self.level_filter = "all"
        self._ledger_shown: list[str] = []
        self._seen: list[RawEntry] = []
        self._shown_count = 0

    def compose(self) -> ComposeResult:
        with Vertical(id="log-dialog") as dialog:
            dialog.border_title = "Log"
            yield Static(id="log-filter")
            yield LogView(id="log-view")
        yield Footer()

    def on_mount(self) -> None:
        self._show()
        self.query_one("#log-view", LogView).focus()
        self.set_interval(0.5, self.poll)

    def poll(self) -> None:
        """Show entries that arrived since the last look (new ones are appended in place)."""
        if self.level_filter == "ledger":
            lines = self.ledger_lines()
            if lines != self._ledger_shown:
                self._show()
            return
        raw = list(self._source)
        if len(raw) == len(self._seen) and all(a is b for a, b in zip(raw, self._seen)):
            return
        seen = len(self._seen)
        if seen and len(raw) > seen and all(a is b for a, b in zip(raw, self._seen)):
            levels = FILTERS[self.level_filter]
            new = [e for e in map(as_entry, raw[seen:]) if normalise_level(e.level) in levels]
            if new and not self._shown_count:
                self._show()  # replace the "nothing logged" line
                return
            view = self.query_one("#log-view", LogView)
            for entry in new:
                view.add_entry(entry)
            self._seen = raw
            self._shown_count += len(new)
            self._update_label(len(raw))
            return
        self._show()

    def entries(self) -> list[LogEntry]:
        return [as_entry(raw) for raw in self._source]

    def shown(self) -> list[LogEntry]:
        """The entries the current filter lets through, oldest first."""
        levels = FILTERS[self.level_filter]
        return [entry for entry in self.entries() if normalise_level(entry.level) in levels]

    def ledger_lines(self) -> list[str]:
        if self._ledger is None:
            return ["No run yet: the ledger fills as models are called."]
        return list(self._ledger())

    def _show(self) -> None:
        if self.level_filter == "ledger":
            view = self.query_one("#log-view", LogView)
            view.clear()
            self._ledger_shown = self.ledger_lines()
            for line in self._ledger_shown:
                view.write(Text(line))  # plain text: model names are data
            self.query_one("#log-filter", Static).update(
                Text("Ledger: this run's model calls  ·  1 all  2 warnings and errors  3 ledger")
            )
            return
        raw = list(self._source)
        levels = FILTERS[self.level_filter]
        shown = [e for e in map(as_entry, raw) if normalise_level(e.level) in levels]
        view = self.query_one("#log-view", LogView)
        view.load(shown)
        self._seen = raw
        self._shown_count = len(shown)
        self._update_label(len(raw))
        if not shown:
            view.write(Text("No warnings or errors." if raw else "Nothing logged yet.", style="dim"))

    def _update_label(self, total: int) -> None:
        if self.level_filter == "all":
            label = f"All entries ({total})"
        else:
            label = f"Warnings and errors ({self._shown_count} of {total})"
        keys = "  ·  1 all  2 warnings and errors  3 ledger"
        self.query_one("#log-filter", Static).update(Text(label + keys))

    def action_filter(self, which: str) -> None:
        if which in FILTERS or which == "ledger":
            self.level_filter = which
            self._show()

    def action_close(self) -> None:
        self.dismiss(None)
