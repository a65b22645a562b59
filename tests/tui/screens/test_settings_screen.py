"""The settings form: edits are checked with the config models, saved into the file in use
(keeping its comments), and returned as the changed dotted keys."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from textual.widgets import Input, Select, TextArea

from critifusion_tui.config import LoadedConfig, Settings, load_config
from critifusion_tui.tui.screens.settings import SettingsScreen
from tests.tui.screens.host import Host, static_text

REPO_CONFIG = Path(__file__).resolve().parents[3] / "config.toml"


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    shutil.copy(REPO_CONFIG, path)
    return path


def comments(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.lstrip().startswith("#")]


async def test_edit_seed_by_keyboard_and_save_keeps_comments(config_file: Path):
    before = config_file.read_text(encoding="utf-8")
    app = Host(SettingsScreen(load_config(config_file)))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        assert isinstance(screen, SettingsScreen)
        assert static_text(screen, "#target") == f"Saves to {config_file}"
        assert isinstance(app.focused, TextArea) and app.focused.id == "criticore-candidates"
        # candidates, aggregator, vlms, model, then seed.
        await pilot.press("tab", "tab", "tab", "tab")
        assert app.focused.id == "diffusion-seed"
        await pilot.press("end", *["backspace"] * 4, "7")
        assert app.focused.value == "7"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.screen is not screen
    assert app.results == [{"diffusion.seed": 7}]
    after = config_file.read_text(encoding="utf-8")
    assert after == before.replace("seed = 2026\n", "seed = 7\n")
    assert comments(after) == comments(before)
    assert load_config(config_file).settings.diffusion.seed == 7


async def test_routing_and_specfusion_changes_are_written(config_file: Path):
    app = Host(SettingsScreen(load_config(config_file)))
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        screen.query_one("#criticore-candidates", TextArea).text = "rules\n\n  ollama:llama3.1  \n"
        screen.query_one("#criticore-vlms", TextArea).text = "ollama:llava"
        screen.query_one("#specfusion-guidance", Input).value = "6.5"
        screen.query_one("#diffusion-width", Input).value = "auto"  # unchanged: not written
        mode = screen.query_one("#specfusion-mode", Select)
        mode.focus()
        await pilot.press("enter", "down", "enter")  # open the list, pick "adaptive"
        assert mode.value == "adaptive"
        await pilot.press("ctrl+s")
        await pilot.pause()
    changes = {
        "criticore.candidates": ["rules", "ollama:llama3.1"],
        "criticore.vlms": ["ollama:llava"],
        "specfusion.mode": "adaptive",
        "specfusion.guidance": 6.5,
    }
    assert app.results == [changes]
    settings = load_config(config_file).settings
    assert settings.criticore.candidates == ["rules", "ollama:llama3.1"]
    assert settings.criticore.vlms == ["ollama:llava"]
    assert settings.specfusion.mode == "adaptive"
    assert settings.specfusion.guidance == 6.5
    text = config_file.read_text(encoding="utf-8")
    assert 'candidates = [\n  "rules",\n  "ollama:llama3.1",\n]' in text
    assert '# Image size in pixels (multiples of 8), or "auto": the model\'s native size' in text


async def test_rounds_and_base_candidates_are_settings_too(config_file: Path):
    app = Host(SettingsScreen(load_config(config_file)))
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        assert screen.query_one("#loop-stop_at", Input).value == "off"  # TOML has no null
        screen.query_one("#loop-rounds", Input).value = "3"
        screen.query_one("#loop-stop_at", Input).value = "80"
        screen.query_one("#diffusion-base_candidates", Input).value = "2"
        screen.query_one("#loop-min_gain", Input).value = "0"
        score_from = screen.query_one("#loop-score_from", Select)
        score_from.focus()
        await pilot.press("enter", "down", "enter")  # critic -> pickscore
        assert score_from.value == "pickscore"
        await pilot.press("ctrl+s")
        await pilot.pause()
    assert app.results == [
        {
            "diffusion.base_candidates": 2,
            "loop.rounds": 3,
            "loop.stop_at": 80.0,
            "loop.min_gain": 0.0,
            "loop.score_from": "pickscore",
        }
    ]
    settings = load_config(config_file).settings
    assert (settings.loop.rounds, settings.loop.stop_at, settings.diffusion.base_candidates) == (3, 80.0, 2)
    text = config_file.read_text(encoding="utf-8")
    assert "rounds = 3\n" in text and "stop_at = 80.0\n" in text and "base_candidates = 2\n" in text


async def test_invalid_values_show_errors_and_write_nothing(config_file: Path):
    before = config_file.read_bytes()
    stamp = config_file.stat().st_mtime_ns
    app = Host(SettingsScreen(load_config(config_file)))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        screen.query_one("#diffusion-width", Input).value = "500"
        screen.query_one("#diffusion-seed", Input).value = "-1"
        screen.query_one("#criticore-vlms", TextArea).text = "rules\n[bold]bad:ref"
        screen.query_one("#specfusion-rho_t", Input).value = "lots"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.screen is screen, "the form stays open"
        assert "multiple of 8" in static_text(screen, "#diffusion-width-error")
        assert "greater than or equal to 0" in static_text(screen, "#diffusion-seed-error")
        # The bad line is named, and its brackets are shown as typed, not read as markup.
        vlms_error = static_text(screen, "#criticore-vlms-error")
        assert vlms_error.startswith("line 2: unknown provider '[bold]bad'")
        assert "valid number" in static_text(screen, "#specfusion-rho_t-error")
        assert static_text(screen, "#diffusion-height-error") == ""
        assert static_text(screen, "#settings-error") == "Not saved: 4 field(s) need a fix."
        assert set(screen.errors) == {"diffusion.width", "diffusion.seed", "criticore.vlms", "specfusion.rho_t"}
        assert app.focused.id == "criticore-vlms"  # the first field in error
        assert config_file.read_bytes() == before and config_file.stat().st_mtime_ns == stamp
        # Fixing the fields clears their errors on the next save.
        screen.query_one("#diffusion-width", Input).value = "512"
        screen.query_one("#diffusion-seed", Input).value = "3"
        screen.query_one("#criticore-vlms", TextArea).text = "rules"
        screen.query_one("#specfusion-rho_t", Input).value = "0.5"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.screen is not screen
    assert app.results == [
        {"criticore.vlms": ["rules"], "diffusion.width": 512, "diffusion.seed": 3, "specfusion.rho_t": 0.5}
    ]
    assert config_file.read_bytes() != before


async def test_escape_writes_nothing(config_file: Path):
    before = config_file.read_bytes()
    app = Host(SettingsScreen(load_config(config_file)))
    async with app.run_test(size=(80, 24)) as pilot:
        app.screen.query_one("#diffusion-seed", Input).value = "99"
        await pilot.press("escape")
        await pilot.pause()
    assert app.results == [None]
    assert config_file.read_bytes() == before


async def test_nothing_changed_saves_nothing(config_file: Path):
    stamp = config_file.stat().st_mtime_ns
    app = Host(SettingsScreen(load_config(config_file)))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+s")
        await pilot.pause()
    assert app.results == [{}]
    assert config_file.stat().st_mtime_ns == stamp


async def test_without_a_file_saves_to_the_user_config(tmp_path: Path, monkeypatch):
    user_file = tmp_path / "home" / "critifusion" / "config.toml"
    monkeypatch.setattr("critifusion_tui.settings_file.user_config_path", lambda: user_file)
    loaded = LoadedConfig(Settings(), None, "built-in defaults", ["diffusion.model=tiny-random"])
    screen = SettingsScreen(loaded)
    app = Host(screen)
    async with app.run_test(size=(80, 24)) as pilot:
        assert static_text(screen, "#target") == f"Saves to {user_file} (a new file)"
        assert "diffusion.model" in static_text(screen, "#overrides")
        screen.query_one("#diffusion-steps", Input).value = "30"
        await pilot.press("ctrl+s")
        await pilot.pause()
    assert app.results == [{"diffusion.steps": 30}]
    assert screen.saved_path == user_file
    assert load_config(user_file).settings.diffusion.steps == 30
    assert user_file.read_text(encoding="utf-8").startswith("# critifusion configuration")


async def test_every_binding_has_an_id_and_description():
    for binding in SettingsScreen.BINDINGS:
        assert binding.id and binding.description
    assert {b.id for b in SettingsScreen.BINDINGS} == {"settings.save", "settings.cancel"}


async def test_the_focused_field_shows_by_its_label(config_file: Path):
    """The fields are compact (no border): focus marks the field's label in the accent colour."""
    from textual.color import Color
    from textual.widgets import Label

    app = Host(SettingsScreen(load_config(config_file)))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        accent = Color.parse(app.get_css_variables()["accent"]).rgb
        for _ in range(6):  # routing's three lists, model, seed, width
            await pilot.pause()
            field = app.focused
            row = next(a for a in field.ancestors if a.has_class("row"))
            marked = [label for label in screen.query(".row > Label") if label.styles.background.rgb == accent]
            assert marked == [row.query_one(Label)], field.id
            await pilot.press("tab")
