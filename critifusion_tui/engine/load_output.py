"""Keep what libraries print while a model loads off the terminal, and hand it to the log.

The tokenizers library (Rust) prints ``Ignored unknown kwarg option __type`` straight to file
descriptor 1 for every hub-style tokenizer it reads; the hub client warns on stderr. Python's
``redirect_stdout`` cannot catch a write that never goes through ``sys.stdout``, and in the app
any stray byte on the terminal corrupts the screen. So the load runs with the chosen file
descriptors pointed at a temporary file (``os.dup2``), Python warnings recorded, and what was
caught comes back as lines the front end shows in its log.

The app draws on stderr (Textual's driver writes to file descriptor 2), so the app captures
only fd 1, and headless runs capture both. A model loads in the background while a run's text
stages go on (``Session.preload``), so a front end that prints while that happens writes
through its own copy of the descriptor (:func:`own_descriptor`), which the capture leaves alone.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO

from critifusion_tui.providers.hygiene import clean_model_text

__all__ = ["CapturedOutput", "capture_output", "own_descriptor"]

# dup2 changes the whole process: two loads at once would restore each other's descriptors.
_CAPTURE_LOCK = threading.Lock()


@dataclass
class CapturedOutput:
    """What a block printed (cleaned of escape sequences) and the warnings it raised."""

    printed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def messages(self) -> list[tuple[str, str]]:
        """``(level, text)`` pairs for a log: printed lines as info, warnings as warnings.

        Repeated lines (one per tokenizer) are folded into one with a count.
        """
        out: list[tuple[str, str]] = []
        for level, lines in (("warning", self.warnings), ("info", self.printed)):
            for text, count in Counter(lines).items():
                out.append((level, text if count == 1 else f"{text} (x{count})"))
        return out


def _lines(raw: str) -> list[str]:
    return [line.strip() for line in clean_model_text(raw).splitlines() if line.strip()]


@contextmanager
def capture_output(fds: tuple[int, ...] = (1, 2)) -> Iterator[CapturedOutput]:
    """Point ``fds`` at a temporary file and record warnings for the duration of the block."""
    captured = CapturedOutput()
    with _CAPTURE_LOCK, tempfile.TemporaryFile() as sink:
        for stream in (sys.stdout, sys.stderr):
            _flush(stream)
        saved: dict[int, int] = {}
        try:
            for fd in fds:
                try:
                    saved[fd] = os.dup(fd)
                except OSError:
                    continue  # a closed descriptor (a daemon without stdout) has nothing to protect
                os.dup2(sink.fileno(), fd)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    yield captured
                finally:  # also when the load fails: its warnings often say why
                    captured.warnings = [f"{w.category.__name__}: {w.message}" for w in caught]
        finally:
            for stream in (sys.stdout, sys.stderr):
                _flush(stream)
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            captured.printed = _lines(sink.read().decode("utf-8", errors="replace"))


def _flush(stream: object) -> None:
    flush = getattr(stream, "flush", None)
    if callable(flush):
        try:
            flush()
        except (OSError, ValueError):  # a closed stream: nothing of ours is buffered in it
            pass


def own_descriptor(stream: TextIO) -> TextIO:
    """A text stream that writes where `stream` writes now, through a copy of its descriptor.

    :func:`capture_output` points fds 1 and 2 at a file while a model loads, and the load runs
    in the background while the run goes on: lines printed through the copy still reach the
    terminal or pipe. A stream without a descriptor (a test's ``StringIO``) is returned as is.
    """
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return stream
    _flush(stream)
    return os.fdopen(
        os.dup(fd),
        "w",
        buffering=1,
        encoding=getattr(stream, "encoding", None) or "utf-8",
        errors=getattr(stream, "errors", None) or "strict",
    )
