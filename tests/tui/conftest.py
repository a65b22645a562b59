"""Shared setup of the TUI tests (only tests under tests/tui see it).

- textual-image measures the terminal's cell size once, when `textual_image.widget` is first
  imported. Under pytest stdout is no terminal, so the answer would depend on the machine; it
  is pinned here, before any test module imports a widget, to 10x20 pixels (the VT340 size the
  library itself falls back to), which keeps image layouts and snapshots stable.
- Pillow 13 deprecates `Image.getdata`, which textual-image's renderables call; that warning
  is ignored for TUI tests only (pyproject keeps `pillow < 14`).
- Text cursors do not blink: a focused editor's cursor shows or hides every 0.5 s, so a
  snapshot taken late on a loaded machine (CI's two cores) caught it hidden where the
  recorded one shows it. Focus still shows and hides the cursor as in the app.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from textual_image._terminal import CellSize, get_cell_size

CELL_SIZE = CellSize(10, 20)
get_cell_size._result = CELL_SIZE  # type: ignore[attr-defined]  # the library's own cache

_HERE = Path(__file__).parent
_PILLOW_GETDATA = "ignore:.*getdata.*:DeprecationWarning"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.filterwarnings(_PILLOW_GETDATA))


def screen_text(app) -> str:
    """What the running `app`'s screen shows, as plain text (one line per terminal row)."""
    import io

    from rich.console import Console

    width, height = app.size
    console = Console(
        width=width,
        height=height,
        file=io.StringIO(),
        force_terminal=True,
        color_system="truecolor",
        record=True,
        legacy_windows=False,
        safe_box=False,
    )
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text()


@pytest.fixture(autouse=True)
def steady_cursors(monkeypatch):
    from textual.widgets import Input, TextArea

    monkeypatch.setattr(TextArea, "_toggle_cursor_blink_visible", lambda self: None)
    monkeypatch.setattr(Input, "_toggle_cursor", lambda self: None)


@pytest.fixture(name="screen_text")
def screen_text_fixture():
    """The `screen_text(app)` helper, as a fixture."""
    return screen_text


@pytest.fixture
def together_config(together_config):
    """Together for the app's tests, with a whole-answer timeout of 30 s instead of the shared
    fixture's 2 s: the app loads the model in the same process while the providers answer,
    and on a loaded machine (CI's two cores, xdist) an answered request sometimes took longer
    than 2 s to read, so a model the test expected to answer was shown as failed. A test that
    needs a hang to end waits for its own escape, never for this timeout."""
    return together_config.model_copy(update={"timeout_s": 30.0})
