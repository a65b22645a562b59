"""The image view: a real PNG drawn in half-blocks, its label, the path-only mode, clearing."""

from __future__ import annotations

from pathlib import Path

import pytest
import textual_image.widget as ti_widget
from textual.app import App, ComposeResult
from textual.containers import Horizontal
from textual_image.widget import HalfcellImage

from critifusion_tui.tui.widgets.image_view import IMAGE_MODES, ImageView, image_class_for_mode
from tests.tui.conftest import screen_text
from tests.tui.widgets._support import write_png


class ViewApp(App):
    def __init__(self, *views: ImageView, css: str = "") -> None:
        super().__init__()
        self.views = views
        self.extra_css = css

    def compose(self) -> ComposeResult:
        with Horizontal(id="previews"):
            yield from self.views

    def on_mount(self) -> None:
        if self.extra_css:
            self.stylesheet.add_source(self.extra_css, read_from=("test", "css"))
            self.stylesheet.reparse()
            self.stylesheet.update(self)


def box(app: App, view: ImageView) -> list[str]:
    """The screen rows inside `view`'s border."""
    region = view.region
    rows = screen_text(app).splitlines()[region.y + 1 : region.bottom - 1]
    return [row[region.x + 1 : region.right - 1] for row in rows]


async def test_halfcell_image_is_drawn_with_its_label(tmp_path: Path):
    png = write_png(tmp_path / "base.png")
    view = ImageView("Base", image_class=HalfcellImage, id="base")
    app = ViewApp(view)
    async with app.run_test(size=(80, 24)) as pilot:
        view.show(png, "tiny-random: noise")
        await pilot.pause()
        assert view.path == png and view.label == "tiny-random: noise"
        image = view.image_widget
        assert isinstance(image, HalfcellImage) and image.display
        assert image.image == str(png)
        # A square image in the default 17-row box: 14 rows of half-blocks (28 pixel rows),
        # 28 columns wide at the pinned 10x20 px cells: the aspect ratio is kept.
        assert (image.size.width, image.size.height) == (28, 14)
        inside = box(app, view)
        assert sum("▀" in row for row in inside) == 14
        assert inside[-1].strip() == "tiny-random: noise"
        assert "─ Base ─" in screen_text(app).splitlines()[view.region.y]


async def test_two_views_side_by_side_keep_aspect_and_refit_on_resize(tmp_path: Path):
    wide = write_png(tmp_path / "wide.png", 128, 64)
    left = ImageView("Base", image_class=HalfcellImage, id="base")
    right = ImageView("Refined", image_class=HalfcellImage, id="refined")
    app = ViewApp(left, right, css="#previews ImageView { height: 1fr; }")
    async with app.run_test(size=(80, 24)) as pilot:
        left.show(wide, "base")
        right.show(wide, "refined")
        await pilot.pause()
        assert left.region.width == right.region.width == 40
        assert left.region.height == right.region.height == 24  # the app's CSS sets the height
        for view in (left, right):
            width, height = view.image_widget.size
            assert abs(width * 10 / (height * 20) - 2.0) < 0.15  # 2:1 in pixels
        await pilot.resize_terminal(120, 40)
        await pilot.pause()
        width, height = left.image_widget.size
        assert width > 38 and abs(width * 10 / (height * 20) - 2.0) < 0.15


async def test_none_mode_shows_the_path_and_label(tmp_path: Path):
    png = write_png(tmp_path / "refined.png")
    view = ImageView("Refined", mode="none", id="refined")
    app = ViewApp(view)
    async with app.run_test(size=(80, 24)) as pilot:
        assert view.image_widget is None
        view.show(png, "tiny-random: noise")
        await pilot.pause()
        text = " ".join(row.strip() for row in box(app, view))
        # A long temporary path wraps inside the box (longer still under pytest-xdist).
        assert f"image:{png}" in "".join(text.split())
        assert "tiny-random: noise" in text
        assert "▀" not in screen_text(app)


async def test_clear_shows_the_message_instead(tmp_path: Path):
    png = write_png(tmp_path / "base.png")
    view = ImageView("Base", image_class=HalfcellImage, id="base")
    app = ViewApp(view)
    async with app.run_test(size=(80, 24)) as pilot:
        view.show(png, "tiny-random: noise")
        await pilot.pause()
        view.clear("waiting for the base image")
        await pilot.pause()
        inside = box(app, view)
        assert not view.image_widget.display
        assert view.path is None and view.label == ""
        assert "▀" not in "".join(inside)
        assert "tiny-random" not in "".join(inside)
        assert any(row.strip() == "waiting for the base image" for row in inside)


async def test_an_unreadable_file_says_why(tmp_path: Path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    view = ImageView("Base", image_class=HalfcellImage, id="base")
    app = ViewApp(view)
    async with app.run_test(size=(80, 24)) as pilot:
        view.show(bad, "base")
        await pilot.pause()
        text = " ".join(row.strip() for row in box(app, view))
        assert "cannot show the image" in text
        assert "broken.png" in "".join(text.split())  # the path may wrap in the box
        assert view.message.startswith("cannot show the image")


def test_modes_map_to_textual_image_classes():
    assert IMAGE_MODES == ("auto", "kitty", "sixel", "halfblock", "none")
    assert image_class_for_mode("auto") is ti_widget.Image
    assert image_class_for_mode("kitty") is ti_widget.TGPImage
    assert image_class_for_mode("sixel") is ti_widget.SixelImage
    assert image_class_for_mode("halfblock") is ti_widget.HalfcellImage
    assert image_class_for_mode("none") is None
    with pytest.raises(ValueError, match="unknown image mode"):
        image_class_for_mode("ascii")
    assert ImageView("x", mode="halfblock").image_class is HalfcellImage
    assert ImageView("x", mode="none", image_class=HalfcellImage).image_class is None
    assert ImageView.HELP


async def test_a_refused_protocol_is_said_under_every_box(tmp_path: Path, monkeypatch):
    from critifusion_tui.tui.widgets import image_view

    monkeypatch.setattr(image_view, "_graphics_note", "")
    image_view.set_graphics_note("Sixel not drawn here: half-blocks")
    base = ImageView("Base", mode="halfblock", id="base")
    refined = ImageView("Refined", mode="halfblock", id="refined")
    nothing = ImageView("Path", mode="none", id="none")  # draws no picture: nothing to say
    app = ViewApp(base, refined, nothing)
    async with app.run_test(size=(120, 24)) as pilot:
        base.show(write_png(tmp_path / "base.png"))
        await pilot.pause()
        bottom = screen_text(app).splitlines()[base.region.bottom - 1]
        assert bottom.count("Sixel not drawn here: half-blocks") == 2  # base and refined, not "none"
        assert not nothing.border_subtitle
    image_view.set_graphics_note("")
    assert not ImageView("Base", mode="halfblock").border_subtitle
