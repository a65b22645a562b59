"""A run folder is data from elsewhere: its manifest is checked, its paths stay inside it.

Anyone can hand over a run folder (a shared drive, an archive, a bug report). Everything the
manifest says is therefore read as untrusted input:

- :func:`check_manifest` checks the shape of every field the engine reads (types, ranges,
  known values) and raises one :class:`StoreError` naming the first bad field, before
  anything runs;
- :func:`check_relative` refuses a file name that could leave the folder (absolute, ``..``,
  a drive or a backslash, control characters), and :func:`confined` also resolves symbolic
  links and refuses a path whose target is outside the folder;
- :func:`read_confined` opens such a file without following a final symbolic link, refuses
  anything but a regular file (a device, a FIFO, a directory), and reads at most a size
  cap, so ``/dev/zero`` or a 50 GB file cannot fill the memory.

This module imports only the standard library: the store, the app's history screen and the
headless command all use it.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

SCHEMA = "critifusion.run/1"
MANIFEST = "manifest.json"
SEED_MAX = 2**63 - 1
# Caps on what a run folder may make us read: far above what a run writes (a 4096 px PNG is
# at most ~64 MB, an SDXL latent of 4096 px is 4 MB), far below what would hurt.
MAX_MANIFEST_BYTES = 16 * 2**20
MAX_IMAGE_BYTES = 128 * 2**20
MAX_LATENT_BYTES = 64 * 2**20
STATUSES = ("running", "paused", "done", "failed", "cancelled", "abandoned")
STAGE_STATUSES = ("done", "failed", "cancelled")
FILE_FIELDS = {"image": MAX_IMAGE_BYTES, "latent": MAX_LATENT_BYTES}


class StoreError(Exception):
    """A run folder that cannot be created, read or resumed; the message says which and why."""


def check_relative(relative: object, field: str, where: str = MANIFEST) -> str:
    """``relative`` as a plain file name inside the run folder, or a StoreError naming the field."""
    if not isinstance(relative, str) or not relative.strip():
        raise StoreError(f"{where}: {field}: expected a file name inside the run folder, got {_show(relative)}")
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in relative):
        raise StoreError(f"{where}: {field}: the file name holds control characters: {_show(relative)}")
    posix, windows = PurePosixPath(relative), PureWindowsPath(relative)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or "\\" in relative:
        raise StoreError(f"{where}: {field}: {_show(relative)} is not a path inside the run folder (refused)")
    if ".." in posix.parts:
        raise StoreError(f"{where}: {field}: {_show(relative)} leaves the run folder with '..' (refused)")
    return relative


def confined(folder: Path, relative: object, field: str, where: str = MANIFEST) -> Path:
    """The path of ``relative`` inside ``folder``, refused if it or a link on its way leaves it."""
    name = check_relative(relative, field, where)
    path = Path(folder) / name
    try:
        root = Path(folder).resolve()
        real = path.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise StoreError(f"{where}: {field}: cannot resolve {_show(name)}: {exc}") from None
    if real != root and root not in real.parents:
        raise StoreError(f"{where}: {field}: {_show(name)} is a link that leaves the run folder (refused)")
    return path


def check_file(path: Path, relative: object, field: str, limit: int, where: str = MANIFEST) -> None:
    """Refuse a file that exists but is no regular file, or is larger than a run writes (a
    missing file is left for the stage that reads it to report)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(f"{where}: {field}: cannot look at {_show(relative)}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise StoreError(f"{where}: {field}: {_show(relative)} is not a regular file (refused)")
    if info.st_size > limit:
        raise StoreError(
            f"{where}: {field}: {_show(relative)} is {info.st_size:,} bytes, over the {limit:,} a run writes (refused)"
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
            raise StoreError(f"{where}: {field}: {_show(relative)} is not a regular file (refused)")
        if info.st_size > limit:
            raise StoreError(
                f"{where}: {field}: {_show(relative)} is {info.st_size:,} bytes, over the {limit:,} a run writes (refused)"
            )
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise StoreError(f"{path}: cannot read ({field}): {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > limit:  # it grew while we read
        raise StoreError(f"{where}: {field}: {_show(relative)} is over {limit:,} bytes (refused)")
    return data


def load_manifest(folder: Path) -> dict[str, Any]:
    """Read and check ``folder/manifest.json``; every problem is one StoreError."""
    path = Path(folder) / MANIFEST
    try:
        if not Path(folder).is_dir():
            raise StoreError(f"{folder} is not a run folder (not a folder)")
        if not path.exists() and not path.is_symlink():
            raise StoreError(f"{folder} is not a run folder (no {MANIFEST})")
    except OSError as exc:  # a name too long, a permission
        raise StoreError(f"{folder}: cannot look at it: {exc.strerror or exc}") from None
    data = read_confined(folder, MANIFEST, "manifest", MAX_MANIFEST_BYTES, where=str(path))
    try:
        manifest = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise StoreError(f"{path}: cannot read the manifest: not UTF-8 ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise StoreError(f"{path}: cannot read the manifest: {exc}") from None
    except RecursionError:
        raise StoreError(f"{path}: cannot read the manifest: nested too deeply") from None
    check_manifest(manifest, str(path), Path(folder))
    return manifest


def check_manifest(manifest: object, where: str, folder: Path | None = None) -> None:
    """Refuse a manifest whose fields have the wrong shape, naming the first bad one."""

    def bad(field: str, expected: str, got: object) -> StoreError:
        return StoreError(f"{where}: {field}: expected {expected}, got {_show(got)}")

    if not isinstance(manifest, dict):
        raise StoreError(f"{where}: expected a JSON object, got {type(manifest).__name__}")
    if manifest.get("schema") != SCHEMA:
        raise StoreError(f"{where}: schema {_show(manifest.get('schema'))} is not {SCHEMA!r}")
    prompt = manifest.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise bad("prompt", "the prompt as text", prompt)
    seed = manifest.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= SEED_MAX:
        raise bad("seed", f"a whole number from 0 to {SEED_MAX}", seed)
    if manifest.get("status", "running") not in STATUSES:
        raise bad("status", " or ".join(STATUSES), manifest.get("status"))
    for name, kind in (("config", dict), ("stages", dict), ("prompts", dict), ("edits", list), ("versions", dict)):
        if name in manifest and not isinstance(manifest[name], kind):
            raise bad(name, "an object" if kind is dict else "a list", manifest[name])
    for key in ("variants",):
        if key in manifest and manifest[key] not in ("full", "all"):
            raise bad(key, "'full' or 'all'", manifest[key])
    for name, entry in manifest.get("prompts", {}).items():
        if not isinstance(entry, dict) or "value" not in entry or not isinstance(entry.get("by", ""), str):
            raise bad(f"prompts.{name}", 'an object {"value": ..., "by": ...}', entry)
        value = entry["value"]
        if not (value is None or isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))):
            raise bad(f"prompts.{name}.value", "text or a list of texts", value)
    for stage, record in manifest.get("stages", {}).items():
        if not isinstance(record, dict):
            raise bad(f"stages.{stage}", "an object", record)
        if record.get("status") not in STAGE_STATUSES:
            raise bad(f"stages.{stage}.status", " or ".join(STAGE_STATUSES), record.get("status"))
        for key in ("width", "height", "steps", "seed"):
            value = record.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise bad(f"stages.{stage}.{key}", "a whole number", value)
        for key in ("prompt", "negative", "refinement_prompt"):
            if key in record and not isinstance(record[key], str):
                raise bad(f"stages.{stage}.{key}", "text", record[key])
        for key, limit in FILE_FIELDS.items():
            if key in record:
                if folder is not None:
                    check_file(confined(folder, record[key], f"stages.{stage}.{key}", where), record[key],
                               f"stages.{stage}.{key}", limit, where)
                else:
                    check_relative(record[key], f"stages.{stage}.{key}", where)
        if record.get("status") == "done" and stage in ("base", "base_original"):
            for key in ("image", "latent", "prompt", "negative"):
                if key not in record:
                    raise StoreError(f"{where}: stages.{stage}.{key}: missing from a completed stage")


def _show(value: object, limit: int = 80) -> str:
    """A value from a manifest, quoted, shortened, with control characters escaped."""
    text = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    if isinstance(value, str):
        text = ascii(value) if any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in value) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
