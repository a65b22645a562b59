"""An image file a person hands over (`critifusion prompt --critique`, `critifusion refine`).

Read as untrusted input, with PIL only (never torch: `critifusion prompt --critique` must
start as fast as `--help` plus the provider calls):

- :func:`read_image` reads a regular file under a size cap, decodes it fully (a truncated or
  foreign file fails here, with the file named, not halfway through a run), turns it upright
  by its EXIF orientation, and flattens transparency onto white;
- :func:`critique_png` is what CritiCore's critique takes: PNG bytes (the hosted backends
  send them as a ``data:image/png`` URL). A PNG file goes as it is; any other format is sent
  as the decoded, upright image re-encoded as PNG. The size is left alone;
- :func:`fit` is the rule that brings an image to the size the model works at
  (``docs/method.md`` section 3, "A given base"): scale it (Lanczos) by ``max(W / w, H / h)``, so that it covers W x H
  and the side that is shorter relative to the target fits exactly, then crop the centre
  W x H (the left/top offsets are ``(scaled - target) // 2``). W and H are multiples of 8.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    from PIL import Image

# Far above any image a person would refine, far below what would hurt (the run folder's cap).
MAX_INPUT_BYTES = 128 * 2**20
MAX_INPUT_PIXELS = 8192 * 8192  # under PIL's own decompression-bomb warning (about 89 M)


class ImageInputError(ValueError):
    """An image file that cannot be used; the message names the file and why."""


@dataclass
class GivenImage:
    """A decoded image file: upright, RGB, with what the file was."""

    path: Path
    image: Image.Image  # RGB, EXIF orientation applied, transparency flattened onto white
    format: str  # PNG, JPEG, WEBP ...
    data: bytes = field(repr=False)  # the file's bytes as read
    notes: list[str] = field(default_factory=list)  # what was done to it on the way

    @property
    def size(self) -> tuple[int, int]:
        """The upright image's (width, height)."""
        return self.image.size

    def record(self) -> dict[str, Any]:
        """What the manifest keeps of the file (its name, never the path it came from)."""
        width, height = self.size
        return {
            "file": self.path.name,
            "format": self.format,
            "width": width,
            "height": height,
            "bytes": len(self.data),
            "sha256": hashlib.sha256(self.data).hexdigest(),
            **({"notes": list(self.notes)} if self.notes else {}),
        }


def read_image(path: str | Path) -> GivenImage:
    """Read and decode an image file; every problem is one :class:`ImageInputError`."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path).expanduser()
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ImageInputError(f"{path}: no such file") from None
    except OSError as exc:
        raise ImageInputError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ImageInputError(f"{path}: not a regular file")
    if info.st_size > MAX_INPUT_BYTES:
        raise ImageInputError(f"{path}: {info.st_size:,} bytes is over the {MAX_INPUT_BYTES:,} an image may have here")
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_INPUT_BYTES + 1)
    except OSError as exc:
        raise ImageInputError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    if len(data) > MAX_INPUT_BYTES:
        raise ImageInputError(f"{path}: over {MAX_INPUT_BYTES:,} bytes")
    if not data:
        raise ImageInputError(f"{path}: the file is empty")
    fmt = "image"
    try:
        opened = Image.open(io.BytesIO(data))
        fmt = opened.format or fmt
        width, height = opened.size
        if width * height > MAX_INPUT_PIXELS:
            raise ImageInputError(f"{path}: {width}x{height} pixels is more than this command reads")
        opened.load()
        orientation = _orientation(opened)
        upright = ImageOps.exif_transpose(opened)
    except ImageInputError:
        raise
    except UnidentifiedImageError:
        raise ImageInputError(f"{path}: not an image file PIL can read (PNG, JPEG, WebP ...)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageInputError(f"{path}: cannot decode the {fmt}: {exc}") from None
    notes = []
    if orientation not in (None, 1):
        notes.append(f"turned upright by its EXIF orientation ({orientation})")
    rgb = _flatten(upright)
    if rgb is not upright and _has_alpha(upright):
        notes.append("transparency flattened onto white")
    return GivenImage(path, rgb, fmt, data, notes)


def critique_png(given: GivenImage) -> bytes:
    """The image as the critics get it: PNG bytes (a PNG file as it is, any other format as
    the decoded, upright image re-encoded)."""
    if given.format == "PNG":
        return given.data
    buffer = io.BytesIO()
    given.image.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class Fit:
    """How an image was brought to the working size (:func:`fit`)."""

    original: tuple[int, int]
    scale: float
    scaled: tuple[int, int]
    crop: tuple[int, int, int, int]  # left, top, right, bottom in the scaled image
    size: tuple[int, int]

    def describe(self) -> str:
        (w0, h0), (ws, hs), (w, h) = self.original, self.scaled, self.size
        left, top, _, _ = self.crop
        resized = "kept at its size" if (ws, hs) == (w0, h0) else f"scaled by {self.scale:.4g} to {ws}x{hs} (Lanczos)"
        cropped = "no crop" if (ws, hs) == (w, h) else f"centre-cropped to {w}x{h} (offset {left},{top})"
        return f"{w0}x{h0} {resized}, {cropped}"

    def record(self) -> dict[str, Any]:
        return {
            "rule": "scale by max(W/w, H/h) (Lanczos), centre crop to WxH",
            "original": list(self.original),
            "scale": round(self.scale, 6),
            "scaled": list(self.scaled),
            "crop": list(self.crop),
            "size": list(self.size),
        }


def fit_size(original: tuple[int, int], width: int, height: int) -> Fit:
    """The numbers of :func:`fit`, without an image."""
    w0, h0 = original
    if w0 < 1 or h0 < 1 or width < 1 or height < 1:
        raise ValueError(f"sizes must be positive, got {w0}x{h0} into {width}x{height}")
    scale = max(width / w0, height / h0)
    ws, hs = max(width, round(w0 * scale)), max(height, round(h0 * scale))
    left, top = (ws - width) // 2, (hs - height) // 2
    return Fit((w0, h0), scale, (ws, hs), (left, top, left + width, top + height), (width, height))


def fit(image: Image.Image, width: int, height: int) -> tuple[Image.Image, Fit]:
    """`image` scaled to cover width x height and centre-cropped to it (see the module doc)."""
    from PIL import Image

    plan = fit_size(image.size, width, height)
    scaled = image if plan.scaled == image.size else image.resize(plan.scaled, Image.Resampling.LANCZOS)
    cropped = scaled if plan.scaled == plan.size else scaled.crop(plan.crop)
    return cropped, plan


def _orientation(image: Image.Image) -> int | None:
    try:
        return image.getexif().get(0x0112)
    except Exception:  # pragma: no cover - a broken EXIF block: no orientation
        return None


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)


def _flatten(image: Image.Image) -> Image.Image:
    """RGB; an image with transparency is laid over white first (not over black, which is what
    dropping the alpha channel would show)."""
    from PIL import Image

    if _has_alpha(image):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")
