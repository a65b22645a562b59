"""One redaction step for every text that leaves the process: the terminal, the app's log,
a manifest, ``--json``.

Keys live in environment variables that the configuration names (``api_key_env``); a server
may still hand a key back, e.g. by echoing the ``Authorization`` header in an error body, and
a provider URL may carry ``user:password@``. :func:`redact` removes

- the values of the configured key variables (and ``$OLLAMA_API_KEY``, which the Ollama
  client sends on its own), wherever they appear,
- bearer and basic credentials (``Bearer abc...``), and the value of an ``Authorization``,
  ``X-Api-Key`` or ``api_key`` field however it is quoted,
- the user info of URLs (``http://user:pass@host`` becomes ``http://***@host``).

:func:`strip_userinfo` is how a URL is recorded (without its user info at all). The module is
a leaf (standard library only): providers, the engine and every front end import it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
MIN_SECRET = 4  # shorter values would mask ordinary words
# Variables whose values are secrets even when no configuration names them.
ALWAYS = ("OLLAMA_API_KEY",)

_secrets: set[str] = set()

_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)([^/\s@?#\"'<>]+)@")
_FIELD = re.compile(
    r"(?i)(\b(?:proxy-)?authorization|\bx-api-key|\bapi[-_]?key)"  # the field's name
    r"(\\?[\"']?\s*[:=]\s*\\?[\"']?\s*)"  # its separator, quoted or not (also JSON-escaped)
    r"(?:(?:bearer|basic)\s+)?([^\s\"',;}\]\\]+)"  # the value, after a scheme word
)
_SCHEME = re.compile(r"(?i)\b(bearer|basic)\s+([A-Za-z0-9._~+/=\-]{6,})")


def remember(value: str | None) -> None:
    """Treat ``value`` as a secret from now on (in this process)."""
    if value and len(value.strip()) >= MIN_SECRET:
        _secrets.add(value.strip())


def remember_env(names: Iterable[str]) -> None:
    """Treat the values of these environment variables as secrets."""
    for name in names:
        if name:
            remember(os.environ.get(name))


def configure(settings: Any) -> None:
    """Remember the values of the key variables the configuration names."""
    providers = getattr(settings, "providers", None)
    names = list(ALWAYS)
    for section in ("together", "openai"):
        names.append(getattr(getattr(providers, section, None), "api_key_env", "") or "")
    remember_env(names)


def redact(text: str) -> str:
    """``text`` without secrets (see the module docstring)."""
    if not text:
        return text
    remember_env(ALWAYS)
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    text = _URL_USERINFO.sub(lambda m: f"{m.group(1)}{MASK}@", text)
    text = _FIELD.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}" if m.group(3) != MASK else m.group(0), text)
    text = _SCHEME.sub(lambda m: f"{m.group(1)} {MASK}", text)
    return text


def redact_data(data: Any) -> Any:
    """A copy of JSON-like data with every string (keys too) redacted."""
    if isinstance(data, str):
        return redact(data)
    if isinstance(data, dict):
        return {redact(k) if isinstance(k, str) else k: redact_data(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [redact_data(v) for v in data]
    return data


def strip_userinfo(url: str) -> str:
    """``url`` without ``user:password@`` (how a provider URL is recorded and shown)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def redact_fields(obj: Any) -> Any:
    """A frozen dataclass (an engine event) with its text fields redacted; the same object
    when nothing in it needed it (streamed deltas stay cheap)."""
    import dataclasses

    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return obj
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        clean: Any
        if isinstance(value, str):
            clean = redact(value)
        elif isinstance(value, (dict, list, tuple)):
            clean = redact_data(value)
            clean = type(value)(clean) if isinstance(value, tuple) else clean
        else:
            continue
        if clean != value:
            changes[f.name] = clean
    return dataclasses.replace(obj, **changes) if changes else obj
