"""A yes/no question: y or enter answers yes, n or escape answers no."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from critifusion_tui.tui.widgets._safe import safe_str


class ConfirmScreen(ModalScreen[bool]):
    """Ask `question`; dismissed with True (y, enter) or False (n, escape)."""

    BINDINGS = [
        Binding("y,enter", "answer(True)", "Yes", id="confirm.yes", tooltip="Answer yes"),
        Binding("n,escape", "answer(False)", "No", id="confirm.no", tooltip="Answer no"),
    ]

    DEFAULT_CSS = """
    ConfirmScreen {
        align: center middle;
    }
    ConfirmScreen #confirm-dialog {
        width: 60;
        max-width: 100%;
        height: auto;
        border: thick $warning;
        background: $surface;
        padding: 1 2;
    }
    ConfirmScreen #confirm-question {
        height: auto;
        width: 1fr;
    }
    ConfirmScreen #confirm-buttons {
        height: auto;
        margin-top: 1;
        align-horizontal: center;
    }
    ConfirmScreen #confirm-buttons Button {
        margin: 0 1;
    }
    """

    def __init__(
        self, question: str, yes: str = "Quit", no: str = "Stay", *, name: str | None = None, id: str | None = None
    ) -> None:
        super().__init__(name=name, id=id)
        self.question = question
        self.yes = yes
        self.no = no

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-dialog"):
            yield Static(Text(safe_str(self.question)), id="confirm-question")
            with Horizontal(id="confirm-buttons"):
                # Not focusable: enter always means yes, whatever a button would say.
                yes = Button(Text(f"{safe_str(self.yes)} [y]"), variant="warning", id="confirm-yes")
                no = Button(Text(f"{safe_str(self.no)} [n]"), id="confirm-no")
                yes.can_focus = no.can_focus = False
                yield yes
                yield no

    @on(Button.Pressed, "#confirm-yes")
    def _yes(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#confirm-no")
    def _no(self) -> None:
        self.dismiss(False)

    def action_answer(self, yes: bool) -> None:
        self.dismiss(bool(yes))
