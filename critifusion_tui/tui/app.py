"""The Textual app. This first screen takes a prompt and shows the configuration in use;
the stage panes arrive with the engine."""

from __future__ import annotations

import sys

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Footer, Header, Input, Static

from critifusion_tui.config import LoadedConfig


class CritiFusionApp(App):
    TITLE = "critifusion"
    BINDINGS = [
        Binding("ctrl+q", "quit", "Quit", id="quit", priority=True),
    ]
    CSS = """
    #prompt { margin: 1 1 0 1; }
    #status { margin: 1 2; color: $text-muted; }
    """

    def __init__(self, loaded: LoadedConfig, prompt: str = "") -> None:
        super().__init__()
        self.loaded = loaded
        self.initial_prompt = prompt

    def compose(self) -> ComposeResult:
        settings = self.loaded.settings
        where = str(self.loaded.path) if self.loaded.path else self.loaded.source
        yield Header()
        with Vertical():
            yield Input(value=self.initial_prompt, placeholder="Describe the image…", id="prompt")
            # Plain text, never markup: the prompt and paths are user data.
            yield Static(
                f"config: {where}\nmodel: {settings.diffusion.model}\n"
                "The stage panes (tags, components, base, critique, refine) are not built yet.",
                id="status",
                markup=False,
            )
        yield Footer()


def run_app(loaded: LoadedConfig, prompt: str = "") -> int:
    if not sys.stdin.isatty():
        print(
            "critifusion: the app needs a terminal on standard input; "
            "use 'critifusion run PROMPT' for headless runs",
            file=sys.stderr,
        )
        return 2
    app = CritiFusionApp(loaded, prompt)
    app.run()
    return app.return_code or 0
