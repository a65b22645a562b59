"""A run folder is data from elsewhere: its paths stay inside it.

Anyone can hand over a run folder (a shared drive, an archive, a bug report). Everything the
manifest says is therefore read as untrusted input. Its fields are checked by the manifest's
models (:mod:`critifusion_tui.engine.manifest`, which calls the helpers here); the paths:

- :func:`check_relative` refuses a file name that could leave the folder (absolute, ``..``,
  a drive or a backslash, control characters), and :func:`confined` also resolves symbolic
  links and refuses a path whose target is outside the folder;
- :func:`read_confined` opens such a file without following a final symbolic link, refuses
  anything but a regular file (a device, a FIFO, a directory), and reads at most a size
  cap, so ``/dev/zero`` or a 50 GB file cannot fill the memory.

This module imports only the standard library: the manifest's reader, the store, the app's
history screen and the headless command all use it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath, PureWindowsPath

MANIFEST = "manifest.json"
# Caps on what a run folder may make us read: far above what a run writes (a 4096 px PNG is
# at most ~64 MB, an SDXL latent of 4096 px is 4 MB), far below what would hurt.
MAX_MANIFEST_BYTES = 16 * 2**20
MAX_IMAGE_BYTES = 128 * 2**20
MAX_LATENT_BYTES = 64 * 2**20
FILE_FIELDS = {"image": MAX_IMAGE_BYTES, "latent": MAX_LATENT_BYTES}


class StoreError(Exception):
    """A run folder that cannot be created, read or resumed; the message says which and why."""


def relative_problem(relative: object) -> str | None:
    """Why ``relative`` is no plain file name inside the run folder, or None when it is one."""
    if not isinstance(relative, str) or not relative.strip():
        return f"expected a file name inside the run folder, got {show_value(relative)}"
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in relative):
        return f"the file name holds control characters: {show_value(relative)}"
    posix, windows = PurePosixPath(relative), PureWindowsPath(relative)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or "\\" in relative:
        return f"{show_value(relative)} is not a path inside the run folder (refused)"
    if ".." in posix.parts:
        return f"{show_value(relative)} leaves the run folder with '..' (refused)"
    return None


def check_relative(relative: object, field: str, where: str = MANIFEST) -> str:
    """``relative`` as a plain file name inside the run folder, or a StoreError naming the field."""
    problem = relative_problem(relative)
    if problem:
        raise StoreError(f"{where}: {field}: {problem}")
    assert isinstance(relative, str)
    return relative


def confined(folder: Path, relative: object, field: str, where: str = MANIFEST) -> Path:
    """The path of ``relative`` inside ``folder``, refused if it or a link on its way leaves it."""
    name = check_relative(relative, field, where)
    path = Path(folder) / name
    try:
        root = Path(folder).resolve()
        real = path.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise StoreError(f"{where}: {field}: cannot resolve {show_value(name)}: {exc}") from None
    if real != root and root not in real.parents:
        raise StoreError(f"{where}: {field}: {show_value(name)} is a link that leaves the run folder (refused)")
    return path


def check_file(path: Path, relative: object, field: str, limit: int, where: str = MANIFEST) -> None:
    """Refuse a file that exists but is no regular file, or is larger than a run writes (a
    missing file is left for the stage that reads it to report)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(f"{where}: {field}: cannot look at {show_value(relative)}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise StoreError(f"{where}: {field}: {show_value(relative)} is not a regular file (refused)")
    if info.st_size > limit:
        raise StoreError(
            f"{where}: {field}: {show_value(relative)} is {info.st_size:,} bytes, over the {limit:,} a run writes (refused)"
        )


def read_confined(folder: Path, relative: object, field: str, limit: int, where: str = MANIFEST) -> bytes:
    """The bytes of a regular file inside the run folder, at most ``limit`` of them."""
    path = confined(folder, relative, field, where)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise StoreError(f"{path}: missing ({field} names it, but the file is gone)") from None
    except OSError as exc:
        raise StoreError(f"{path}: cannot open ({field}): {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StoreError(f"{where}: {field}: {show_value(relative)} is not a regular file (refused)")
        if info.st_size > limit:
            raise StoreError(
                f"{where}: {field}: {show_value(relative)} is {info.st_size:,} bytes, over the {limit:,} a run writes (refused)"
            )
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise StoreError(f"{path}: cannot read ({field}): {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > limit:  # it grew while we read
        raise StoreError(f"{where}: {field}: {show_value(relative)} is over {limit:,} bytes (refused)")
    return data


def show_value(value: object, limit: int = 80) -> str:
    """A value from a manifest, quoted, shortened, with control characters escaped."""
    text = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    if isinstance(value, str):
        text = ascii(value) if any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in value) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
