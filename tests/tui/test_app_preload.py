"""The app loads the diffusion model while the person writes a prompt (Session.preload from
``on_mount``), so the first base image does not wait for the load."""

from __future__ import annotations

from critifusion_tui.tui.app import REFINE_GATE, TAGS_GATE
from tests.tui.test_app import app_settings, make_app, settled, until


async def test_the_model_loads_while_the_app_waits_for_a_prompt(tmp_path):
    app = make_app(app_settings(tmp_path))
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.session is not None and app.session.load_state(app.session.diffusion) == "ready")
        assert app.active_run is None  # nothing was started: the load ran on its own
        await pilot.press("ctrl+r")
        await until(pilot, settled(app, TAGS_GATE))
        await pilot.press("ctrl+r")
        await until(pilot, settled(app, REFINE_GATE))
        said = [entry.text for entry in app.log_buffer]
        assert not any(text.startswith("loading ") for text in said)  # the base waited for no load
        assert any(text.startswith("model: ") for text in said)  # ... and recorded what it used
