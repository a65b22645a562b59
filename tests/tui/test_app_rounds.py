"""Critique rounds in the app (Pilot): the round strip shows each round with its score as it
comes, and its keys pick the final image, ask for one more round and stop rounds in flight."""

from __future__ import annotations

import json
import time

from critifusion_tui.tui.app import DONE, REFINE_GATE, TAGS_GATE
from critifusion_tui.tui.widgets.image_view import ImageView
from critifusion_tui.tui.widgets.round_strip import RoundStrip
from critifusion_tui.tui.widgets.stage_rail import StageRail
from tests.engine.test_rounds import critic_says
from tests.tui.test_app import make_app, settled, until
from tests.tui.test_app_flow import footer_keys, footer_width, hosted


def with_rounds(tmp_path, settings, **loop):
    app_settings = hosted(tmp_path, settings, vlms=["together:critic"])
    app_settings.loop = app_settings.loop.model_validate(loop)
    return app_settings


def final_of(app) -> dict:
    return json.loads((app.active_run.folder / "manifest.json").read_text())["stages"]["rounds"]


async def run_to_the_end(app, pilot) -> None:
    await pilot.press("ctrl+r")
    await until(pilot, settled(app, TAGS_GATE))
    await pilot.press("ctrl+r")
    await until(pilot, settled(app, REFINE_GATE))
    await pilot.press("ctrl+r")
    await until(pilot, settled(app, DONE))


async def test_the_strip_shows_the_rounds_and_its_keys_pick_and_add_one(tmp_path, server, settings):
    critic_says(server, 40, 62, 84, 70)  # base, round 1, round 2 (stop_at 80), then one more
    app = make_app(with_rounds(tmp_path, settings, rounds=3, stop_at=80))
    async with app.run_test(size=(120, 40)) as pilot:
        await run_to_the_end(app, pilot)
        strip = app.query_one(RoundStrip)
        assert not strip.has_class("-hidden") and app.focused is strip
        assert [(r["round"], r["score"]) for r in strip.rounds] == [(1, 62.0), (2, 84.0)]
        shown = str(strip.render())
        assert "r1 62" in shown and "r2 84 ★" in shown and "reached stop_at 80" in shown
        assert app.query_one(StageRail).state("rounds") == "done"
        refined = app.query_one("#image-refine", ImageView)
        assert refined.path == app.active_run.folder / "refined_r2.png"  # the final round's image

        # The second line: what the highlighted round's critique found (the third critic
        # answer criticised round 2's image).
        assert shown.splitlines()[1].startswith("r2 (seed ") and shown.endswith("its critique found: problem 2")

        await pilot.press("left")  # round 1's image is shown ...
        assert refined.path == app.active_run.folder / "refined.png"
        assert str(strip.render()).splitlines()[1].endswith("its critique found: problem 1")
        await pilot.press("enter")  # ... and made the final image
        await pilot.pause()
        assert final_of(app)["final"] == 1 and final_of(app)["final_by"] == "user"
        assert "r1 62 ★" in str(strip.render())

        await pilot.press("plus")  # one more round, whatever stop_at says
        await until(pilot, lambda: not app.busy and len(final_of(app)["rounds"]) == 3)
        await until(pilot, settled(app, DONE))
        assert [(r["round"], r["score"]) for r in strip.rounds] == [(1, 62.0), (2, 84.0), (3, 70.0)]
        assert final_of(app)["stopped"] == "the round you asked for is done"
        assert final_of(app)["final"] == 1  # the person's pick stands through later rounds
        assert "r1 62 ★" in str(strip.render())
        assert (app.active_run.folder / "refined_r3.png").is_file()


async def test_s_stops_the_rounds_in_flight_and_keeps_the_rounds_done(tmp_path, server, settings):
    critic_says(server, 40, 50)
    server.script("critic", hang=True, times=1)  # round 2's critique never answers
    settings.providers.together.timeout_s = 30.0
    app = make_app(with_rounds(tmp_path, settings, rounds=4))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("ctrl+r")
        await until(pilot, settled(app, TAGS_GATE))
        await pilot.press("ctrl+r")
        await until(pilot, settled(app, REFINE_GATE))
        await pilot.press("ctrl+r")
        strip = app.query_one(RoundStrip)
        # Round 2 is drawn and its critique is in flight (the third request to the critic).
        critics = lambda: [r for r in server.requests_to("/v1/chat/completions") if r.body.get("model") == "critic"]  # noqa: E731
        await until(pilot, lambda: len(critics()) == 3 and strip.running)
        assert [(r["round"], r["score"]) for r in strip.rounds] == [(1, 50.0)]
        started = time.monotonic()
        strip.focus()
        await pilot.press("s")
        await until(pilot, settled(app, DONE))
        assert time.monotonic() - started < 10  # the stop, not the provider's 30 s timeout
        record = final_of(app)
        assert record["stopped"] == "stopped by you"
        # Round 2 was drawn, so it is kept; its critique was dropped, so it has no score.
        assert [(r["round"], r.get("score")) for r in record["rounds"]] == [(1, 50.0), (2, None)]
        assert record["final"] == 1  # the only scored round
        assert "r2 –" in str(strip.render()) and "stopped by you" in str(strip.render())
        assert str(strip.render()).splitlines()[1].endswith("its critique found: problem 1")  # r1, the final
        strip.focus()
        await pilot.press("right")
        assert str(strip.render()).splitlines()[1].endswith("r2 (seed 5129): not criticised (the rounds ended first)")


async def test_with_the_strip_focused_the_footer_still_fits_80_columns(tmp_path, server, settings):
    critic_says(server, 40, 62, 84)
    app = make_app(with_rounds(tmp_path, settings, rounds=2))
    async with app.run_test(size=(80, 24)) as pilot:
        await run_to_the_end(app, pilot)
        assert app.focused is app.query_one(RoundStrip)
        await pilot.pause(0.2)
        assert footer_width(app) <= 80
        assert {"pick", "more", "help", "history"} <= set(footer_keys(app)), footer_keys(app)
