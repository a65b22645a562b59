"""Help for the focused widget: its help text, then every key that works there."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Static

from critifusion_tui.tui.widgets._safe import safe_str


class HelpScreen(ModalScreen[None]):
    """The focused widget's help text and a table of keys (key, what it does, binding id)."""

    BINDINGS = [
        Binding("escape,f1", "close", "Close", id="help.close", tooltip="Close the help"),
    ]

    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]

    DEFAULT_CSS = """
    HelpScreen {
        align: center middle;
    }
    HelpScreen #help-dialog {
        width: 100%;
        height: auto;
        border: round $primary;
        border-title-style: bold;
        background: $surface;
    }
    HelpScreen.-wide #help-dialog {
        width: 80%;
        max-width: 140;
        max-height: 90%;
    }
    HelpScreen #help-text-scroll {
        height: auto;
        max-height: 45%;
        padding: 0 1;
    }
    HelpScreen #help-text {
        height: auto;
    }
    HelpScreen #help-keys-title {
        height: 1;
        margin-top: 1;
        padding: 0 1;
        text-style: bold;
        color: $accent;
    }
    HelpScreen #help-keys {
        height: auto;
        max-height: 12;
    }
    HelpScreen.-wide #help-keys {
        max-height: 30;
    }
    """

    def __init__(
        self,
        widget_title: str,
        widget_help: str,
        bindings: list[tuple[str, str, str]],
        *,
        name: str | None = None,
        id: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id)
        self.widget_title = widget_title
        self.widget_help = widget_help
        self.bindings = list(bindings)

    def compose(self) -> ComposeResult:
        with Vertical(id="help-dialog") as dialog:
            dialog.border_title = Text(f"Help: {safe_str(self.widget_title)}")
            dialog.border_subtitle = "esc or F1 closes"
            with VerticalScroll(id="help-text-scroll"):
                text = self.widget_help.strip() or "No help text for this part of the screen."
                yield Static(Text(safe_str(text)), id="help-text")
            yield Static("Keys", id="help-keys-title")
            table: DataTable = DataTable(id="help-keys", cursor_type="row", zebra_stripes=True)
            table.add_column("Key", key="key")
            table.add_column("Does", key="description")
            table.add_column("Binding id", key="id")
            for key, description, binding_id in self.bindings:
                table.add_row(
                    Text(safe_str(key), style="bold", no_wrap=True),
                    Text(safe_str(description)),
                    Text(safe_str(binding_id), style="dim"),
                )
            yield table
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#help-keys", DataTable).focus()

    def action_close(self) -> None:
        self.dismiss(None)
