"""The app in adaptive mode with its alignment from a metric: the refined image's summary and
the log say which source, raw value and mapped score set the parameters; missing weights are
a notification with the fix, and the app goes on."""

from __future__ import annotations

from critifusion_tui.tui.app import DONE, REFINE_GATE, TAGS_GATE
from tests.eval.conftest import weights  # noqa: F401  (the tiny scorer weights, a fixture)
from tests.tui.test_app import app_settings, make_app, notifications, settled, until


def adaptive(tmp_path, weights, **eval_keys):  # noqa: F811
    keys = {key: str(path) for key, path in weights.items()}
    keys.update(eval_keys)
    return app_settings(tmp_path, specfusion={"mode": "adaptive", "alignment_from": "aesthetic"}, eval=keys)


async def test_the_summary_and_the_log_name_the_alignment_source(tmp_path, weights):  # noqa: F811
    app = make_app(adaptive(tmp_path, weights))
    async with app.run_test(size=(100, 30)) as pilot:
        for phase in (TAGS_GATE, REFINE_GATE, DONE):
            await pilot.press("ctrl+r")
            await until(pilot, settled(app, phase), timeout=120)
        source = app.active_run.store.stage("refine")["alignment_from"]
        assert source["source"] == "aesthetic"
        summary = str(app.query_one("#images-summary").content)
        assert f"alignment {source['alignment']:g} / 100 from aesthetic {source['value']:.4g}" in summary
        assert any("adaptive (CADR)" in entry.text and "from aesthetic" in entry.text for entry in app.log_buffer)


async def test_missing_metric_weights_are_a_notification(tmp_path, weights):  # noqa: F811
    app = make_app(adaptive(tmp_path, weights, aesthetic_checkpoint=str(tmp_path / "none.pth")))
    async with app.run_test(size=(100, 30)) as pilot:
        for _ in range(3):
            await pilot.press("ctrl+r")
            await until(pilot, lambda: not app.busy, timeout=120)
        assert app.phase != DONE
        # The editor has the focus: the failure is on the status line (never a toast over
        # the editor), and whole in the log.
        assert str(app.query_one("#hint").render()).startswith("refine failed")
        failed = [e.text for e in app.log_buffer if e.level == "error" and e.source == "refine"]
        assert len(failed) == 1 and "none.pth" in failed[0] and 'alignment_from = "critic"' in failed[0]
        assert not [m for m in notifications(app) if "refine failed" in m]
