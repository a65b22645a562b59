"""Bounded work for every hosted model: one deadline for the whole answer, a cap on its size.

The clients' own timeouts bound each network read, not the answer: a server that drips one
chunk a second keeps a stream alive for ever, and nothing stops a 50 MB answer. The router
therefore hands out each hosted model wrapped in :class:`BoundedChat`, which

- runs the whole call (connection, every streamed chunk, a retry without a schema) under one
  deadline, the provider's ``timeout_s``, and turns the end of it into a
  :class:`ProviderTimeoutError` that says so;
- counts the cleaned text as it arrives and stops the stream once it passes
  :func:`answer_cap` (``max_tokens`` times a generous number of characters per token): the
  answer keeps what came, cut at the cap, and ``ChatResult.truncated`` says it was cut.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from critifusion_tui.providers.base import (
    ChatModel,
    ChatResult,
    DeltaCallback,
    MessageLike,
    ModelRef,
    ProviderTimeoutError,
)

# A token is 3 to 4 characters of English on average; 16 leaves room for odd tokenisers,
# long words and JSON punctuation, and the floor for tiny max_tokens.
CHARS_PER_TOKEN = 16
MIN_CAP = 4096


def answer_cap(max_tokens: int) -> int:
    """The most characters of answer kept for a call that asked for ``max_tokens``."""
    return max(MIN_CAP, int(max_tokens) * CHARS_PER_TOKEN)


class _Cut(Exception):
    """Raised from the delta callback to end a stream that passed the cap."""


class BoundedChat:
    """A :class:`ChatModel` with a deadline on the whole answer and a cap on its size."""

    def __init__(self, inner: ChatModel, timeout_s: float, setting: str) -> None:
        self.inner = inner
        self.timeout_s = float(timeout_s)
        self.setting = setting  # e.g. "providers.together.timeout_s", for the fix

    @property
    def ref(self) -> ModelRef:
        return self.inner.ref

    def __getattr__(self, name: str) -> Any:  # the backend's own extras (refuses_schema, ...)
        return getattr(self.inner, name)

    async def chat(
        self,
        messages: Sequence[MessageLike],
        *,
        temperature: float,
        max_tokens: int,
        image: bytes | None = None,
        on_delta: DeltaCallback | None = None,
        schema: Mapping[str, object] | None = None,
    ) -> ChatResult:
        cap = answer_cap(max_tokens)
        parts: list[str] = []
        size = 0
        cut = False

        def counted(piece: str) -> None:
            nonlocal size, cut
            room = cap - size
            if len(piece) >= room:
                piece, cut = piece[:room], True
            size += len(piece)
            parts.append(piece)
            if piece and on_delta is not None:
                on_delta(piece)
            if cut:
                raise _Cut

        extra: dict[str, Any] = {"schema": schema} if schema is not None else {}
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await self.inner.chat(
                    messages, temperature=temperature, max_tokens=max_tokens, image=image,
                    on_delta=counted, **extra,
                )
        except _Cut:
            text = "".join(parts).strip()
            return ChatResult(text, self.ref, time.perf_counter() - started, truncated=True)
        except TimeoutError:
            got = f" ({size:,} characters had come)" if size else ""
            raise ProviderTimeoutError(
                self.ref,
                f"no complete answer within {self.timeout_s:g} s{got}",
                fix=f"raise {self.setting} (it bounds the whole answer), or pick a faster model",
            ) from None
        if len(result.text) > cap:  # a backend that did not stream
            return replace(result, text=result.text[:cap], truncated=True)
        return result
