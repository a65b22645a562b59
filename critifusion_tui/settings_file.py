"""Write settings back into a config.toml, keeping the file a person wrote.

The settings screen (and anything else that saves settings) hands :func:`save_settings` a
few dotted keys (``{"diffusion.seed": 7, "criticore.vlms": ["ollama:llava"]}``). The file is
edited with tomlkit, so its comments, blank lines, key order and every key not named stay as
they were; a key that is missing is appended to its section, and a missing section is
appended to the file. A multi-line array stays multi-line, with its own indent.

Nothing reaches the disk unless the whole file still validates as :class:`Settings`: a bad
value raises :class:`ConfigError` (the same wording ``load_config`` uses) and leaves the file
as it was. The write itself is atomic (a temporary sibling, flushed, then renamed over the
file), so a crash leaves either the old file or the new one, never half of one. A symlinked
config (a dotfiles checkout) is written through the link, not replaced by a copy.

Secrets are refused: a key named like a secret (:data:`config.SECRET_KEYS`) is never written;
the file names the environment variable instead (``api_key_env``).
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import Array, Table

from critifusion_tui.config import (
    SECRET_KEYS,
    ConfigError,
    LoadedConfig,
    _refuse_secrets,
    user_config_path,
    validate,
)

HEADER = "critifusion configuration, written by the app's settings screen (config.toml documents every key)."


def default_save_path(loaded: LoadedConfig) -> Path:
    """Where saved settings go: the file in use, else the user config file."""
    return Path(loaded.path) if loaded.path is not None else user_config_path()


def save_settings(changes: Mapping[str, Any], path: Path) -> Path:
    """Write dotted-key ``changes`` into the TOML file at ``path``; returns the path written.

    A value of ``None`` removes the key (TOML has no null: the default applies again).
    Raises :class:`ConfigError` for a secret key, a malformed key, a file that cannot be read
    or written, or a result that does not validate; the file is then left untouched.
    """
    path = Path(path).expanduser()
    target = path.resolve() if path.is_symlink() else path
    old_text = _read(target)
    doc = tomlkit.parse(old_text) if old_text else _new_document()

    for dotted, value in changes.items():
        parts = _split_key(dotted)
        if any(part.lower() in SECRET_KEYS for part in parts):
            raise ConfigError(
                f"{dotted}: secrets are not written to config files; put the key in an"
                " environment variable and name it with api_key_env"
            )
        _set(doc, parts, _to_toml(value, _current(doc, parts)), dotted)

    new_text = tomlkit.dumps(doc)
    if not new_text.endswith("\n"):
        new_text += "\n"
    data = tomllib.loads(new_text)  # what load_config will read back
    _refuse_secrets(data, str(path), new_text)
    validate(data, str(path), new_text)
    _atomic_write(target, new_text)
    return path


# ------------------------------------------------------------------------------- the document


def _new_document() -> tomlkit.TOMLDocument:
    doc = tomlkit.document()
    doc.add(tomlkit.comment(HEADER))
    return doc


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None


def _split_key(dotted: str) -> list[str]:
    parts = [p.strip() for p in str(dotted).split(".")]
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"{dotted!r}: expected section.key, e.g. diffusion.seed")
    return parts


def _current(doc: tomlkit.TOMLDocument, parts: list[str]) -> Any:
    node: Any = doc
    for part in parts:
        if not isinstance(node, (Table, tomlkit.TOMLDocument, dict)) or part not in node:
            return None
        node = node[part]
    return node


def _set(doc: tomlkit.TOMLDocument, parts: list[str], value: Any, dotted: str) -> None:
    node: Any = doc
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            if value is None:
                return  # removing a key from a section that is not there: nothing to do
            # A section that only holds sub-sections ([providers] above [providers.together])
            # is a "super table": tomlkit then writes only the inner headers.
            child = tomlkit.table(is_super_table=depth < len(parts) - 2)
            node[part] = child
        elif not isinstance(child, (Table, dict)):
            raise ConfigError(f"{dotted}: {'.'.join(parts[: depth + 1])} is a value, not a section")
        node = child
    key = parts[-1]
    if value is None:
        if key in node:
            del node[key]
    else:
        node[key] = value


def _to_toml(value: Any, old: Any) -> Any:
    """A plain value as a tomlkit item; a list keeps the layout of the array it replaces."""
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, list) and isinstance(old, Array):
        old_text = old.as_string()
        if "\n" in old_text and value:
            match = re.search(r"\[[^\S\n]*(?:#[^\n]*)?\n([ \t]*)", old_text)
            indent = match.group(1) if match else "  "
            array = tomlkit.array()
            for item in value:
                array.add_line(item, indent=indent or "  ")
            array.add_line(indent="")
            return array
    return value


# ------------------------------------------------------------------------------- the write


def _atomic_write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise ConfigError(f"{path}: cannot write: {exc.strerror or exc}") from None
        raise
