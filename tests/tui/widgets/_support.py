"""Small helpers shared by the widget tests."""

from __future__ import annotations

from pathlib import Path


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def write_png(path: Path, width: int = 64, height: int = 64) -> Path:
    """A small gradient PNG (no two neighbouring cells alike, so half-blocks show)."""
    from PIL import Image

    image = Image.new("RGB", (width, height))
    image.putdata([(x * 255 // width, y * 255 // height, 128) for y in range(height) for x in range(width)])
    image.save(path)
    return path
