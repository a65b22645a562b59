"""From a model reference to a chat model, with one client per backend.

The engine asks the router for ``"together:Qwen/..."`` or ``"ollama:llava"`` and gets a
:class:`ChatModel`. All Together models share one ``AsyncTogether`` and all Ollama models one
``ollama.AsyncClient``: one connection pool per backend, so five concurrent candidates reuse
connections instead of each opening its own. Clients are made on first use, so a run that
only uses Ollama never needs a Together key, and ``aclose`` closes whatever was opened.

Which provider name gives which models is a registry: every hosted backend of
:data:`~critifusion_tui.providers.registry.HOSTED` (bounded by ``bounded.py``), and whatever
else is registered on the router (the engine registers its offline ``rules`` model when its
``Session`` makes the router); a new backend is one entry there, not a branch here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from critifusion_tui.providers.base import ChatModel, ModelRef
from critifusion_tui.providers.limits import ProviderLimits
from critifusion_tui.providers.registry import HOSTED, provider_class

if TYPE_CHECKING:
    from critifusion_tui.config import Settings
    from critifusion_tui.providers.chat import HostedProvider

# What a registered provider name resolves through: its reference to the model to hand out.
ModelFactory = Callable[[ModelRef], ChatModel]


class ProviderRouter:
    """Hands out chat models by reference; owns the backends' clients."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._backends: dict[str, HostedProvider[Any]] = {}
        self._factories: dict[str, ModelFactory] = {name: self._hosted for name in HOSTED}
        self._models: dict[ModelRef, ChatModel] = {}
        # Per-process caps on concurrent requests per backend, and what each backend saw.
        self.limits = ProviderLimits.from_settings(settings)

    def register(self, provider: str, factory: ModelFactory) -> None:
        """Hand out ``provider``'s models from ``factory`` (how the engine adds ``rules``)."""
        self._factories[provider] = factory
        self._models = {ref: model for ref, model in self._models.items() if ref.provider != provider}

    def backend(self, name: str) -> HostedProvider[Any]:
        """The hosted backend ``name`` (its client is still made only on the first call)."""
        if name not in self._backends:
            self._backends[name] = provider_class(name)(getattr(self.settings.providers, name))
        return self._backends[name]

    def made(self, name: str) -> bool:
        """Whether the backend ``name`` was made (a run that never asks it makes no client)."""
        return name in self._backends

    # The hosted backends by name, for callers that hold one of them.
    together = property(lambda self: self.backend("together"))
    ollama = property(lambda self: self.backend("ollama"))
    openai = property(lambda self: self.backend("openai"))

    def model(self, ref: ModelRef | str) -> ChatModel:
        """The chat model for ``ref`` (a :class:`ModelRef` or its text form).

        Raises ``ModelRefError`` (a ``ValueError``) for text that names no known provider,
        and a ``ValueError`` for a provider nothing is registered for.
        """
        if isinstance(ref, str):
            ref = ModelRef.parse(ref)
        cached = self._models.get(ref)
        if cached is not None:
            return cached
        factory = self._factories.get(ref.provider)
        if factory is None:  # ModelRef.parse already refuses an unknown name; a hand-made ModelRef might not
            raise ValueError(f"nothing is registered to answer {ref} (provider {ref.provider!r})")
        model = self.limits.wrap(factory(ref), ref.provider)
        self._models[ref] = model
        return model

    __getitem__ = model

    def _hosted(self, ref: ModelRef) -> ChatModel:
        """A hosted model under one deadline for the whole answer and a size cap (bounded.py)."""
        from critifusion_tui.providers.bounded import BoundedChat

        backend = self.backend(ref.provider)
        return BoundedChat(backend.model(ref.name), backend.settings.timeout_s, f"providers.{ref.provider}.timeout_s")

    async def aclose(self) -> None:
        """Close the clients that were opened; the router can open fresh ones afterwards.

        Every backend is closed even when one of them fails to (the failure is raised after).
        """
        async with contextlib.AsyncExitStack() as closing:
            for backend in self._backends.values():
                closing.push_async_callback(backend.aclose)

    async def __aenter__(self) -> ProviderRouter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
