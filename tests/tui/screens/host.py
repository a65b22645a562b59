"""A tiny app that pushes one screen and records what it returns and what it posts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import App
from textual.screen import Screen
from textual.widgets import Static


class Host(App):
    """Shows one line of its own, pushes `screen` on mount, keeps every result and reopen."""

    def __init__(self, screen: Screen) -> None:
        super().__init__()
        self.pushed = screen
        self.results: list[Any] = []
        self.reopened: list[Path] = []

    def compose(self):
        yield Static("host app")

    def on_mount(self) -> None:
        self.push_screen(self.pushed, self.results.append)

    def on_history_screen_reopen(self, message) -> None:
        self.reopened.append(message.folder)


def plain(renderable: Any) -> str:
    """The characters a Static or a cell shows (a Text, a Content or a str)."""
    if isinstance(renderable, Text):
        return renderable.plain
    return str(renderable)


def static_text(screen: Screen, selector: str) -> str:
    return plain(screen.query_one(selector, Static).render())
