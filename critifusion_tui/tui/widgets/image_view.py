"""A titled box with one image, drawn in the terminal by textual-image, and a label under it.

Modes: "kitty", "sixel" and "halfblock" draw with that protocol, "none" shows no picture, only
the file's path, and "auto" lets textual-image pick from what the terminal answers at import
time. The command line decides the mode before the app starts (`critifusion_tui.graphics`:
textual-image's own pick trusts a kitty that answers its query but cannot draw its images) and
passes a concrete one. Over SSH and tmux, half-blocks are what actually works. Where the
configured protocol was refused, `set_graphics_note` puts a word about it under every box.

The box's height is set in CSS on the ImageView itself (17 rows by default: a 14-row picture,
the label and the border); the picture fits inside it, as large as the box allows, keeping its
aspect ratio (its width follows from the terminal's cell size), and refits on resize:

    #previews ImageView { height: 1fr; }      /* or a number of rows */

Keep the picture's own CSS at `width: auto; height: auto`: a fixed width or `height: 100%`
stretches it.

`textual_image.widget` is imported at module top on purpose: importing it inside `compose`
was flaky (it queries the terminal once, and Textual must not have started reading stdin yet).
Import this module before `App.run()`.
"""

from __future__ import annotations

from pathlib import Path

import textual_image.widget as ti_widget
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Center, Vertical
from textual.widget import Widget
from textual.widgets import Static

from critifusion_tui.tui.widgets._safe import safe_str

__all__ = ["IMAGE_MODES", "ImageView", "image_class_for_mode", "set_graphics_note"]

IMAGE_MODES = ("auto", "kitty", "sixel", "halfblock", "none")
# Said in each box's bottom border when the configured protocol could not be used here
# ("Sixel not drawn here: half-blocks"); one terminal per process, so one note.
_graphics_note = ""


def set_graphics_note(note: str) -> None:
    """What every ImageView made from now on says about the protocol ("" says nothing)."""
    global _graphics_note
    _graphics_note = note


def image_class_for_mode(mode: str) -> type[Widget] | None:
    """The textual-image widget class for `mode`; None for "none"."""
    classes: dict[str, type[Widget] | None] = {
        "auto": ti_widget.Image,
        "kitty": ti_widget.TGPImage,
        "sixel": ti_widget.SixelImage,
        "halfblock": ti_widget.HalfcellImage,
        "none": None,
    }
    try:
        return classes[mode]
    except KeyError:
        raise ValueError(f"unknown image mode {mode!r}; expected one of {IMAGE_MODES}") from None


class ImageView(Vertical):
    """One image in a titled box, with a prominent label under it."""

    HELP = """\
A preview of one image, drawn in the terminal (colours in half-block cells over SSH/tmux).
The line under it names what it is; the image file is saved in the run folder.
Set images under [tui] in config.toml to auto, kitty, sixel, halfblock or none."""

    DEFAULT_CSS = """
    ImageView {
        width: 1fr;
        height: 17;
        border: round $foreground 30%;
        border-title-color: $text;
        border-subtitle-color: $warning;
        & > .image-view--frame { width: 1fr; height: 1fr; align: center middle; }
        & .image-view--image { width: auto; height: auto; }
        & .image-view--path { width: 1fr; height: auto; color: $text-muted; }
        & .image-view--message { width: auto; height: auto; color: $text-muted; }
        & .image-view--message.-error { color: $error; }
        & > .image-view--label {
            width: 1fr;
            height: auto;
            text-align: center;
            text-style: bold;
            color: $accent;
        }
    }
    """

    def __init__(
        self,
        title: str,
        *,
        mode: str = "auto",
        image_class: type[Widget] | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        """`image_class` overrides the class `mode` picks (tests pass HalfcellImage); mode "none"
        never draws a picture."""
        super().__init__(id=id, classes=classes)
        self.mode = mode
        default_class = image_class_for_mode(mode)  # also rejects an unknown mode
        self.image_class = None if mode == "none" else (image_class or default_class)
        self._path: Path | None = None
        self._label = ""
        self._message = ""
        self.border_title = Text(safe_str(title))
        if _graphics_note and mode != "none":
            self.border_subtitle = Text(safe_str(_graphics_note))
        self.image_widget: Widget | None = self.image_class(classes="image-view--image") if self.image_class else None
        self._path_view = Static("", classes="image-view--path", markup=False)
        self._label_view = Static("", classes="image-view--label", markup=False)
        self._message_view = Static("", classes="image-view--message", markup=False)
        if self.image_widget is not None:
            self.image_widget.display = False
        self._path_view.display = False
        self._label_view.display = False

    def compose(self) -> ComposeResult:
        with Center(classes="image-view--frame"):
            if self.image_widget is not None:
                yield self.image_widget
            yield self._path_view
            yield self._message_view
        yield self._label_view

    # --- public API -------------------------------------------------------------------------

    @property
    def path(self) -> Path | None:
        """The image shown, or None."""
        return self._path

    @property
    def label(self) -> str:
        return self._label

    @property
    def message(self) -> str:
        """What the box says instead of (or about) the image ("" when nothing)."""
        return self._message

    def show(self, path: Path, label: str = "") -> None:
        """Show the image at `path` with `label` under it.

        A file that cannot be read is not a silent blank: the box says why, with the path.
        """
        path = Path(path)
        self._path = path
        self._label = label
        self._set_label(label)
        self._set_message("")
        if self.image_widget is None:
            self._path_view.update(safe_str(f"image: {path}"))
            self._path_view.display = True
            return
        try:
            self.image_widget.image = str(path)  # type: ignore[attr-defined]
        except Exception as error:  # noqa: BLE001  # PIL raises many kinds; all mean "cannot show"
            self.image_widget.image = None  # type: ignore[attr-defined]
            self.image_widget.display = False
            self._path_view.update(safe_str(f"image: {path}"))
            self._path_view.display = True
            self._set_message(f"cannot show the image: {error}", error=True)
            return
        self._path_view.display = False
        self.image_widget.display = True

    def clear(self, message: str = "") -> None:
        """Show no image; `message` (e.g. "waiting for the base image") takes its place."""
        self._path = None
        self._label = ""
        if self.image_widget is not None:
            self.image_widget.image = None  # type: ignore[attr-defined]
            self.image_widget.display = False
        self._path_view.display = False
        self._set_label("")
        self._set_message(message)

    # --- internals --------------------------------------------------------------------------

    def _set_label(self, label: str) -> None:
        self._label_view.update(safe_str(label))
        self._label_view.display = bool(label)

    def _set_message(self, message: str, *, error: bool = False) -> None:
        self._message = message
        self._message_view.update(safe_str(message))
        self._message_view.set_class(error, "-error")
        self._message_view.display = bool(message)
