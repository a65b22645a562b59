"""Eval scores in the history: shown side by side on the compare screen (two runs) and the
view screen (one run's variants) when the manifests hold them, and `e` scores runs in a
worker thread with the tiny scorers, a progress bar, and errors as notifications."""

from __future__ import annotations

import asyncio
import io
import threading
import json
from pathlib import Path

import pytest
from rich.console import Console
from textual.widgets import Static
from textual_image.widget import HalfcellImage

from critifusion_tui.config import Settings
from critifusion_tui.engine.store import RunStore
from critifusion_tui.eval.runs import save_scores
from critifusion_tui.eval.scorers import ScorerCache
from critifusion_tui.tui.screens.history import CompareScreen, HistoryScreen, RunImagesScreen, ScoringMixin
from tests.eval.conftest import weights  # noqa: F401  (the tiny scorer weights, a fixture)
from tests.tui.screens.host import Host
from tests.tui.screens.runs import make_history


def shown(screen, selector: str, width: int = 100) -> str:
    """What a Static holding a Rich table (or a Text) shows, as plain text."""
    console = Console(width=width, file=io.StringIO(), record=True)
    console.print(screen.query_one(selector, Static).content)
    return console.export_text()


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, Path]:
    return make_history(tmp_path / "outputs")


def history(tmp_path: Path, scorers=None) -> HistoryScreen:
    return HistoryScreen(tmp_path / "outputs", image_mode="halfblock", image_class=HalfcellImage, scorers=scorers)


def tiny_scorers(weights, **eval_keys):  # noqa: F811
    keys = {key: str(path) for key, path in weights.items()}
    keys.update(eval_keys)
    settings = Settings.model_validate(
        {
            "diffusion": {"device": "cpu", "dtype": "float32"},
            "eval": {**keys, "metrics": ["pickscore", "aesthetic"], "batch_size": 2},
        }
    )
    cache = ScorerCache(settings, cache_dir="/nonexistent-hf-cache")
    return lambda: cache


async def wait_for(pilot, predicate, timeout=60.0):
    for _ in range(int(timeout / 0.1)):
        if predicate():
            return
        await pilot.pause(0.1)
    raise AssertionError("timed out")


async def test_compare_shows_both_runs_scores_side_by_side(tmp_path, runs):
    for name, pick in (("owl", 20.5), ("fox", 21.25)):
        store = RunStore.open(runs[name])
        save_scores(store, "pickscore", "weights-1", {"base": pick - 1, "refined": pick})
    save_scores(RunStore.open(runs["owl"]), "aesthetic", "weights-2", {"refined": 5.5})
    app = Host(history(tmp_path))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("down", "space", "space", "c")  # the owl (A) and the fox (B)
        await pilot.pause()
        compare = app.screen
        assert isinstance(compare, CompareScreen)
        rows = [line.split() for line in shown(compare, "#scores").splitlines()]
        assert ["refined", "pickscore", "20.5", "21.25", "+0.75"] in rows
        assert ["base", "pickscore", "19.5", "20.25", "+0.75"] in rows
        assert ["refined", "aesthetic", "5.5", "–", "–"] in rows  # B has none: no difference
        await pilot.press("escape", "up", "v")  # the owl alone: its variants side by side
        await pilot.pause()
        view = app.screen
        assert isinstance(view, RunImagesScreen)
        rows = [line.split() for line in shown(view, "#view-scores").splitlines()]
        assert ["metric", "base", "refined"] in rows
        assert ["pickscore", "19.5", "20.5"] in rows and ["aesthetic", "–", "5.5"] in rows


async def test_without_scores_the_screens_say_how_to_get_them(tmp_path, runs):
    app = Host(history(tmp_path))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("space", "space", "c")
        await pilot.pause()
        assert "No eval scores yet: e scores both runs' images." in shown(app.screen, "#scores")


async def test_e_scores_the_compared_runs_in_a_worker(tmp_path, runs, weights, monkeypatch):  # noqa: F811
    scorers = tiny_scorers(weights)
    cache = scorers()
    # Hold the worker inside its first batch until the test has seen the UI answer meanwhile.
    release = threading.Event()
    real_get = cache.get

    def held_get(metric, prepared=None):
        scorer = real_get(metric, prepared)
        real_score = scorer.score

        def score(images, prompts):
            assert release.wait(60), "never released"
            return real_score(images, prompts)

        scorer.score = score
        return scorer

    cache.get = held_get
    app = Host(history(tmp_path, scorers))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("down", "space", "space", "c")  # the owl and the fox: 2 images each
        await pilot.pause()
        compare = app.screen
        assert isinstance(compare, CompareScreen)
        progress = []
        monkeypatch.setattr(ScoringMixin, "on_scoring_progress", _spy(ScoringMixin.on_scoring_progress, progress))
        await pilot.press("e")
        bar = compare.query_one("#eval-bar")
        await wait_for(pilot, lambda: progress)  # the worker started on pickscore...
        assert bar.has_class("-running") and bar.display
        await pilot.press("e")  # ...and the UI still answers keys: a second press only says so
        assert "Already scoring; wait for it to finish." in [n.message for n in app._notifications]
        assert "Scoring pickscore" in shown(compare, "#eval-label")
        release.set()
        await wait_for(pilot, lambda: not bar.has_class("-running"))
        assert not bar.display
        for name in ("owl", "fox"):
            recorded = manifest(runs[name])["eval"]
            assert set(recorded["base"]) == set(recorded["refined"]) == {"pickscore", "aesthetic"}
        text = shown(compare, "#scores")
        owl, fox = manifest(runs["owl"])["eval"], manifest(runs["fox"])["eval"]
        line = next(ln.split() for ln in text.splitlines() if ln.split()[:2] == ["refined", "pickscore"])
        assert line[2:4] == [f"{owl['refined']['pickscore']:.4g}", f"{fox['refined']['pickscore']:.4g}"]
        # Progress per metric, from 0 to its 4 images.
        assert [p for p in progress if p[1] in (0, 4)] == [
            ("pickscore", 0, 4),
            ("pickscore", 4, 4),
            ("aesthetic", 0, 4),
            ("aesthetic", 4, 4),
        ]
        assert "8 images scored." in [n.message for n in app._notifications]


def _spy(handler, calls):
    def spy(self, message):
        calls.append((message.metric, message.done, message.total))
        return handler(self, message)

    return spy


async def test_missing_weights_are_a_notification_and_the_other_metric_scores(tmp_path, runs, weights):  # noqa: F811
    missing = tmp_path / "nowhere.pth"
    app = Host(history(tmp_path, tiny_scorers(weights, aesthetic_checkpoint=str(missing))))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("end", "e")  # the fox, from the run list
        screen = app.screen
        await wait_for(pilot, lambda: not screen.query_one("#eval-bar").has_class("-running"))
        recorded = manifest(runs["fox"])["eval"]
        assert set(recorded["refined"]) == {"pickscore"}
        errors = [n for n in app._notifications if n.severity == "error"]
        assert len(errors) == 1 and "aesthetic: cannot load its weights" in errors[0].message
        assert str(missing) in errors[0].message and not errors[0].markup
        assert "Scores (refined): pickscore" in shown(screen, "#run-detail")
        # Again: the pickscore images are already scored with these weights.
        await pilot.press("e")
        await wait_for(pilot, lambda: not screen.query_one("#eval-bar").has_class("-running"))
        await asyncio.sleep(0)
        assert manifest(runs["fox"])["eval"] == recorded


async def test_without_settings_e_says_where_to_score(tmp_path, runs):
    app = Host(history(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("e")
        await pilot.pause()
        assert any("critifusion eval" in n.message for n in app._notifications)
