"""How many requests one process sends to a hosted backend at once, and how often it was
throttled.

A batch on N processes multiplies the requests in flight by N (each prompt asks five
candidates and an aggregator, twice, at once). ``providers.<backend>.max_concurrency`` caps
this process's share; the calls over the cap wait their turn here instead of piling onto the
service and being answered 429. Back-off after a 429 stays the client's job (Together's client
retries ``max_retries`` times honouring ``retry-after``); what reaches us after that is counted,
so a batch summary can say that the account was the bottleneck.

The wrapper is the only change a backend sees: it keeps ``ref`` and passes the call on as it
came (``chat.ChatWrapper``), so the engine cannot tell a limited model from a bare one.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from critifusion_tui.providers.base import ChatCall, ChatModel, ChatResult, RateLimitedError
from critifusion_tui.providers.chat import ChatWrapper
from critifusion_tui.providers.registry import HOSTED


@dataclass
class BackendUsage:
    """What one backend saw in this process: requests, 429s that got through the client's
    retries, and seconds calls spent waiting for a free slot."""

    requests: int = 0
    throttled: int = 0
    queued_s: float = 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {"requests": self.requests, "throttled": self.throttled, "queued_s": round(self.queued_s, 3)}


@dataclass
class ProviderLimits:
    """One semaphore and one usage record per backend, for this process."""

    caps: dict[str, int]
    usage: dict[str, BackendUsage] = field(default_factory=dict)
    _slots: dict[str, asyncio.Semaphore] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings) -> ProviderLimits:
        """A cap for every hosted backend whose settings have ``max_concurrency``."""
        sections = {name: getattr(settings.providers, name) for name in HOSTED}
        return cls({name: s.max_concurrency for name, s in sections.items() if hasattr(s, "max_concurrency")})

    def slots(self, backend: str) -> asyncio.Semaphore:
        # Made on first use: a semaphore binds to the running loop the first time it waits.
        if backend not in self._slots:
            self._slots[backend] = asyncio.Semaphore(self.caps[backend])
        return self._slots[backend]

    def record(self, backend: str) -> BackendUsage:
        return self.usage.setdefault(backend, BackendUsage())

    def snapshot(self) -> dict[str, dict[str, float | int]]:
        return {name: usage.as_dict() for name, usage in sorted(self.usage.items())}

    def wrap(self, model: ChatModel, backend: str) -> ChatModel:
        return model if backend not in self.caps else LimitedChat(model, backend, self)


class LimitedChat(ChatWrapper):
    """A chat model whose calls take a slot of their backend first."""

    def __init__(self, inner: ChatModel, backend: str, limits: ProviderLimits) -> None:
        super().__init__(inner)
        self._backend = backend
        self._limits = limits

    async def answer(self, call: ChatCall) -> ChatResult:
        usage = self._limits.record(self._backend)
        asked = time.perf_counter()
        async with self._limits.slots(self._backend):
            usage.queued_s += time.perf_counter() - asked
            usage.requests += 1
            try:
                return await call.send(self.inner)
            except RateLimitedError:
                usage.throttled += 1
                raise
