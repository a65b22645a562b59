"""SVG snapshots of the settings and history screens at 80x24 and 120x40.

Update after a deliberate change with `pytest tests/tui/screens --snapshot-update` and look at
the report. Paths shown on screen are made stable: the history reads a relative `outputs`
folder from a temporary working directory, times are shown in UTC, and the settings name a
file that does not exist.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from textual_image.widget import HalfcellImage

from critifusion_tui.config import LoadedConfig, Settings
from critifusion_tui.tui.screens.history import HistoryScreen
from critifusion_tui.tui.screens.settings import SettingsScreen
from tests.tui.screens.host import Host
from tests.tui.screens.runs import make_history

SIZES = [(80, 24), (120, 40)]
USER_FILE = Path("/home/user/.config/critifusion/config.toml")


@pytest.fixture
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def outputs(tmp_path, monkeypatch, utc) -> Path:
    monkeypatch.chdir(tmp_path)
    make_history(Path("outputs"))
    return Path("outputs")


def settings_app() -> Host:
    loaded = LoadedConfig(Settings(), USER_FILE, "user config directory", ["diffusion.model=tiny-random"])
    return Host(SettingsScreen(loaded))


def history_app(outputs: Path) -> Host:
    return Host(HistoryScreen(outputs, image_mode="halfblock", image_class=HalfcellImage))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_settings(snap_compare, size):
    assert snap_compare(settings_app(), terminal_size=size)


def test_settings_with_errors(snap_compare):
    async def break_fields(pilot):
        screen = pilot.app.screen
        screen.query_one("#diffusion-width").value = "500"
        screen.query_one("#criticore-aggregator").text = ""
        await pilot.press("ctrl+s")
        await pilot.pause()

    assert snap_compare(settings_app(), terminal_size=(120, 40), run_before=break_fields)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_history(snap_compare, outputs, size):
    assert snap_compare(history_app(outputs), terminal_size=size)


def test_history_compare(snap_compare, outputs):
    assert snap_compare(history_app(outputs), terminal_size=(120, 40), press=["space", "space", "c"])


def test_history_compare_with_scores(snap_compare, outputs):
    from critifusion_tui.engine.store import RunStore
    from critifusion_tui.eval.runs import save_scores

    # The owl has base and refined images; the cat failed before refining (base only).
    owl, cat = (
        RunStore.open(next(p for p in outputs.iterdir() if name in p.name)) for name in ("an-owl", "a-bold-cat")
    )
    save_scores(owl, "pickscore", "tiny", {"base": 20.21, "refined": 20.61})
    save_scores(owl, "aesthetic", "tiny", {"base": 5.42, "refined": 5.61})
    save_scores(cat, "pickscore", "tiny", {"base": 20.9})
    save_scores(cat, "aesthetic", "tiny", {"base": 5.87})
    assert snap_compare(history_app(outputs), terminal_size=(120, 40), press=["space", "space", "c"])
