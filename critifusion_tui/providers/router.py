"""From a model reference to a chat model, with one client per backend.

The engine asks the router for ``"together:Qwen/..."`` or ``"ollama:llava"`` and gets a
:class:`ChatModel`. All Together models share one ``AsyncTogether`` and all Ollama models one
``ollama.AsyncClient``: one connection pool per backend, so five concurrent candidates reuse
connections instead of each opening its own. Clients are made on first use, so a run that
only uses Ollama never needs a Together key, and ``aclose`` closes whatever was opened.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from critifusion_tui.providers.base import ChatModel, ModelRef
from critifusion_tui.providers.limits import ProviderLimits
from critifusion_tui.providers.rules import RulesModel

if TYPE_CHECKING:
    from critifusion_tui.config import Settings
    from critifusion_tui.providers.ollama import OllamaProvider
    from critifusion_tui.providers.openai import OpenAIProvider
    from critifusion_tui.providers.together import TogetherProvider


class ProviderRouter:
    """Hands out chat models by reference; owns the backends' clients."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._together: TogetherProvider | None = None
        self._ollama: OllamaProvider | None = None
        self._openai: OpenAIProvider | None = None
        self._rules = RulesModel()
        self._models: dict[ModelRef, ChatModel] = {}
        # Per-process caps on concurrent requests per backend, and what each backend saw.
        self.limits = ProviderLimits.from_settings(settings)

    @property
    def together(self) -> TogetherProvider:
        """The Together backend (its client is still made only on the first call)."""
        if self._together is None:
            from critifusion_tui.providers.together import TogetherProvider

            self._together = TogetherProvider(self.settings.providers.together)
        return self._together

    @property
    def ollama(self) -> OllamaProvider:
        if self._ollama is None:
            from critifusion_tui.providers.ollama import OllamaProvider

            self._ollama = OllamaProvider(self.settings.providers.ollama)
        return self._ollama

    @property
    def openai(self) -> OpenAIProvider:
        if self._openai is None:
            from critifusion_tui.providers.openai import OpenAIProvider

            self._openai = OpenAIProvider(self.settings.providers.openai)
        return self._openai

    @property
    def rules(self) -> RulesModel:
        return self._rules

    def model(self, ref: ModelRef | str) -> ChatModel:
        """The chat model for ``ref`` (a :class:`ModelRef` or its text form).

        Raises ``ModelRefError`` (a ``ValueError``) for text that names no known provider.
        """
        if isinstance(ref, str):
            ref = ModelRef.parse(ref)
        cached = self._models.get(ref)
        if cached is not None:
            return cached
        if ref.provider == "together":
            model: ChatModel = self._bounded(self.together.model(ref.name), "together")
        elif ref.provider == "ollama":
            model = self._bounded(self.ollama.model(ref.name), "ollama")
        elif ref.provider == "openai":
            model = self._bounded(self.openai.model(ref.name), "openai")
        elif ref.provider == "rules":
            model = self._rules
        else:  # ModelRef.parse already refuses this; a hand-made ModelRef might not
            raise ValueError(f"unknown provider {ref.provider!r} in {ref}")
        model = self.limits.wrap(model, ref.provider)
        self._models[ref] = model
        return model

    __getitem__ = model

    def _bounded(self, model: ChatModel, provider: str) -> ChatModel:
        """A hosted model under one deadline for the whole answer and a size cap (bounded.py)."""
        from critifusion_tui.providers.bounded import BoundedChat

        timeout = getattr(self.settings.providers, provider).timeout_s
        return BoundedChat(model, timeout, f"providers.{provider}.timeout_s")

    async def aclose(self) -> None:
        """Close the clients that were opened; the router can open fresh ones afterwards."""
        try:
            if self._together is not None:
                await self._together.aclose()
        finally:  # one failing close must not leave the others open
            try:
                if self._ollama is not None:
                    await self._ollama.aclose()
            finally:
                if self._openai is not None:
                    await self._openai.aclose()

    async def __aenter__(self) -> ProviderRouter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
