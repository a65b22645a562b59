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
from dataclasses import replace

from critifusion_tui.providers.base import ChatCall, ChatModel, ChatResult, ProviderTimeoutError
from critifusion_tui.providers.chat import ChatWrapper

# A token is 3 to 4 characters of English on average; 16 leaves room for odd tokenisers,
# long words and JSON punctuation, and the floor for tiny max_tokens.
CHARS_PER_TOKEN = 16
MIN_CAP = 4096


def answer_cap(max_tokens: int) -> int:
    """The most characters of answer kept for a call that asked for ``max_tokens``."""
    return max(MIN_CAP, int(max_tokens) * CHARS_PER_TOKEN)


class _Cut(Exception):
    """Raised from the delta callback to end a stream that passed the cap."""


class BoundedChat(ChatWrapper):
    """A :class:`ChatModel` with a deadline on the whole answer and a cap on its size."""

    def __init__(self, inner: ChatModel, timeout_s: float, setting: str) -> None:
        super().__init__(inner)  # the backend's own extras (refuses_schema, ...) read through
        self.timeout_s = float(timeout_s)
        self.setting = setting  # e.g. "providers.together.timeout_s", for the fix

    async def answer(self, call: ChatCall) -> ChatResult:
        cap = answer_cap(call.max_tokens)
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
            if piece and call.on_delta is not None:
                call.on_delta(piece)
            if cut:
                raise _Cut

        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await call.send(self.inner, on_delta=counted)
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
