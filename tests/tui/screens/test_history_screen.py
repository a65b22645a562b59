"""History: run folders listed newest first, with status and unreadable folders counted;
enter reopens, v views, space + c compares."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.color import Color
from textual.widgets import DataTable
from textual_image.widget import HalfcellImage

from critifusion_tui.tui.screens.history import (
    CompareScreen,
    HistoryScreen,
    RunImagesScreen,
    differences_summary,
    scan_runs,
)
from critifusion_tui.tui.widgets.image_view import ImageView
from tests.tui.conftest import screen_text
from tests.tui.screens.host import Host, plain, static_text
from tests.tui.screens.runs import make_history, make_run


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, Path]:
    return make_history(tmp_path / "outputs")


def history(tmp_path: Path) -> HistoryScreen:
    return HistoryScreen(tmp_path / "outputs", image_mode="halfblock", image_class=HalfcellImage)


def rows(screen: HistoryScreen) -> list[list[str]]:
    table = screen.query_one("#runs", DataTable)
    return [[plain(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]


def test_scan_runs_sorts_newest_first_and_counts_unreadable(tmp_path, runs):
    found, unreadable = scan_runs(tmp_path / "outputs")
    assert [r.folder for r in found] == [runs["cat"], runs["owl"], runs["fox"]]
    assert sorted(f.name for f, _ in unreadable) == ["20260301-120000-broken", "20260301-120500-foreign"]
    assert any("schema 'other/2'" in why for _, why in unreadable)
    assert scan_runs(tmp_path / "missing") == ([], [])


async def test_lists_runs_newest_first_with_status_and_unreadable_count(tmp_path, runs):
    screen = history(tmp_path)
    app = Host(screen)
    async with app.run_test(size=(80, 24)):
        assert static_text(screen, "#history-summary").startswith("3 runs · 2 folders could not be read")
        table = rows(screen)
        assert [r[2] for r in table] == ["failed", "cancelled", "done"]
        assert [r[5] for r in table] == [
            "a [bold]cat[/] on a mat",
            "an owl at night, moonlight",
            "a red fox in the snow",
        ]
        assert [r[3] for r in table] == ["12.5 s", "16.5 s", "16.5 s"]
        assert all(r[4] == "tiny" for r in table)
        # The detail pane shows the highlighted run's prompt as typed (no markup).
        assert static_text(screen, "#run-detail").startswith("Prompt: a [bold]cat[/] on a mat")


async def test_paused_and_abandoned_runs_are_listed_and_a_newer_schema_is_named(tmp_path):
    import json

    from tests.tui.screens.runs import make_run

    outputs = tmp_path / "outputs"
    paused = make_run(outputs, "a fox waiting at the gate", minutes=0, status="paused", refined=False)
    abandoned = make_run(outputs, "a fox left behind", minutes=5, status="abandoned", refined=False)
    newer = outputs / "20260301-120000-newer"
    newer.mkdir()
    (newer / "manifest.json").write_text(json.dumps({"schema": "critifusion.run/2", "prompt": "a fox", "seed": 1}))

    found, unreadable = scan_runs(outputs)
    assert [(r.folder, r.status) for r in found] == [(abandoned, "abandoned"), (paused, "paused")]
    assert [(f, why.split(": ", 1)[1]) for f, why in unreadable] == [
        (
            newer,
            "made by a newer critifusion-tui (schema critifusion.run/2); this version reads critifusion.run/1"
            " — upgrade critifusion-tui to open it",
        ),
    ]
    screen = history(tmp_path)
    async with Host(screen).run_test(size=(80, 24)):
        assert [r[2] for r in rows(screen)] == ["abandoned", "paused"]
        assert static_text(screen, "#history-summary").startswith(
            "2 runs · 1 folder could not be read (20260301-120000-newer)"
        )


async def test_long_prompt_is_truncated_to_the_column(tmp_path):
    from tests.tui.screens.runs import make_run

    make_run(tmp_path / "outputs", "a very long prompt " * 20, minutes=0)
    screen = history(tmp_path)
    async with Host(screen).run_test(size=(80, 24)) as pilot:
        cell = rows(screen)[0][5]
        assert cell.endswith("…") and len(cell) < 40
        # Wider: the prompt gets the room, and still fits beside the detail pane.
        await pilot.resize_terminal(200, 40)
        await pilot.pause()
        table = screen.query_one("#runs", DataTable)
        cell = rows(screen)[0][5]
        assert cell.endswith("…") and len(cell) > 40
        assert table.virtual_size.width <= table.size.width


async def test_enter_reopens_the_highlighted_run(tmp_path, runs):
    screen = history(tmp_path)
    app = Host(screen)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("down", "enter")
        await pilot.pause()
        assert app.screen is not screen
    assert app.reopened == [runs["owl"]]
    assert app.results == [runs["owl"]]


async def test_escape_goes_back_without_reopening(tmp_path, runs):
    app = Host(history(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("escape")
        await pilot.pause()
    assert app.results == [None]
    assert app.reopened == []


async def test_v_shows_base_and_refined_side_by_side(tmp_path, runs):
    screen = history(tmp_path)
    app = Host(screen)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("end", "v")  # the fox: done, both images
        await pilot.pause()
        view = app.screen
        assert isinstance(view, RunImagesScreen)
        assert view.query_one("#view-base", ImageView).path == runs["fox"] / "base.png"
        assert view.query_one("#view-refined", ImageView).path == runs["fox"] / "refined.png"
        assert view.query_one("#view-refined", ImageView).label == "tiny-random: noise"
        assert "Prompt: a red fox in the snow" in static_text(view, "#view-prompts")
        # The text under the images is where the keys scroll: its focus shows (an accent edge).
        text = view.query_one("#view-text")
        assert app.focused is text
        accent = Color.parse(app.get_css_variables()["accent"]).rgb
        assert (text.styles.border_left[0], text.styles.border_left[1].rgb) == ("thick", accent)
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is screen
        await pilot.press("home", "v")  # the cat failed before refining
        await pilot.pause()
        refined = app.screen.query_one("#view-refined", ImageView)
        assert refined.path is None
        assert refined.message == "No refined image: the run failed."


async def test_compare_two_marked_runs(tmp_path, runs):
    screen = history(tmp_path)
    app = Host(screen)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("c")  # nothing marked yet: a hint, no screen
        await pilot.pause()
        assert app.screen is screen
        await pilot.press("space", "space")  # marks the cat (A), then the owl (B)
        assert screen.marked == [runs["cat"], runs["owl"]]
        assert [r[0] for r in rows(screen)] == ["A", "B", ""]
        await pilot.press("c")
        await pilot.pause()
        compare = app.screen
        assert isinstance(compare, CompareScreen)
        # The cat has no refined image: its base stands in, and says so.
        a = compare.query_one("#compare-a", ImageView)
        assert a.path == runs["cat"] / "base.png"
        assert a.label.startswith("base image, not refined")
        assert compare.query_one("#compare-b", ImageView).path == runs["owl"] / "refined.png"
        assert static_text(compare, "#prompt-a").startswith("A prompt: a [bold]cat[/] on a mat")
        assert static_text(compare, "#prompt-b").startswith("B prompt: an owl at night, moonlight")
        differences = {label: (left, right) for label, left, right in compare.differences()}
        assert differences["steps"] == ("20", "30")
        assert differences["status"] == ("failed", "cancelled")
        assert "seed" not in differences and "model" not in differences
        assert compare.differences_summary() == (
            "Differs: the prompts (above), the refinement prompts and 5 key settings."
        )
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is screen


async def test_a_third_mark_replaces_the_oldest(tmp_path, runs):
    screen = history(tmp_path)
    async with Host(screen).run_test(size=(80, 24)) as pilot:
        await pilot.press("space", "space", "space")
        assert screen.marked == [runs["owl"], runs["fox"]]
        await pilot.press("space")  # the cursor stays on the last row: unmark the fox
        assert screen.marked == [runs["owl"]]
        assert [r[0] for r in rows(screen)] == ["", "A", ""]


async def test_empty_output_folder(tmp_path):
    screen = history(tmp_path)
    app = Host(screen)
    async with app.run_test(size=(80, 24)) as pilot:
        assert static_text(screen, "#history-summary") == "No runs here yet"
        assert "No run folders in" in static_text(screen, "#run-detail")
        await pilot.press("enter", "v")
        await pilot.pause()
        assert app.screen is screen and app.reopened == []


async def test_wide_screen_previews_the_highlighted_run(tmp_path, runs):
    screen = history(tmp_path)
    async with Host(screen).run_test(size=(200, 60)) as pilot:
        # Poll rather than sleep a fixed time: on a loaded machine the preview comes later.
        async def until(predicate, timeout=10.0):
            for _ in range(int(timeout / 0.05)):
                if predicate():
                    return
                await pilot.pause(0.05)
            raise AssertionError("the preview never changed")

        preview = screen.query_one("#run-preview", ImageView)
        await until(lambda: preview.display and preview.path == runs["cat"] / "base.png")
        await pilot.press("down")
        await until(lambda: preview.path == runs["owl"] / "refined.png")


def test_bindings_have_ids():
    ids = {b.id for b in HistoryScreen.BINDINGS}
    assert ids == {
        "history.reopen",
        "history.view",
        "history.mark",
        "history.compare",
        "history.score",
        "history.refresh",
        "history.back",
    }
    assert all(b.description for b in HistoryScreen.BINDINGS)


async def compare_text(tmp_path: Path, **second) -> tuple[str, list[str]]:
    """Two runs of "a red fox" (the second with `second`'s changes) marked and compared in
    the history: the summary line and the labels of the rows that differ, as shown."""
    out = tmp_path / "outputs"
    make_run(out, "a red fox", minutes=0)
    make_run(out, **{"prompt": "a red fox", "minutes": 5, **second})
    screen = HistoryScreen(out, image_mode="halfblock", image_class=HalfcellImage)
    app = Host(screen)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("space", "space", "c")
        await pilot.pause()
        compare = app.screen
        assert isinstance(compare, CompareScreen)
        shown = " ".join(screen_text(app).split())  # what the screen shows, wrapping undone
        return shown, [label for label, _, _ in compare.differences()]


async def test_compare_of_two_identical_runs_says_nothing_differs(tmp_path):
    shown, rows = await compare_text(tmp_path)
    assert rows == []
    assert "Nothing differs: the same prompt and the same key settings." in shown
    assert "only the prompts differ" not in shown


async def test_compare_with_the_same_prompt_names_the_settings_that_differ(tmp_path):
    shown, rows = await compare_text(tmp_path, seed=99, steps=30)
    assert rows == ["seed", "steps", "refine steps (used)"]
    assert "Differs: 3 key settings. The prompts are the same." in shown
    assert "seed" in shown and "99" in shown


async def test_compare_of_different_prompts_with_the_same_settings(tmp_path):
    shown, rows = await compare_text(tmp_path, prompt="a grey wolf")
    assert rows == ["refinement prompt"]  # the fixture's refinement follows the prompt
    assert "Differs: the prompts (above) and the refinement prompts. The key settings are the same." in shown


@pytest.mark.parametrize(
    "same_prompt, rows, said",
    [
        (True, [], "Nothing differs: the same prompt and the same key settings."),
        (False, [], "Differs: the prompts (above). The key settings are the same."),
        (True, [("seed", "1", "2")], "Differs: 1 key setting. The prompts are the same."),
        (True, [("refinement prompt", "x", "y")], "Differs: the refinement prompts. The prompts are the same."),
        (False, [("seed", "1", "2"), ("steps", "4", "8")], "Differs: the prompts (above) and 2 key settings."),
    ],
)
def test_differences_summary(same_prompt, rows, said):
    assert differences_summary(same_prompt, rows) == said
