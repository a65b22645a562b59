"""The app starts with the prompt filled in, shows its configuration, and quits cleanly."""

from __future__ import annotations

from textual.widgets import Input, Static

from critifusion_tui.config import LoadedConfig, Settings
from critifusion_tui.tui.app import CritiFusionApp


async def test_starts_with_prompt_and_quits_on_ctrl_q():
    loaded = LoadedConfig(Settings(), None, "built-in defaults")
    app = CritiFusionApp(loaded, prompt="a red fox [bold]in[/] a forest")
    async with app.run_test(size=(80, 24)) as pilot:
        assert app.query_one("#prompt", Input).value == "a red fox [bold]in[/] a forest"
        status = str(app.query_one("#status", Static).render())
        assert "config: built-in defaults" in status
        assert "stabilityai/stable-diffusion-xl-base-1.0" in status
        await pilot.press("ctrl+q")
    assert app.return_code == 0
