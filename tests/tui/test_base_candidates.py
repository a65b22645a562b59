"""Best-of-N bases in the app (Pilot): the thumbnails at the refine gate, and a person picking
another candidate with the keys, which redoes the critique on it."""

from __future__ import annotations

import json

from critifusion_tui.tui.app import REFINE_GATE, TAGS_GATE
from critifusion_tui.tui.screens.confirm import ConfirmScreen
from critifusion_tui.tui.widgets.base_candidates import BaseCandidatesView
from critifusion_tui.tui.widgets.image_view import ImageView
from tests.tui.test_app import app_settings, make_app, settled, until


def footer_keys(app) -> set[str]:
    """The actions the footer offers now (check_action decides)."""
    return {
        active.binding.action
        for active in app.active_bindings.values()
        if active.binding.show and active.enabled and app.screen.check_action(active.binding.action, ()) is not False
    }


def critiques_started(app) -> int:
    return sum(1 for entry in app.log_buffer if entry.source == "critique" and entry.text.startswith("started"))


async def to_the_refine_gate(app, pilot) -> None:
    await pilot.press("ctrl+r")
    await until(pilot, settled(app, TAGS_GATE))
    await pilot.press("ctrl+r")
    await until(pilot, settled(app, REFINE_GATE))


async def test_the_thumbnails_show_every_candidate_and_a_pick_redoes_the_critique(tmp_path):
    app = make_app(app_settings(tmp_path, diffusion={"base_candidates": 3}))
    async with app.run_test(size=(120, 40)) as pilot:
        view = app.query_one(BaseCandidatesView)
        assert not view.display  # no run yet: nothing to show
        await to_the_refine_gate(app, pilot)
        folder = app.active_run.folder
        assert view.display and view.picked == 1
        shown = [t for t in view.thumbnails if t.display]
        assert [t.path for t in shown] == [folder / f"base_c{i}.png" for i in (1, 2, 3)]
        # The offline critic gives no rating: each says so, and candidate 1 is marked picked.
        assert [t.label for t in shown] == ["not rated - picked", "not rated", "not rated"]
        assert "seed 12026" in str(shown[1].border_title)
        assert all(t.region.height >= 8 for t in shown)

        view.focus()
        await pilot.pause()
        assert "pick" not in footer_keys(app)  # the highlighted one is the base already
        await pilot.press("right", "right")
        assert view.highlighted == 3 and shown[2].has_class("-highlighted")
        assert "pick" in footer_keys(app)
        await pilot.press("right")  # the last one stays highlighted
        assert view.highlighted == 3

        # A pick asks first; "no" changes nothing.
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "candidate 3" in app.screen.question and "critique runs again" in app.screen.question
        await pilot.press("n")
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
        assert app.active_run.store.stage("base")["picked"] == 1

        assert critiques_started(app) == 1
        view.focus()
        await pilot.press("p")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
        await until(pilot, settled(app, REFINE_GATE))

        manifest = json.loads((folder / "manifest.json").read_text())
        base = manifest["stages"]["base"]
        assert (base["picked"], base["picked_by"], base["seed"]) == (3, "user", 22026)
        assert [(e["field"], e["by"], e["after"]) for e in manifest["edits"]] == [("base", "user", "candidate 3")]
        assert (folder / "base.png").read_bytes() == (folder / "base_c3.png").read_bytes()
        # The critique ran again, on the new base, and the refinement is still to come.
        assert critiques_started(app) == 2
        assert "critique" in manifest["stages"] and "refine" not in manifest["stages"]
        assert view.picked == 3
        assert [t.label for t in shown] == ["not rated", "not rated", "not rated - picked"]
        assert app.query_one("#critique-image", ImageView).path == folder / "base.png"

        await pilot.press("ctrl+r")  # refine from candidate 3
        await until(pilot, lambda: not app.busy and app.active_run.store.stage("refine") is not None)
        assert app.active_run.store.manifest["stages"]["base"]["picked"] == 3


async def test_one_base_shows_no_thumbnails(tmp_path):
    app = make_app(app_settings(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        await to_the_refine_gate(app, pilot)
        assert not app.query_one(BaseCandidatesView).display
