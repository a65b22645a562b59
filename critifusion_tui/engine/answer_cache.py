"""Model answers kept on disk, so an unchanged stage is not paid for twice.

``criticore.cache = "read-write"`` keeps every answer a provider gave, keyed by a SHA-256 of
(model reference and slot, messages, sampling parameters, the image's hash, the asked JSON
schema), under the user cache directory (``critifusion/answers`` under platformdirs'
``user_cache_dir``). An entry holds the model reference, the answer's text, how its shape
was asked for, and when: never a message, a URL or a key. A failed call is not kept. A model
retried on purpose (``only=``, the pane's ``r``) is asked again, and its new answer kept.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

CACHE_MODES = ("off", "read-write")


def default_folder() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("critifusion")) / "answers"


def cache_key(
    model: str,
    messages: Sequence[Any],
    *,
    temperature: float,
    max_tokens: int,
    image: bytes | None = None,
    schema: Mapping[str, Any] | None = None,
) -> str:
    """The key of one call: everything that decides what the model is asked."""
    turns = [
        {"role": getattr(m, "role", None) or m["role"], "content": getattr(m, "content", None) or m["content"]}
        for m in messages
    ]
    payload = {
        "model": model,
        "messages": turns,
        "temperature": temperature,
        "max_tokens": max_tokens,
        "image": hashlib.sha256(image).hexdigest() if image is not None else None,
        "schema": schema,
    }
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class AnswerCache:
    """One folder of answers, one small JSON file each (``ab/abcdef....json``)."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else default_folder()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The kept answer, or None (missing, unreadable or not an answer: asked again)."""
        try:
            entry = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return entry if isinstance(entry, dict) and isinstance(entry.get("text"), str) and entry["text"] else None

    def put(self, key: str, *, model: str, text: str, output: str | None) -> None:
        """Keep an answer (atomically); a cache that cannot be written is skipped, not fatal."""
        from critifusion_tui.engine.store import atomic_write, timestamp

        entry = {"model": model, "text": text, "output": output, "created": timestamp()}
        data = json.dumps(entry, ensure_ascii=False)
        try:
            # 0600: the user's own cache, whose answers tell what they asked (run files, meant
            # to be shared, follow the umask instead).
            atomic_write(self._path(key), lambda f: f.write(data), mode="w", private=True)
        except OSError:
            pass  # the answer itself was delivered; an unwritable cache only costs a request later
