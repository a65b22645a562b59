"""The run's log: a bounded buffer the app always fills, and a view that shows it.

Log lines carry model and user text, so every part of an entry is shown as plain
`rich.text.Text` without terminal control: "[bold red]x[/]" stays those eleven characters.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from rich.text import Text
from textual.widgets import RichLog

from critifusion_tui.tui.widgets._safe import safe_str

__all__ = ["LOG_LEVELS", "LogBuffer", "LogEntry", "LogView", "normalise_level"]

LOG_LEVELS = ("debug", "info", "warning", "error")
_ALIASES = {"warn": "warning", "err": "error", "critical": "error", "fatal": "error"}
_LABELS = {"debug": "DEBUG", "info": "INFO", "warning": "WARN", "error": "ERROR"}


def normalise_level(level: str) -> str:
    """One of LOG_LEVELS ("warn" -> "warning"; anything unknown -> "info")."""
    level = level.strip().lower()
    level = _ALIASES.get(level, level)
    return level if level in LOG_LEVELS else "info"


@dataclass(frozen=True)
class LogEntry:
    level: str
    source: str
    text: str
    when: datetime = field(default_factory=datetime.now)


class LogBuffer:
    """The last `max_entries` log entries; plain data, no widget (fill it from anywhere)."""

    def __init__(self, max_entries: int = 2000) -> None:
        self.max_entries = max_entries
        self._entries: deque[LogEntry] = deque(maxlen=max_entries)

    def add(self, level: str, source: str, text: str, *, when: datetime | None = None) -> LogEntry:
        entry = LogEntry(normalise_level(level), source, text, when or datetime.now())
        self._entries.append(entry)
        return entry

    def append(self, entry: LogEntry) -> None:
        self._entries.append(entry)

    def clear(self) -> None:
        self._entries.clear()

    def __iter__(self) -> Iterator[LogEntry]:
        return iter(tuple(self._entries))

    def __len__(self) -> int:
        return len(self._entries)


class LogView(RichLog):
    """A scrolling log: time, level (coloured), source, then the text as plain data."""

    HELP = """\
The run's log: every stage start and end, model calls, retries, fallbacks and errors.
Up/down, PgUp/PgDn, Home/End scroll. Model text is shown exactly as received."""

    COMPONENT_CLASSES = {
        "log-view--time",
        "log-view--source",
        "log-view--debug",
        "log-view--info",
        "log-view--warning",
        "log-view--error",
    }

    DEFAULT_CSS = """
    LogView {
        height: 1fr;
        & > .log-view--time { color: $text-muted; }
        & > .log-view--source { color: $secondary; }
        & > .log-view--debug { color: $text-muted; }
        & > .log-view--info { color: $accent; }
        & > .log-view--warning { color: $warning; text-style: bold; }
        & > .log-view--error { color: $error; text-style: bold; }
    }
    """

    def __init__(
        self,
        *,
        max_lines: int = 2000,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
        disabled: bool = False,
    ) -> None:
        super().__init__(
            max_lines=max_lines,
            wrap=True,
            highlight=False,
            markup=False,
            name=name,
            id=id,
            classes=classes,
            disabled=disabled,
        )
        self._pending: list[LogEntry] = []

    def add(self, level: str, source: str, text: str, *, when: datetime | None = None) -> LogEntry:
        """Write one entry (timestamped now unless `when` is given) and return it."""
        entry = LogEntry(normalise_level(level), source, text, when or datetime.now())
        self.add_entry(entry)
        return entry

    def add_entry(self, entry: LogEntry) -> None:
        if not self.is_mounted:
            self._pending.append(entry)  # styles come from CSS, known once mounted
            return
        self.write(self.format_entry(entry))

    def load(self, buffer: Iterable[LogEntry]) -> None:
        """Replace what is shown with the entries of `buffer` (a LogBuffer or any iterable)."""
        self.clear()
        self._pending.clear()
        for entry in buffer:
            self.add_entry(entry)

    def format_entry(self, entry: LogEntry) -> Text:
        level = normalise_level(entry.level)
        line = Text.assemble(
            (entry.when.strftime("%H:%M:%S"), self.get_component_rich_style("log-view--time")),
            " ",
            (f"{_LABELS[level]:<5}", self.get_component_rich_style(f"log-view--{level}")),
            " ",
        )
        if entry.source:
            line.append(safe_str(entry.source), self.get_component_rich_style("log-view--source"))
            line.append(" ")
        line.append(safe_str(entry.text))
        return line

    def on_mount(self) -> None:
        pending, self._pending = self._pending, []
        for entry in pending:
            self.write(self.format_entry(entry))
