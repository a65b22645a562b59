"""The run's log: a bounded buffer the app always fills, and a view that shows it.

Log lines carry model and user text, so every part of an entry is shown as plain
`rich.text.Text` without terminal control: "[bold red]x[/]" stays those eleven characters.

Lines wrap at the width left of the scrollbar, never under it: RichLog renders each line once,
at least `min_width` (78) wide and at the width of the moment, so at 80 columns (76 inside the
log's border and scrollbar) the ends of long lines were hidden under the scrollbar, and lines
written before the scrollbar appeared were two cells too wide. The view keeps the scrollbar's
room from the start (`scrollbar-gutter: stable`), renders no wider than the room there is,
and wraps everything again when its width changes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rich.text import Text
from textual import events
from textual.widgets import RichLog

from critifusion_tui.tui.widgets._safe import safe_str

__all__ = ["LOG_LEVELS", "LogBuffer", "LogEntry", "LogView", "normalise_level"]

LOG_LEVELS = ("debug", "info", "warning", "error")
_ALIASES = {"warn": "warning", "err": "error", "critical": "error", "fatal": "error"}
_LABELS = {"debug": "DEBUG", "info": "INFO", "warning": "WARN", "error": "ERROR"}
# RichLog renders nothing narrower than this (its default, 78, ran under the scrollbar at 80).
_MIN_WIDTH = 16


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
        scrollbar-gutter: stable;
        overflow-x: hidden;
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
            min_width=_MIN_WIDTH,
            wrap=True,
            highlight=False,
            markup=False,
            name=name,
            id=id,
            classes=classes,
            disabled=disabled,
        )
        self._pending: list[LogEntry] = []
        # What was written, to wrap again at a new width (at most max_lines items: each is a
        # line or more, so no more can be on show).
        self._written: deque[Any] = deque(maxlen=max_lines)
        self._wrapped_at = 0
        self._shown_rows = 0
        self._rewrapping = False

    def write(
        self,
        content: Any,
        width: int | None = None,
        expand: bool = False,
        shrink: bool = True,
        scroll_end: bool | None = None,
        animate: bool = False,
    ) -> LogView:
        """RichLog's write, wrapped at the room beside the scrollbar (RichLog would measure
        against the console's width, which need not be the view's); what is written is kept
        so it can wrap again at another width."""
        if self._size_known:
            # (Before the size is known RichLog defers the write and calls this again then.)
            room = self.scrollable_content_region.width
            if not self._rewrapping:
                self._written.append(content)
                self._wrapped_at = room
            if width is None:
                width = max(room, _MIN_WIDTH)
        super().write(content, width, expand, shrink, scroll_end, animate)
        return self

    def clear(self) -> LogView:
        self._written.clear()
        super().clear()
        return self

    def on_resize(self, event: events.Resize) -> None:
        """Wrap every line again when the room for text changed (a terminal resize, the log
        screen's wide layout)."""
        width = self.scrollable_content_region.width
        # Whether the end was in view before this resize (the size has already changed).
        at_end = self.scroll_y >= len(self.lines) - self._shown_rows
        self._shown_rows = self.scrollable_content_region.height
        if not self._size_known or not self._written or width == self._wrapped_at:
            return
        self._wrapped_at = width
        old_y, old_count = self.scroll_y, max(1, len(self.lines))
        self._rewrapping = True
        try:
            RichLog.clear(self)
            for content in self._written:
                self.write(content, scroll_end=False)
        finally:
            self._rewrapping = False
        if at_end:
            self.scroll_end(animate=False, immediate=False, x_axis=False)
        else:  # about the same entry at the top as before
            self.scroll_to(y=round(old_y * len(self.lines) / old_count), animate=False, immediate=False)

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
